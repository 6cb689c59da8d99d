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

from msreid.models.cams import at_least_float32, class_aware_weights, official_fusion_weights

HSC_VARIANTS = ("paper", "official")
HSC_REDUCTIONS = ("mean", "sum")
CAID_VARIANTS = ("paper", "official")
TRIPLET_ON = ("pooled", "necked")
PAPER_ALPHA = 0.001  # eq. 6: "alpha is a hyper-parameter setting as 0.001"

ABLATIONS: dict[str, dict] = {
    "one_stream": {},  # L_id on a single spectrum: build the model with one spectrum
    "msn": {},  # Table 5 "baseline (MSN)": L_msid (eq. 4)
    "msn+hsc": {"hsc_alpha": PAPER_ALPHA},  # "+ L_hsc": L_hc (eq. 6)
    "msn+caid": {"caid": True},  # "+ L_caid"
    "hamnet": {"hsc_alpha": PAPER_ALPHA, "caid": True},  # "+ L_hsc + L_caid" (eq. 13)
    # The authors' released objective (docs/MODELS.md): cosine L_hsc summed over
    # the batch with the same alpha, the fused score of sigmoid-map sums with ID
    # + triplet losses, triplet losses on the BN-necked stream features.
    "hamnet_official": {"hsc_alpha": PAPER_ALPHA, "hsc_variant": "official",
                        "hsc_reduction": "sum", "caid": True, "caid_variant": "official",
                        "triplet_margin": 0.3, "triplet_on": "necked"},
}
"""Named loss configurations: keyword arguments of :func:`compute_losses`.

alpha (``hsc_alpha``) is the one weight of the L_hsc term in every entry: no
term carries a constant of its own.
"""


def id_loss(scores: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Identification loss of one stream, mean over the batch.

    scores: S^j [B, C]; labels: [B] int64 in [0, C). Returns a scalar.
    """
    return F.cross_entropy(at_least_float32(scores), labels, label_smoothing=label_smoothing)  # eq. 3


def multi_stream_id_loss(scores: Sequence[Tensor], labels: Tensor,
                         label_smoothing: float = 0.0) -> Tensor:
    """L_msid: sum of the streams' identification losses. scores: m x [B, C]."""
    return sum(id_loss(s, labels, label_smoothing) for s in scores)  # eq. 4


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction not in HSC_REDUCTIONS:
        raise ValueError(f"hsc_reduction must be one of {HSC_REDUCTIONS}, got {reduction!r}")
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def heterogeneous_score_coherence(scores: Sequence[Tensor], reduction: str = "mean") -> Tensor:
    """L_hsc (paper): per sample 1 - sum_i prod_j p^j_i, reduced over the batch.

    scores: m >= 2 tensors S^j [B, C]. The paper does not say how eq. 5 is
    reduced over the batch: ``reduction="mean"`` (msreid's default) or ``"sum"``
    (what the authors' code does with its own form). Computed in float32 (also
    under autocast; float64 stays float64) and in log space:
    sum_i prod_j p^j_i = exp(logsumexp_i sum_j log p^j_i).
    """
    if len(scores) < 2:
        raise ValueError(f"heterogeneous_score_coherence needs >= 2 streams, got {len(scores)}")
    with torch.autocast(device_type=scores[0].device.type, enabled=False):
        log_p = torch.stack([F.log_softmax(at_least_float32(s), dim=1)
                             for s in scores])  # eq. 2, [m, B, C]
        agreement = torch.logsumexp(log_p.sum(dim=0), dim=1).exp()  # sum_i prod_j p^j_i, [B]
        return _reduce(1.0 - agreement, reduction)  # eq. 5


def official_score_coherence(scores: Sequence[Tensor], reduction: str = "sum") -> Tensor:
    """The authors' L_hsc form: 1 - cos(S^1_b, S^2_b) per sample, summed over the batch.

    scores: m >= 2 tensors [B, C] (logits, not probabilities); only the first
    two streams (RGB, NIR in the authors' trainer) take part. Their trainer
    writes ``0.001 * (32 - sum of products of L2-normalised logits)`` with the
    batch size 32 hard-coded; here the sum runs over the actual batch (equal
    at batch 32, never negative at others) and the 0.001 is NOT inside: it is
    alpha, as for every other form of the term.
    """
    if len(scores) < 2:
        raise ValueError(f"official_score_coherence needs >= 2 streams, got {len(scores)}")
    with torch.autocast(device_type=scores[0].device.type, enabled=False):
        first, second = at_least_float32(scores[0]), at_least_float32(scores[1])
        cos = F.cosine_similarity(first, second, dim=1, eps=1e-12)
        return _reduce(1.0 - cos, reduction)


def fuse_class_activation_maps(cams: Sequence[Tensor]) -> Tensor:
    """M' = sum_j alpha^j_c M^j_c (eqs. 7-11). cams: m x [B, C, h, w] -> [B, C, h, w]."""
    alpha = class_aware_weights(cams)
    stacked = torch.stack([at_least_float32(c) for c in cams])  # [m, B, C, h, w]
    return (alpha[..., None, None] * stacked).sum(dim=0)  # eq. 11


def class_aware_id_loss(cams: Sequence[Tensor], labels: Tensor,
                        label_smoothing: float = 0.0) -> Tensor:
    """L_caid: cross entropy of softmax(GAP(M')) against the labels.

    cams: m x [B, C, h, w]; labels: [B]. Returns a scalar (mean over the batch).
    """
    fused_scores = fuse_class_activation_maps(cams).mean(dim=(2, 3))  # GAP -> S' [B, C]
    return F.cross_entropy(fused_scores, labels, label_smoothing=label_smoothing)  # eq. 12


def official_fused_scores(cams: Sequence[Tensor]) -> Tensor:
    """The authors' fused score S'_c = g_c sum_j w^j_c a^j_c [B, C] (see official_fusion_weights).

    It replaces eqs. 9-12's GAP(M') in their trainer: ID and triplet losses are
    applied to it directly (a weighted sum of sigmoid-map sums, all positive).
    """
    w, g = official_fusion_weights(cams)
    sums = torch.sigmoid(torch.stack([at_least_float32(c) for c in cams])).sum(dim=(3, 4))  # a^j_c
    return g * (w * sums).sum(dim=0)


def triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.3) -> Tensor:
    """Batch-hard triplet loss with Euclidean distances, mean over valid anchors.

    embeddings: [B, D]; labels: [B]. For each anchor: hardest positive (other
    sample, same label, largest distance) and hardest negative (smallest
    distance); loss relu(d_ap - d_an + margin). Anchors without another
    positive or without a negative are skipped; with none left, returns a zero
    that is still connected to the graph.
    """
    x = at_least_float32(embeddings)
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


def _check_choices(**given: str) -> None:
    allowed = {"hsc_variant": HSC_VARIANTS, "hsc_reduction": HSC_REDUCTIONS,
               "caid_variant": CAID_VARIANTS, "triplet_on": TRIPLET_ON}
    for name, value in given.items():
        if value not in allowed[name]:
            raise ValueError(f"{name} must be one of {allowed[name]}, got {value!r}")


def kept_rows(values: Sequence[Tensor], labels: Tensor,
              keep: Tensor | None) -> list[tuple[Tensor, Tensor]]:
    """Per stream j, ``(values[j], labels)`` restricted to the tuples that kept spectrum j.

    keep: [B, m] bool (modality dropout; None = every stream of every tuple). A dropped
    stream's feature/score is left out of the tuple's terms, as ``embed(missing="drop")``
    leaves it out of the test embedding.
    """
    if keep is None:
        return [(v, labels) for v in values]
    if keep.shape != (len(labels), len(values)):
        raise ValueError(f"keep must be [B, m] = [{len(labels)}, {len(values)}], "
                         f"got {tuple(keep.shape)}")
    return [(v[keep[:, j]], labels[keep[:, j]]) for j, v in enumerate(values)]


def _stream_id_loss(scores: Tensor, labels: Tensor, label_smoothing: float) -> Tensor:
    """id_loss over the tuples a stream kept; when it kept none, a zero still connected to the
    graph (cross entropy over no sample would be NaN)."""
    if len(labels) == 0:
        return scores.sum() * 0.0
    return id_loss(scores, labels, label_smoothing)


def compute_losses(out, labels: Tensor, *, hsc_alpha: float | None = None, caid: bool = False,
                   triplet_margin: float | None = None, label_smoothing: float = 0.0,
                   hsc_variant: str = "paper", hsc_reduction: str = "mean",
                   caid_variant: str = "paper", triplet_on: str = "pooled",
                   keep: Tensor | None = None) -> dict[str, Tensor]:
    """All requested terms and their total, ready for logging.

    out: a ``StreamOutput`` (features m x [B, d], scores m x [B, C], cams
    m x [B, C, h, w] or None, necked m x [B, d] or None); labels: [B]. Returns
    {"loss", "id", and when requested "hsc", "caid", "triplet"}:
    L = L_msid + alpha L_hsc + L_caid (+ triplet); "hsc" is the unweighted term.
    caid_variant="official": L_caid is the ID loss of :func:`official_fused_scores`
    and, with a triplet margin, the triplet loss on those scores joins "triplet".
    Triplet: sum over streams of the batch-hard loss on each stream's pooled
    feature (triplet_on="pooled") or BN-necked feature ("necked").
    keep: [B, m] bool modality-dropout mask (None = none dropped): stream j's ID and
    triplet terms see only the tuples that kept it (:func:`kept_rows`); L_hsc and L_caid
    have no rule for a missing stream and refuse a mask.
    """
    _check_choices(hsc_variant=hsc_variant, hsc_reduction=hsc_reduction,
                   caid_variant=caid_variant, triplet_on=triplet_on)
    if keep is not None and (hsc_alpha is not None or caid):
        raise ValueError("a modality-dropout mask (keep) works with the per-stream terms "
                         "(L_msid, triplet) only, not with L_hsc or L_caid")
    if keep is None:
        terms = {"id": multi_stream_id_loss(out.scores, labels, label_smoothing)}  # eq. 4
    else:  # eq. 4 over each stream's kept tuples
        terms = {"id": sum(_stream_id_loss(s, y, label_smoothing)
                           for s, y in kept_rows(out.scores, labels, keep))}
    total = terms["id"]
    if hsc_alpha is not None:
        if len(out.scores) < 2:
            raise ValueError("L_hsc needs >= 2 streams (spectra); this model has 1: "
                             "drop hsc_alpha for a one-stream model")
        hsc = (heterogeneous_score_coherence if hsc_variant == "paper"
               else official_score_coherence)
        terms["hsc"] = hsc(out.scores, hsc_reduction)
        total = total + hsc_alpha * terms["hsc"]  # eq. 6
    fused = None
    if caid:
        if out.cams is None:
            raise ValueError("caid=True needs class activation maps: call "
                             "model(images, return_cams=True)")
        if caid_variant == "paper":
            terms["caid"] = class_aware_id_loss(out.cams, labels, label_smoothing)  # eq. 12
        else:
            fused = official_fused_scores(out.cams)
            terms["caid"] = id_loss(fused, labels, label_smoothing)
        total = total + terms["caid"]  # eq. 13
    if triplet_margin is not None:
        feats = out.features if triplet_on == "pooled" else _necked(out)
        pairs = kept_rows(list(feats), labels, keep) + ([(fused, labels)] if fused is not None else [])
        terms["triplet"] = sum(triplet_loss(f, y, triplet_margin) for f, y in pairs)
        total = total + terms["triplet"]
    return {"loss": total, **terms}


def _necked(out) -> list[Tensor]:
    necked = getattr(out, "necked", None)
    if necked is None:
        raise ValueError("triplet_on='necked' needs the BN-necked features (StreamOutput.necked)")
    return necked
