"""How much does alpha * L_hsc move the network next to L_id? Gradient-norm ratio, mean vs sum.

Trains the smoke configuration (timm ``test_resnet`` per stream, random init,
64 x 128, batch 16, Adam 1e-3, the paper's HAMNet objective with alpha 0.001
and the batch mean) on the synthetic RGBNT100-shaped smoke data, and at a few
steps measures, on the same batch, the norm over all parameters of the
gradient of alpha * L_hsc divided by that of L_id (= L_msid, eq. 4), for
both forms of L_hsc (paper eq. 5, the authors' cosine form) and both batch
reductions (mean, sum). Plain torch, one process, no augmentation. The norms
are ``msreid.loss_gradients.gradient_norm``, as in the probe that
``experiments/tune_alpha.py`` runs before searching (there the denominator is
every other term of the objective, not L_id alone).

  python experiments/hsc_gradient_ratio.py [--steps 200] [--every 50] [--seed 0]

Without --root it generates the smoke benchmark's data (SynthSpec defaults)
into a temporary folder. Output is a Markdown table (docs/MODELS.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from msreid.data.synth import SynthSpec, generate
from msreid.loss_gradients import gradient_norm
from msreid.losses import (
    PAPER_ALPHA,
    compute_losses,
    heterogeneous_score_coherence,
    multi_stream_id_loss,
    official_score_coherence,
)
from msreid.models import build_model

FORMS = {"paper": heterogeneous_score_coherence, "official": official_score_coherence}
SPECTRA = ("rgb", "nir", "tir")
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def load_train(root: Path) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """{spectrum: [N, 3, H, W] normalised}, 0-based labels [N] of bounding_box_train."""
    from PIL import Image

    paths = sorted((root / "bounding_box_train").glob("*.jpg"))
    imgs = np.stack([np.asarray(Image.open(p)) for p in paths])  # [N, H, 3W, 3]
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    w = x.shape[-1] // len(SPECTRA)
    pieces = {s: ((x[..., k * w:(k + 1) * w] - MEAN) / STD).contiguous()
              for k, s in enumerate(SPECTRA)}
    ids = np.array([int(p.name[:4]) for p in paths])
    return pieces, np.searchsorted(np.unique(ids), ids)


def ratios(model, batch: dict[str, torch.Tensor], labels: torch.Tensor, alpha: float) -> dict:
    """alpha * |grad L_hsc| / |grad L_id| for each (form, reduction), same batch, same weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(batch)
    id_norm = gradient_norm(multi_stream_id_loss(out.scores, labels), params)
    return {(form, red): alpha * gradient_norm(fn(out.scores, red), params) / id_norm
            for form, fn in FORMS.items() for red in ("mean", "sum")}


def run(root: Path, steps: int, every: int, seed: int, batch_size: int = 16) -> list[tuple]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, labels = load_train(root)
    model = build_model("test_resnet", SPECTRA, int(labels.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows, order = [], rng.permutation(len(labels))
    for step in range(steps + 1):
        if len(order) < batch_size:
            order = rng.permutation(len(labels))
        idx, order = order[:batch_size], order[batch_size:]
        batch = {s: x[s][idx] for s in SPECTRA}
        y = torch.from_numpy(labels[idx])
        if step % every == 0 or step == steps:
            rows.append((step, ratios(model.train(), batch, y, PAPER_ALPHA)))
        if step == steps:
            break
        loss = compute_losses(model(batch, return_cams=True), y, hsc_alpha=PAPER_ALPHA,
                              caid=True)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="rgbir/ folder of an RGBNT100-layout dataset")
    parser.add_argument("--steps", type=int, default=200, help="training steps (smoke: 4 epochs)")
    parser.add_argument("--every", type=int, default=50, help="measure every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ids", type=int, default=SynthSpec.ids, help="synthetic ids per split")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or generate("rgbnt100", Path(tmp) / "synth",
                                     SynthSpec(ids=args.ids, seed=args.seed))
        rows = run(root, args.steps, args.every, args.seed)
    cols = [(f, r) for f in FORMS for r in ("mean", "sum")]
    print(f"alpha = {PAPER_ALPHA}: |grad(alpha L_hsc)| / |grad(L_id)|, batch 16")
    print("| step | " + " | ".join(f"{f} form, {r}" for f, r in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for step, ratio in rows:
        print(f"| {step} | " + " | ".join(f"{ratio[c]:.2e}" for c in cols) + " |")


if __name__ == "__main__":
    main()
