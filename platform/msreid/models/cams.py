"""Class-aware stream weights from class activation maps (HAMNet eqs. 7-10, and the authors' code).

The model uses them to weight its streams (``cam_weighted`` and ``cam_official``
embeddings); the class-aware ID losses (msreid.losses) use them to fuse the
maps (eq. 11) or, for the authors' variant, the sigmoid-map sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32, or as it is when float64: half-precision maps (autocast) are
    upcast, and a float64 model keeps float64 (the float64 differential test)."""
    return t if t.dtype == torch.float64 else t.float()


def class_aware_weights(cams: Sequence[Tensor]) -> Tensor:
    """The class-aware weights alpha^j_c of eqs. 7-10.

    cams: m tensors M^j [B, C, h, w]. Returns alpha [m, B, C], summing to 1 over m.
    """
    a = torch.sigmoid(torch.stack([at_least_float32(c) for c in cams]))  # eq. 7, A^j [m,B,C,h,w]
    b = a.amax(dim=0)  # eq. 8: B_c, elementwise max (ties: gradient split evenly)
    eta = (a * b).sum(dim=(3, 4))  # eq. 9: eta^j_c [m, B, C]
    return eta / eta.sum(dim=0, keepdim=True)  # eq. 10


def official_fusion_weights(cams: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The authors' weights of the fused score: (w [m, B, C], g [B, C]).

    cams: m tensors [B, C, h, w]. With A^j = sigmoid(M^j), a^j_c = sum_hw A^j_c
    and the elementwise max map B_c (eq. 8): w^j_c = a^j_c / sum_k a^k_c (eq. 10
    WITHOUT eq. 9's product with B) and g_c = sum_hw B_c / sum_c' sum_hw B_c'.
    """
    a = torch.sigmoid(torch.stack([at_least_float32(c) for c in cams]))  # eq. 7, [m, B, C, h, w]
    sums = a.sum(dim=(3, 4))  # a^j_c [m, B, C]
    peak = a.amax(dim=0).sum(dim=(2, 3))  # sum_hw B_c [B, C]
    return sums / sums.sum(dim=0, keepdim=True), peak / peak.sum(dim=1, keepdim=True)


def official_stream_weights(cams: Sequence[Tensor]) -> Tensor:
    """The authors' test-time stream weights v [B, m]: v^j = sum_c g_c w^j_c (sum to 1)."""
    w, g = official_fusion_weights(cams)
    return torch.einsum("mbc,bc->bm", w, g)
