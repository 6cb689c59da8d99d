"""Test-set features of every spectrum subset: each stream run once vs once per subset.

At the end of a run msreid evaluates every non-empty subset of the spectra
(``run.missing_modality``, on by default): 7 subsets for RGB-N-T. Embedding
each subset on its own runs 12 stream forwards per batch (3 singles, 3 pairs x 2,
1 triple x 3); ``MultiStreamNet.embed_subsets`` runs each stream once and
combines its outputs per subset (3 forwards). This script times both on the
same batches in one process, alternating, and checks the features are equal.

    OMP_NUM_THREADS=1 .venv/bin/python perf/subset_features.py
    OMP_NUM_THREADS=1 .venv/bin/python perf/subset_features.py --backbone resnet18 --size 128 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from msreid.evaluation import spectrum_subsets
from msreid.models import build_model

SPECTRA = ("rgb", "nir", "tir")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="test_resnet")
    ap.add_argument("--size", type=int, nargs=2, default=(64, 128), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4, help="batches per timed pass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--embedding", default="sum")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(args.backbone, SPECTRA, num_classes=50, embedding=args.embedding,
                        head="official" if args.embedding == "cam_official" else "paper").eval()
    subsets = spectrum_subsets(SPECTRA)
    data = [{s: torch.randn(args.batch, 3, *args.size) for s in SPECTRA}
            for _ in range(args.batches)]

    def one_by_one():
        return [{u: model.embed(x, spectra=u) for u in subsets} for x in data]

    def together():
        return [model.embed_subsets(x, subsets) for x in data]

    times = {"one subset at a time": [], "embed_subsets": []}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, fn in (("one subset at a time", one_by_one), ("embed_subsets", together)):
                start = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - start)
                if name == "one subset at a time":
                    ref = out
                else:
                    assert all(torch.equal(a[u], b[u]) for a, b in zip(ref, out) for u in subsets)
    n = args.batch * args.batches
    print(f"{args.backbone} {args.size[0]}x{args.size[1]}, {n} tuples x 3 spectra, "
          f"7 subsets, torch threads {torch.get_num_threads()}, median of {args.repeats}:")
    base = statistics.median(times["one subset at a time"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:22s} {med:7.2f} s  {n / med:7.1f} tuples/s  ratio {base / med:4.2f}x")
    print("  features: bit-identical")


if __name__ == "__main__":
    main()
