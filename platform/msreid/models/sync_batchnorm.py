"""BatchNorm whose batch statistics span every worker's share of the global batch.

torch's ``nn.SyncBatchNorm`` only runs on GPUs (its kernels ``batch_norm_stats``
and friends have no CPU implementation in torch 2.14), so on CPU / gloo we use
our own: ``CpuSyncBatchNorm``, an ``nn.BatchNorm`` whose training forward is one
autograd function with one all-reduce forward and one backward.

For x of shape ``[N_w, C, *]`` on worker w, with n = sum_w N_w * prod(*) values
per channel (Ioffe & Szegedy 2015, eqs. in Alg. 1 and its backward):

- forward: all-reduce per channel ``(sum x, sum x^2, count)``; then
  ``mu = sum x / n``, ``var = sum x^2 / n - mu^2`` (biased, used to normalise),
  ``y = (x - mu) / sqrt(var + eps) * weight + bias``; the running variance takes
  the unbiased ``var * n / (n - 1)`` with the usual momentum.
- backward: all-reduce per channel ``(sum dy, sum dy * (x - mu))``; then
  ``dx = weight / sigma * (dy - sum dy / n - (x - mu) / sigma^2 * sum dy (x - mu) / n)``,
  the gradient of the SUM of every worker's loss. ``dweight`` and ``dbias`` stay
  local (``sum dy * x_hat``, ``sum dy``): DDP's gradient all-reduce combines them.

The sums are accumulated in float64 so that ``E[x^2] - E[x]^2`` does not cancel.
Plain torch and ``torch.distributed``; outside an initialised process group of
more than one process, or in eval mode, the layer is exactly ``nn.BatchNorm``.
"""

from __future__ import annotations

import timm.layers
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def _world(group) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _channel_shape(x: Tensor) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.ndim - 2)


def _reduce_dims(x: Tensor) -> list[int]:
    return [0] + list(range(2, x.ndim))


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm over the global batch (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, factor, group):
        dims, c = _reduce_dims(x), x.shape[1]
        count = torch.full((1,), x.numel() // c, dtype=torch.float64, device=x.device)
        stats = torch.cat([x.sum(dims, dtype=torch.float64),
                           (x * x).sum(dims, dtype=torch.float64), count])
        dist.all_reduce(stats, group=group)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_(min=0.0)  # biased: normalises
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp(min=1.0)
                running_mean.mul_(1 - factor).add_(mean.to(running_mean.dtype), alpha=factor)
                running_var.mul_(1 - factor).add_(unbiased.to(running_var.dtype), alpha=factor)
        shape = _channel_shape(x)
        mean_x, invstd_x = mean.to(x.dtype).view(shape), invstd.to(x.dtype).view(shape)
        y = (x - mean_x) * invstd_x
        if weight is not None:
            y = y * weight.view(shape) + bias.view(shape)
        ctx.save_for_backward(x, weight, mean_x, invstd_x)
        ctx.group, ctx.n = group, n
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean_x, invstd_x = ctx.saved_tensors
        dims, c = _reduce_dims(x), x.shape[1]
        xmu = x - mean_x
        sum_dy = grad_out.sum(dims, dtype=torch.float64)
        sum_dy_xmu = (grad_out * xmu).sum(dims, dtype=torch.float64)
        grad_x = grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = (sum_dy_xmu * invstd_x.view(-1)).to(weight.dtype)  # local: DDP sums
        if weight is not None and ctx.needs_input_grad[2]:
            grad_bias = sum_dy.to(weight.dtype)
        if ctx.needs_input_grad[0]:
            both = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(both, group=ctx.group)
            shape = _channel_shape(x)
            mean_dy = (both[:c] / ctx.n).to(x.dtype).view(shape)
            mean_dy_xmu = (both[c:] / ctx.n).to(x.dtype).view(shape)
            scale = invstd_x if weight is None else invstd_x * weight.view(shape)
            grad_x = (grad_out - mean_dy - xmu * invstd_x * invstd_x * mean_dy_xmu) * scale
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


class CpuSyncBatchNorm(_BatchNorm):
    """``nn.BatchNorm{1,2,3}d`` with statistics over all workers of ``process_group``.

    Works with any backend (gloo on CPU included); inputs ``[N, C, *]``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def _factor(self) -> float:
        """The running-average factor of this step (as ``nn.BatchNorm``; counts the step)."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        return factor

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        factor = self._factor()
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        group = self.process_group  # None: the default group
        if not use_batch or _world(group) == 1:
            return F.batch_norm(x, self.running_mean if track else None,
                                self.running_var if track else None, self.weight, self.bias,
                                use_batch, factor, self.eps)
        return _SyncBatchNormFunction.apply(
            x, self.weight, self.bias, self.running_mean if track else None,
            self.running_var if track else None, self.eps, factor, group)


class CpuSyncBatchNormAct(CpuSyncBatchNorm):
    """timm's ``BatchNormAct2d`` (norm, then drop, then act) with synced statistics."""

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if hasattr(self, "drop"):
            x = self.drop(x)
        if hasattr(self, "act"):
            x = self.act(x)
        return x


SYNC_TYPES = (CpuSyncBatchNorm, nn.SyncBatchNorm)


def _to_cpu_sync(module: nn.Module, process_group) -> nn.Module:
    """Swap every BatchNorm of ``module`` for ``CpuSyncBatchNorm`` (recursively, in place)."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        is_act = isinstance(module, timm.layers.BatchNormAct2d)
        cls = CpuSyncBatchNormAct if is_act else CpuSyncBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine,
                  module.track_running_stats, process_group)
        if is_act:
            out.act, out.drop = module.act, module.drop
        if module.affine:  # the same Parameter objects: requires_grad and the optimiser agree
            out.weight, out.bias = module.weight, module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, _to_cpu_sync(child, process_group))
    return out


def convert_sync_batchnorm(module: nn.Module, device_type: str,
                           process_group=None) -> nn.Module:
    """Every BatchNorm of ``module`` synced across workers; returns the converted module.

    ``device_type == "cuda"``: torch's ``nn.SyncBatchNorm`` (through timm's
    converter, which also keeps timm's norm + activation layers whole); any
    other device: ``CpuSyncBatchNorm``. Weights, buffers (running statistics,
    batch count), momentum, eps and train/eval mode carry over unchanged.
    Call before wrapping the model in DDP and before building the optimiser.
    """
    if device_type == "cuda":
        return timm.layers.convert_sync_batchnorm(module, process_group)
    return _to_cpu_sync(module, process_group)


def batch_moments(bn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel (mean, biased variance) of ``x [N, C]`` as ``bn`` normalises it in training.

    For a synced layer in a process group of more than one process these are
    the global batch's (differentiable: the all-reduce's backward sums the
    gradient over workers); otherwise this worker's batch's.
    """
    group = getattr(bn, "process_group", None)
    if not isinstance(bn, SYNC_TYPES) or _world(group) == 1:
        return x.mean(0), x.var(0, unbiased=False)
    c = x.shape[1]
    count = torch.full((1,), float(x.shape[0]), dtype=torch.float64, device=x.device)
    stats = torch.cat([x.sum(0, dtype=torch.float64), (x * x).sum(0, dtype=torch.float64), count])
    stats = dist_fn.all_reduce(stats, group=group)
    mean = stats[:c] / stats[-1]
    var = (stats[c:2 * c] / stats[-1] - mean * mean).clamp(min=0.0)
    return mean.to(x.dtype), var.to(x.dtype)
