"""Distances between query and gallery features, computed as the public re-ID code does.

``euclidean`` is the *squared* Euclidean distance ``|q|^2 + |g|^2 - 2 q.g``
(torchreid's ``euclidean_squared_distance``: one ``addmm``), ``cosine`` is
``1 - cos(q, g)``. Features are L2-normalised first by default, as every public
multi-spectral re-ID code base does at test time. Everything is float32 on the
features' device; :func:`distance_chunk` is the one place a distance is
computed, so a full matrix and a chunked one hold the same formula.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from msreid.errors import UserError

METRICS = ("euclidean", "cosine")


def as_features(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """Array-like ``[N, D]`` -> float32 tensor on its device (no copy when already float32).

    Raises ``UserError`` for a wrong rank or non-finite values.
    """
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise UserError(f"{name}: expected features of shape [N, D], got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise UserError(f"{name}: expected floating-point features, got dtype {t.dtype}")
    t = t.to(torch.float32)
    # A finite sum proves every entry finite (one cheap pass); check entries only if not.
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise UserError(f"{name}: features contain NaN or inf; check the model output")
    return t


def prepare_features(
    x: np.ndarray | torch.Tensor, name: str, metric: str = "euclidean", normalize: bool = True
) -> torch.Tensor:
    """Validated float32 ``[N, D]`` features, L2-normalised when ``normalize`` (always for cosine)."""
    if metric not in METRICS:
        raise UserError(f"metric={metric!r} is not known; use one of {', '.join(METRICS)}")
    t = as_features(x, name)
    if normalize or metric == "cosine":
        t = F.normalize(t, p=2, dim=1)
    return t


def squared_norms(g: torch.Tensor) -> torch.Tensor:
    """``[G, D]`` -> ``[G]`` squared L2 norms (precompute once per gallery)."""
    return torch.einsum("ij,ij->i", g, g)  # no [G, D] temporary, unlike g.pow(2).sum(1)


def distance_chunk(
    q: torch.Tensor, g: torch.Tensor, metric: str = "euclidean", g_sq: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distances ``[q, G]`` between prepared features ``q [q, D]`` and ``g [G, D]``.

    ``g_sq`` (``[G]``) may be passed to avoid recomputing the gallery norms per chunk;
    ``out`` (contiguous float32 ``[q, G]``) receives the distances (same values as without).
    """
    if metric == "cosine":
        if out is None:
            return 1.0 - q @ g.t()
        return torch.mm(q, g.t(), out=out).neg_().add_(1.0)  # 1 - x, rounded once either way
    if g_sq is None:
        g_sq = squared_norms(g)
    if out is None:
        d = squared_norms(q)[:, None] + g_sq[None, :]
    else:
        d = torch.add(squared_norms(q)[:, None], g_sq[None, :], out=out)
    return d.addmm_(q, g.t(), beta=1.0, alpha=-2.0)


def iter_distance_chunks(
    q: torch.Tensor, g: torch.Tensor, metric: str, chunk_size: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, d)`` with ``d = distances [chunk, G]`` of query rows ``start:start+chunk``.

    Every ``d`` is a view of one buffer, overwritten by the next chunk: use it before
    asking for the next. (A fresh 100 MB tensor per chunk costs its page faults again.)
    """
    g_sq = squared_norms(g) if metric == "euclidean" else None
    buf = torch.empty(min(chunk_size, q.shape[0]) * g.shape[0], dtype=q.dtype, device=q.device)
    for start in range(0, q.shape[0], chunk_size):
        qc = q[start : start + chunk_size]
        out = buf[: qc.shape[0] * g.shape[0]].view(qc.shape[0], g.shape[0])
        yield start, distance_chunk(qc, g, metric, g_sq, out)


def compute_distance_matrix(
    query: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    metric: str = "euclidean",
    normalize: bool = True,
) -> torch.Tensor:
    """Full float32 distance matrix ``[Q, G]`` (for small sets, references and re-ranking tests)."""
    q = prepare_features(query, "query", metric, normalize)
    g = prepare_features(gallery, "gallery", metric, normalize)
    return distance_chunk(q, g, metric)
