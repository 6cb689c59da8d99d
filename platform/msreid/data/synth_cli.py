"""Write a synthetic multi-spectral vehicle re-ID dataset in the released layout.

The output looks like the public RGBNT100 / RGBN300 releases (folders
rgbir/bounding_box_train, query, bounding_box_test; one JPEG per tuple with the
spectra side by side RGB | NIR | TIR) plus rgbir/challenges.csv with each
tuple's challenge tag, so `msreid ingest --layout LAYOUT --root OUT` reads it
like real data. The generator's model: docs/SYNTHETIC.md.
"""

from __future__ import annotations

import argparse
import time

from msreid.cli_options import add_dataclass_arguments, options_from_args
from msreid.data.ingest import CHALLENGES_FILE
from msreid.data.synth import LAYOUT_SPECTRA, SPLIT_FOLDERS, VARIANTS, SynthSpec, generate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", required=True, choices=sorted(LAYOUT_SPECTRA),
                        help="rgbnt100: RGB | NIR | TIR per JPEG; rgbn300: RGB | NIR")
    parser.add_argument("--out", required=True,
                        help="output directory (the dataset lands in OUT/rgbir/); "
                             "written to a temporary sibling and renamed into place")
    add_dataclass_arguments(parser, SynthSpec, show_defaults=True,
                            overrides={"variant": {"choices": VARIANTS}})
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it exists and is not empty")


def main(args: argparse.Namespace) -> int:
    spec = options_from_args(SynthSpec, args)
    start = time.perf_counter()
    root = generate(args.layout, args.out, spec, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    counts = {folder: sum(1 for _ in (root / folder).glob("*.jpg"))
              for folder in SPLIT_FOLDERS.values()}
    n_spectra = len(LAYOUT_SPECTRA[args.layout])
    print(f"wrote {args.layout} dataset ({spec.variant} variant) to {root}")
    for folder, n in counts.items():
        print(f"  {folder + '/':<20} {n:6d} JPEGs")
    print(f"  image size           {n_spectra * spec.width}x{spec.height} "
          f"({n_spectra} spectra of {spec.width}x{spec.height})")
    print(f"  challenge tags       {root / CHALLENGES_FILE}")
    rendered = counts[SPLIT_FOLDERS["train"]] + counts[SPLIT_FOLDERS["gallery"]]
    print(f"  {rendered} tuples rendered in {seconds:.1f} s "
          f"({60 * rendered / max(seconds, 1e-9):.0f} per minute)")
    # Ingest expects the released 256x128 pieces unless told the piece size.
    piece = "" if (spec.width, spec.height) == (256, 128) else f" --piece-size {spec.width}x{spec.height}"
    print(f"ingest with: msreid ingest --layout {args.layout} --root {root} --out MANIFEST_DIR{piece}")
    return 0
