"""What makes W workers compute the 1-worker step of the global batch (torch.distributed).

Each of W workers holds an equal contiguous share of the global batch
(``msreid.train.sampling.worker_share``). Three things make its step the
1-worker step:

1. BatchNorm statistics over the global batch (``model.sync_bn``;
   ``msreid.models.sync_batchnorm``).
2. The losses see the global batch: ``gather_outputs`` all-gathers the model's
   outputs and the labels in rank order, so every worker evaluates the loss L
   of the whole global batch (batch-hard triplet mining among all B tuples,
   sums over the batch, means over the batch alike). The gather's backward
   sends each worker the gradient of every worker's copy of L: worker w gets
   ``W * dL/d(out_w)``.
3. Gradient scale: DDP all-reduces parameter gradients and divides by W, so
   the applied gradient is ``(1/W) * sum_w W * dL/d(out_w) * d(out_w)/dtheta
   = dL/dtheta``, the 1-worker gradient. (Synced BatchNorm's backward sums its
   gradient terms over workers in the same way.)

Without a process group of more than one process everything here is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from msreid.models import StreamOutput


def world_size() -> int:
    """Processes in the default group (1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def sync_bn_wanted(setting: str, world: int) -> bool:
    """``model.sync_bn``: "auto" = on when more than one worker trains, else true/false."""
    if setting == "auto":
        return world > 1
    return setting == "true"


class _GatherShares(torch.autograd.Function):
    """All-gather of equal shares; backward: the summed gradient of this worker's rows.

    Forward ``[b, ...] -> [W * b, ...]`` in rank order. Every worker's loss
    depends on every share, so the gradient of worker w's rows is the sum over
    workers of their gradient w.r.t. those rows: one all-reduce of the
    ``[W * b, ...]`` gradient, then this worker's slice.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.share = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.rank * ctx.share:(ctx.rank + 1) * ctx.share]


def gather_tensor(x: Tensor) -> Tensor:
    """Every worker's ``x [b, ...]`` concatenated in rank order ``[W * b, ...]``, differentiable."""
    if world_size() == 1:
        return x
    return _GatherShares.apply(x)


def gather_labels(labels: Tensor) -> Tensor:
    """Labels ``[b]`` of every worker in rank order ``[W * b]`` (no gradient)."""
    if world_size() == 1:
        return labels
    parts = [torch.empty_like(labels) for _ in range(world_size())]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts)


def _gather_field(value):
    """None, a tensor ``[b, ...]`` or a list of them (one per stream), gathered alike."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        return gather_tensor(value)
    return [gather_tensor(t) for t in value]


def gather_outputs(out: StreamOutput, labels: Tensor) -> tuple[StreamOutput, Tensor]:
    """The model's outputs and the labels of the whole global batch (see the module docstring)."""
    if world_size() == 1:
        return out, labels
    fields = {name: _gather_field(value) for name, value in out._asdict().items()}
    return StreamOutput(**fields), gather_labels(labels)
