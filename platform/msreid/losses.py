"""The paper's losses (eqs. 2-13) and the batch-hard triplet loss, as pure functions.

Notation: m streams (spectra), B samples, C classes, d feature channels,
h x w the last feature map. ``scores`` is a sequence of m tensors S^j [B, C];
``cams`` a sequence of m class activation maps M^j [B, C, h, w]. No function
here talks to a process group: under DDP each rank computes its own batch.
Equation numbers refer to the HAMNet paper (docs/MODELS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from msreid.models.cams import class_aware_weights

HSC_VARIANTS = ("paper", "official")
PAPER_ALPHA = 0.001
"""The paper's weight of L_hsc, given right below eq. 6."""

ABLATIONS: dict[str, dict] = {
    "one_stream": {},  # L_id on a single spectrum: build the model with one spectrum
    "msn": {},  # Table 5 "baseline (MSN)": L_msid (eq. 4)
    "msn+hsc": {"hsc_alpha": PAPER_ALPHA},  # "+ L_hsc": L_hc (eq. 6)
    "msn+caid": {"caid": True},  # "+ L_caid"
    "hamnet": {"hsc_alpha": PAPER_ALPHA, "caid": True},  # "+ L_hsc + L_caid" (eq. 13)
    # The official code's training objective: cosine L_hsc (0.001 inside the
    # term, so alpha = 1) plus the triplet loss of its bag-of-tricks baseline.
    "hamnet_official": {"hsc_alpha": 1.0, "hsc_variant": "official", "caid": True,
                        "triplet_margin": 0.3},
}
"""Named loss configurations: keyword arguments of :func:`compute_losses`."""


def id_loss(scores: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Identification loss of one stream, mean over the batch.

    scores: S^j [B, C]; labels: [B] int64 in [0, C). Returns a scalar.
    """
    return F.cross_entropy(scores.float(), labels, label_smoothing=label_smoothing)  # eq. 3


def multi_stream_id_loss(scores: Sequence[Tensor], labels: Tensor,
                         label_smoothing: float = 0.0) -> Tensor:
    """L_msid: sum of the streams' identification losses. scores: m x [B, C]."""
    return sum(id_loss(s, labels, label_smoothing) for s in scores)  # eq. 4


def heterogeneous_score_coherence(scores: Sequence[Tensor]) -> Tensor:
    """L_hsc (paper): per sample 1 - sum_i prod_j p^j_i, mean over the batch.

    scores: m >= 2 tensors S^j [B, C]. Computed in float32 (also under
    autocast) and in log space: sum_i prod_j p^j_i = exp(logsumexp_i sum_j log p^j_i).
    """
    if len(scores) < 2:
        raise ValueError(f"heterogeneous_score_coherence needs >= 2 streams, got {len(scores)}")
    with torch.autocast(device_type=scores[0].device.type, enabled=False):
        log_p = torch.stack([F.log_softmax(s.float(), dim=1) for s in scores])  # eq. 2, [m,B,C]
        agreement = torch.logsumexp(log_p.sum(dim=0), dim=1).exp()  # sum_i prod_j p^j_i, [B]
        return (1.0 - agreement).mean()  # eq. 5


def official_score_coherence(scores: Sequence[Tensor]) -> Tensor:
    """The official code's L_hsc: 0.001 * sum_b (1 - cos(S^1_b, S^2_b)).

    scores: m >= 2 tensors [B, C]; only the first two streams (RGB, NIR in the
    official code) take part. The official code writes ``0.001 * (32 - sum(...))``
    with the batch size 32 hard-coded; here the sum runs over the actual batch,
    so it equals the official value at batch 32 and stays >= 0 at any batch.
    The 0.001 is inside this term: use alpha = 1 with it to match the official code.
    """
    if len(scores) < 2:
        raise ValueError(f"official_score_coherence needs >= 2 streams, got {len(scores)}")
    with torch.autocast(device_type=scores[0].device.type, enabled=False):
        cos = F.cosine_similarity(scores[0].float(), scores[1].float(), dim=1, eps=1e-12)
        return 0.001 * (1.0 - cos).sum()


def fuse_class_activation_maps(cams: Sequence[Tensor]) -> Tensor:
    """M' = sum_j alpha^j_c M^j_c (eqs. 7-11). cams: m x [B, C, h, w] -> [B, C, h, w]."""
    alpha = class_aware_weights(cams)
    stacked = torch.stack([c.float() for c in cams])  # [m, B, C, h, w]
    return (alpha[..., None, None] * stacked).sum(dim=0)  # eq. 11


def class_aware_id_loss(cams: Sequence[Tensor], labels: Tensor,
                        label_smoothing: float = 0.0) -> Tensor:
    """L_caid: cross entropy of softmax(GAP(M')) against the labels.

    cams: m x [B, C, h, w]; labels: [B]. Returns a scalar (mean over the batch).
    """
    fused_scores = fuse_class_activation_maps(cams).mean(dim=(2, 3))  # GAP -> S' [B, C]
    return F.cross_entropy(fused_scores, labels, label_smoothing=label_smoothing)  # eq. 12


def triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.3) -> Tensor:
    """Batch-hard triplet loss with Euclidean distances, mean over valid anchors.

    embeddings: [B, D]; labels: [B]. For each anchor: hardest positive (other
    sample, same label, largest distance) and hardest negative (smallest
    distance); loss relu(d_ap - d_an + margin). Anchors without another
    positive or without a negative are skipped; with none left, returns a zero
    that is still connected to the graph.
    """
    x = embeddings.float()
    d2 = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)  # [B, B]; plain, exact at the diagonal
    dist = d2.clamp_min(1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return x.sum() * 0.0
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(1)
    d_an = dist.masked_fill(~neg, float("inf")).amin(1)
    return F.relu(d_ap - d_an + margin)[valid].mean()


def compute_losses(out, labels: Tensor, *, hsc_alpha: float | None = None, caid: bool = False,
                   triplet_margin: float | None = None, label_smoothing: float = 0.0,
                   hsc_variant: str = "paper") -> dict[str, Tensor]:
    """All requested terms and their total, ready for logging.

    out: a ``StreamOutput`` (features m x [B, d], scores m x [B, C], cams
    m x [B, C, h, w] or None); labels: [B]. Returns {"loss", "id", and when
    requested "hsc", "caid", "triplet"}: L = L_msid + alpha L_hsc + L_caid
    (+ triplet). "hsc" is the unweighted term; with hsc_variant="official" it
    already holds the official 0.001. Triplet: sum over streams of the
    batch-hard loss on each stream's pooled feature (before the neck).
    """
    if hsc_variant not in HSC_VARIANTS:
        raise ValueError(f"hsc_variant must be one of {HSC_VARIANTS}, got {hsc_variant!r}")
    terms = {"id": multi_stream_id_loss(out.scores, labels, label_smoothing)}  # eq. 4
    total = terms["id"]
    if hsc_alpha is not None:
        if len(out.scores) < 2:
            raise ValueError("L_hsc needs >= 2 streams (spectra); this model has 1: "
                             "drop hsc_alpha for a one-stream model")
        hsc = (heterogeneous_score_coherence if hsc_variant == "paper"
               else official_score_coherence)
        terms["hsc"] = hsc(out.scores)
        total = total + hsc_alpha * terms["hsc"]  # eq. 6
    if caid:
        if out.cams is None:
            raise ValueError("caid=True needs class activation maps: call "
                             "model(images, return_cams=True)")
        terms["caid"] = class_aware_id_loss(out.cams, labels, label_smoothing)
        total = total + terms["caid"]  # eq. 13
    if triplet_margin is not None:
        terms["triplet"] = sum(triplet_loss(f, labels, triplet_margin) for f in out.features)
        total = total + terms["triplet"]
    return {"loss": total, **terms}
