"""Render docs/img/synthetic_examples.png: example synthetic tuples (RGB | NIR | TIR).

Top: two identities under each challenge tag (same id, camera and tuple index
per column, so only the challenge differs). Bottom: pairs of identities that
collide on one spectrum: the same shape and paint look alike in RGB but differ
in NIR markings and TIR heat; the same shape and heat pattern look alike in TIR.

  python experiments/render_synthetic_examples.py [--out docs/img/synthetic_examples.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from msreid.data.synth import (  # noqa: E402
    CHALLENGES,
    MARKINGS,
    PAINTS,
    SHAPES,
    Identity,
    TuplePlan,
    render_tuple,
)

SPECTRA = ("rgb", "nir", "tir")
HEIGHT, WIDTH = 64, 128  # the laptop benchmark's piece size


def tuple_image(identity: Identity, camera: int, challenge: str, index: int = 0) -> np.ndarray:
    """One tuple as the released JPEG would hold it: ``[H, 3W, 3]`` uint8."""
    plan = TuplePlan(identity.pid, camera, index, "train", challenge)
    pieces = render_tuple(identity, plan, SPECTRA, HEIGHT, WIDTH, seed=0)
    return np.concatenate([pieces[s] for s in SPECTRA], axis=1)


def describe(identity: Identity) -> str:
    return (f"{SHAPES[identity.shape].name}, {list(PAINTS)[identity.paint]}, "
            f"{MARKINGS[identity.marking]}, heat {identity.heat}")


def show(ax, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/synthetic_examples.png"))
    args = parser.parse_args()
    a = Identity(1, shape=0, paint=2, marking=4, heat=0)
    b = Identity(2, shape=0, paint=2, marking=2, heat=1)  # same shape + paint as a
    c = Identity(3, shape=2, paint=3, marking=3, heat=2)
    d = Identity(4, shape=2, paint=0, marking=5, heat=2)  # same shape + heat as c
    fig = plt.figure(figsize=(12, 11.5))
    top, bottom = fig.subfigures(2, 1, height_ratios=[7, 2.6])
    axes = top.subplots(len(CHALLENGES), 2)
    for row, challenge in enumerate(CHALLENGES):
        for col, (ident, cam) in enumerate(((a, 0), (c, 3))):
            title = f"id {ident.pid} ({describe(ident)}), camera {cam + 1}" if row == 0 else None
            show(axes[row, col], tuple_image(ident, cam, challenge), title)
        axes[row, 0].set_ylabel(challenge, rotation=0, ha="right", va="center", fontsize=9)
    top.suptitle("Each challenge: RGB | NIR | TIR (the TIR heat pattern never changes)",
                 fontsize=10)
    axes = bottom.subplots(2, 2)
    for col, (p, q, what) in enumerate(((a, b, "shape + paint: alike in RGB"),
                                        (c, d, "shape + heat: alike in TIR"))):
        show(axes[0, col], tuple_image(p, 2, "normal"), f"id {p.pid}: {describe(p)}")
        show(axes[1, col], tuple_image(q, 2, "normal"), f"id {q.pid}: {describe(q)}")
        axes[0, col].set_ylabel(what.split(":")[0], fontsize=8)
    bottom.suptitle("Ids that collide on one spectrum (shared attributes); "
                    "the other spectra tell them apart", fontsize=10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)  # ~ native size of a 384 x 64 tuple per column
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
