"""How far can alpha * L_hsc move a network next to the other loss terms? Gradient-norm ratios.

The weight alpha of L_hsc (eq. 6) only matters if alpha * |grad L_hsc| is not
negligible next to the gradient of everything else in the objective. Both
gradients are taken over all trainable parameters, on the same batch and the
same weights. The gradient is linear in alpha, so one unweighted ratio

    r = |grad L_hsc| / |grad (L - alpha L_hsc)|

gives the weighted term's share at every alpha: alpha * r. Plain torch, no
process group, no Ray (``experiments/tune_alpha.py`` calls it in its driver,
``experiments/hsc_gradient_ratio.py`` for docs/MODELS.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from msreid.losses import compute_losses, needs_cams


def gradient_norm(loss: Tensor, params: Sequence[Tensor]) -> float:
    """L2 norm over all ``params`` of d loss / d params (unused parameters count 0).

    Keeps the graph, so several terms of one forward pass can be measured.
    """
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))


def hsc_and_rest(model: nn.Module, images: Mapping[str, Tensor], labels: Tensor,
                 loss_kwargs: Mapping) -> tuple[Tensor, Tensor]:
    """(unweighted L_hsc, the sum of every other term) of ``compute_losses(**loss_kwargs)``.

    images: {spectrum: [B, 3, H, W]}; labels: [B]. loss_kwargs must contain
    ``hsc_alpha`` (an objective with L_hsc).
    """
    if loss_kwargs.get("hsc_alpha") is None:
        raise ValueError("the objective has no L_hsc term (hsc_alpha is None)")
    out = model(dict(images), return_cams=needs_cams(loss_kwargs))
    terms = compute_losses(out, labels, **{**loss_kwargs, "hsc_alpha": 1.0})
    rest = sum(v for k, v in terms.items() if k not in ("loss", "hsc"))
    return terms["hsc"], rest


def hsc_gradient_ratio(model: nn.Module, images: Mapping[str, Tensor], labels: Tensor,
                       loss_kwargs: Mapping) -> float:
    """r = |grad L_hsc| / |grad (other terms)| on one batch; alpha * r is the weighted share.

    inf when the other terms have no gradient and L_hsc has; 0 when neither has.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    hsc, rest = hsc_and_rest(model, images, labels, loss_kwargs)
    top, bottom = gradient_norm(hsc, params), gradient_norm(rest, params)
    if bottom == 0.0:
        return math.inf if top > 0.0 else 0.0
    return top / bottom


@dataclass(frozen=True)
class RatioPoint:
    """The ratio r of every probe batch after ``step`` optimiser steps."""

    step: int
    ratios: tuple[float, ...]


Batch = tuple[Mapping[str, Tensor], Tensor]


def probe_hsc_ratios(model: nn.Module, batches: Sequence[Batch], loss_kwargs: Mapping, *,
                     steps: int, every: int, lr: float,
                     train_batches: Sequence[Batch] | None = None) -> list[RatioPoint]:
    """r on every batch of ``batches`` at steps 0, every, 2 every, ..., steps of a short training.

    The training (Adam at ``lr``, ``train_batches`` in turn, default ``batches``;
    no augmentation) uses the other terms only, i.e. alpha = 0: the weights
    follow the path of a run where L_hsc does not act, which is where the
    question "would alpha * L_hsc act?" is asked. The model is left in train
    mode (BatchNorm on batch statistics, as in training).
    """
    if not batches or steps < 0 or every < 1:
        raise ValueError(f"need >= 1 batch, steps >= 0 and every >= 1 (got {len(batches)}, "
                         f"{steps}, {every})")
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    points = []
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            points.append(RatioPoint(step, tuple(hsc_gradient_ratio(model, x, y, loss_kwargs)
                                                 for x, y in batches)))
        if step == steps:
            break
        x, y = (train_batches or batches)[step % len(train_batches or batches)]
        _, rest = hsc_and_rest(model, x, y, loss_kwargs)
        opt.zero_grad()
        rest.backward()
        opt.step()
    return points
