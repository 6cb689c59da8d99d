"""Before the alpha search: can alpha move the model anywhere in [low, high]?

The driver of ``experiments/tune_alpha.py`` takes the first global batches of
the real training data (epoch 0 of the run's own plan, its validation split
removed, no augmentation), builds the network as a trial would, and measures
r = |grad L_hsc| / |grad (other terms)| (``msreid.loss_gradients``) on the
first few of them at initialisation and along a short training without L_hsc
over the following batches (each seen once, as in the run's first epoch). The weighted term's
share of the gradient is alpha * r, so the range's two ends bound it. When even
``high * max r`` is below the threshold, the term is inert over the whole range
and the search would only rank seed noise: the tuner stops with a message naming
what would make it matter. The same pass counts the validation queries, whose
inverse is the validation split's resolution (one query's worth of mAP).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from msreid.config import TrainConfig, effective_val_ids, loss_kwargs
from msreid.data.decode import decode_row
from msreid.data.schema import read_manifest
from msreid.data.transforms import normalize, stack_tuples
from msreid.errors import UserError
from msreid.loss_gradients import RatioPoint, probe_hsc_ratios
from msreid.train.checkpoint import model_from_config
from msreid.train.fit import resolve_spectra_and_size
from msreid.train.pipeline import DECODE_COLUMNS
from msreid.train.sampling import epoch_plan, split_rows


@dataclass(frozen=True)
class ProbeResult:
    """What the probe measured, and the range it was asked about."""

    points: tuple[RatioPoint, ...]
    low: float
    high: float
    threshold: float  # alpha * r below this everywhere = inert
    num_val_queries: int
    seconds: float

    @property
    def peak(self) -> float:
        """The largest r measured (any step, any batch)."""
        return max(r for p in self.points for r in p.ratios)

    @property
    def inert(self) -> bool:
        """alpha * r < threshold at every measured point and every alpha of [low, high]."""
        return self.high * self.peak < self.threshold

    def alpha_needed(self) -> float:
        """The smallest alpha whose share reaches the threshold somewhere (inf if r is 0)."""
        return self.threshold / self.peak if self.peak > 0 else math.inf


def probe_batches(cfg: TrainConfig, num_batches: int):
    """``([(images {spectrum: [B, 3, H, W]}, labels [B])], spectra, size, num_classes, n_val_q)``.

    The first ``num_batches`` global batches of epoch 0's plan, exactly as the
    run would draw them from (seed, epoch), decoded without augmentation.
    """
    spectra, size = resolve_spectra_and_size(cfg)
    d = cfg.data
    meta = read_manifest(d.manifest, columns=["split", "pid", "camera"])
    rows = split_rows(np.asarray(meta.column("split").to_pylist(), dtype=object).astype(str),
                      meta.column("pid").to_numpy().astype(np.int64),
                      meta.column("camera").to_numpy().astype(np.int64),
                      val_ids=effective_val_ids(cfg), per_camera=d.val_query_per_camera,
                      seed=cfg.run.seed)
    plan = epoch_plan(rows.train_labels, mode=d.batch_mode, batch_size=d.batch_size, p=d.P,
                      k=d.K, seed=cfg.run.seed, epoch=0)[:num_batches]
    if plan.shape[0] == 0:
        raise UserError(f"{d.manifest}: {rows.train.size} training tuples make no full batch of "
                        f"data.batch_size={d.batch_size} ({d.batch_mode}): lower it")
    table = read_manifest(d.manifest, columns=DECODE_COLUMNS,
                          rows=[int(r) for r in rows.train[plan.ravel()]])
    images = stack_tuples([decode_row(r, spectra) for r in table.to_pylist()], spectra, size)
    images = torch.from_numpy(images).view(*plan.shape, len(spectra), 3, *size)
    batches = []
    for b, positions in enumerate(plan):
        x = {s: normalize(images[b, :, j], d.mean, d.std) for j, s in enumerate(spectra)}
        batches.append((x, torch.from_numpy(rows.train_labels[positions])))
    return batches, spectra, size, rows.num_classes, int(rows.val_query.size)


def probe_alpha_range(cfg: TrainConfig, low: float, high: float, *, num_batches: int = 2,
                      steps: int = 40, every: int = 20, threshold: float = 1e-4) -> ProbeResult:
    """Measure r on ``cfg``'s data and model (module docstring); ``cfg.loss`` has L_hsc."""
    start = time.time()
    batches, spectra, size, num_classes, n_val_q = probe_batches(cfg, max(num_batches, steps))
    device = torch.device("cuda" if cfg.run.use_gpu and torch.cuda.is_available() else "cpu")
    batches = [({s: t.to(device) for s, t in x.items()}, y.to(device)) for x, y in batches]
    torch.manual_seed(cfg.run.seed)
    model = model_from_config(cfg.model, spectra, num_classes, size, pretrained=True).to(device)
    o = cfg.optim  # epoch 0 trains at the warm-up's first rate
    lr = o.warmup_lr if o.warmup_epochs > 0 else o.lr
    points = probe_hsc_ratios(model, batches[:num_batches], loss_kwargs(cfg.loss), steps=steps,
                              every=every, lr=lr, train_batches=batches[:max(1, steps)])
    return ProbeResult(points=tuple(points), low=low, high=high, threshold=threshold,
                       num_val_queries=n_val_q, seconds=time.time() - start)


def probe_markdown(result: ProbeResult, setting: str) -> str:
    """The measured shares at both ends of the range, one row per step (min-max over batches)."""
    lines = [f"|grad(alpha L_hsc)| / |grad(other terms)| ({setting}; min-max over "
             f"{len(result.points[0].ratios)} batches of the training data)", "",
             f"| step | alpha = {result.low:.3g} | alpha = {result.high:.3g} |", "|---|---|---|"]
    for p in result.points:
        cells = [f"{a * min(p.ratios):.2e} - {a * max(p.ratios):.2e}"
                 for a in (result.low, result.high)]
        lines.append(f"| {p.step} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def inert_message(result: ProbeResult, setting: str) -> str:
    """Why the search stops, and the settings that would make alpha matter."""
    need = result.alpha_needed()
    wider = (f"a range reaching alpha >= {need:.2g} (--high)" if math.isfinite(need)
             else "no range helps (the measured gradient of L_hsc is 0)")
    return (f"alpha cannot move the model over [{result.low:g}, {result.high:g}] with {setting}: "
            f"|grad(alpha L_hsc)| stays below {result.threshold:g} of the other terms' gradient "
            f"everywhere it was measured (at most {result.high * result.peak:.2e}, at alpha = "
            f"{result.high:g}). A search here only ranks seed noise. Make the term matter with "
            "the authors' form summed over the batch (--hsc-variant official --hsc-reduction sum, "
            "the default, or --ablation hamnet_official), with a sum over the batch "
            f"(--hsc-reduction sum: x batch size), or {wider}; or pass --allow-inert to search "
            "anyway")
