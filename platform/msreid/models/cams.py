"""Class-aware stream weights from class activation maps (HAMNet eqs. 7-10).

The model uses them to weight its streams (``cam_weighted`` embedding); the
class-aware ID loss (msreid.losses) uses them to fuse the maps (eq. 11).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def class_aware_weights(cams: Sequence[Tensor]) -> Tensor:
    """The class-aware weights alpha^j_c of eqs. 7-10.

    cams: m tensors M^j [B, C, h, w]. Returns alpha [m, B, C], summing to 1 over m.
    """
    a = torch.sigmoid(torch.stack([c.float() for c in cams]))  # eq. 7, A^j [m,B,C,h,w]
    b = a.amax(dim=0)  # eq. 8: B_c, elementwise max (ties: gradient split evenly)
    eta = (a * b).sum(dim=(3, 4))  # eq. 9: eta^j_c [m, B, C]
    return eta / eta.sum(dim=0, keepdim=True)  # eq. 10
