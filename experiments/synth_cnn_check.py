"""Does fusing spectra help a tiny CNN on the synthetic benchmark? (sanity check)

Trains one MultiStreamNet (timm ``test_resnet`` per stream, random init) per
spectrum set -- rgb, nir, tir, rgb+nir+tir -- for a few epochs with the
multi-stream ID loss plus batch-hard triplet, then evaluates query vs gallery
mAP (Market-1501 rule, summed stream features = the paper's MSN rule).
Plain torch loop on raw JPEG folders: no Ray, no manifest, a single process.

  python experiments/synth_cnn_check.py [--root DIR] [--epochs 8] [--seed 0]

Without --root it generates the default laptop benchmark into a temp folder.
Numbers are quoted in docs/SYNTHETIC.md.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from msreid.data.synth import SynthSpec, generate
from msreid.evaluation.rank import evaluate_features
from msreid.losses import multi_stream_id_loss, triplet_loss
from msreid.models.multistream import build_model

NAME = re.compile(r"^(\d{4})_c(\d{3})_")
ALL = ("rgb", "nir", "tir")


def load(folder: Path) -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]:
    """{spectrum: [N, 3, H, W] float in [0, 1]}, ids [N], cameras [N] (0-based)."""
    paths = sorted(folder.glob("*.jpg"))
    imgs = np.stack([np.asarray(Image.open(p)) for p in paths])  # [N, H, 3W, 3]
    w = imgs.shape[2] // 3
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    pieces = {s: x[..., k * w:(k + 1) * w].contiguous() for k, s in enumerate(ALL)}
    ids = np.array([int(NAME.match(p.name).group(1)) for p in paths])
    cams = np.array([int(NAME.match(p.name).group(2)) - 1 for p in paths])
    return pieces, ids, cams


def pk_batches(labels: np.ndarray, p: int, k: int, rng: np.random.Generator):
    """One epoch of P x K batches (P ids, K tuples each), as index arrays."""
    ids = rng.permutation(np.unique(labels))
    for start in range(0, len(ids) - p + 1, p):
        yield np.concatenate([rng.choice(np.flatnonzero(labels == i), k, replace=True)
                              for i in ids[start:start + p]])


def train_and_eval(spectra, train, query, gallery, epochs: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_tr, ids_tr, _ = train
    uniq = np.unique(ids_tr)
    labels = np.searchsorted(uniq, ids_tr)
    model = build_model("test_resnet", spectra, len(uniq), neck="bnneck")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * (len(uniq) // 8))
    for _ in range(epochs):
        model.train()
        for idx in pk_batches(labels, p=8, k=4, rng=rng):
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)[:, None, None, None]
            batch = {s: torch.where(flip, x_tr[s][idx].flip(-1), x_tr[s][idx]) for s in spectra}
            y = torch.from_numpy(labels[idx])
            out = model(batch)
            loss = multi_stream_id_loss(out.scores, y) + triplet_loss(sum(out.features), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        emb = [torch.cat([model.embed({s: x[s][i:i + 256] for s in spectra})
                          for i in range(0, len(ids), 256)]) for x, ids, _ in (query, gallery)]
    r = evaluate_features(emb[0], emb[1], query[1], gallery[1], query[2], gallery[2])
    return {"mAP": r.mAP, "R1": float(r.cmc[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="rgbir/ folder of an RGBNT100-layout dataset")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or generate("rgbnt100", Path(tmp) / "synth", SynthSpec(seed=args.seed))
        train, query, gallery = (load(root / f) for f in
                                 ("bounding_box_train", "query", "bounding_box_test"))
    print("| spectra | mAP | Rank-1 | seconds |\n|---|---|---|---|")
    for spectra in (("rgb",), ("nir",), ("tir",), ALL):
        start = time.perf_counter()
        r = train_and_eval(spectra, train, query, gallery, args.epochs, args.seed)
        print(f"| {'+'.join(spectra)} | {100 * r['mAP']:.1f} | {100 * r['R1']:.1f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
