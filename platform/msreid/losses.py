"""The paper's losses (eqs. 2-13) and the batch-hard triplet loss, as pure functions.

Notation: m streams (spectra), B samples, C classes, d feature channels,
h x w the last feature map. ``scores`` is a sequence of m tensors S^j [B, C];
``cams`` a sequence of m class activation maps M^j [B, C, h, w]. No function
here talks to a process group: under DDP each rank computes its own batch.
Equation numbers refer to the HAMNet paper (docs/MODELS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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

ABLATION_LABELS: dict[str, str] = {
    "one_stream": "one-stream", "msn": "MSN", "msn+hsc": "MSN+HSC", "msn+caid": "MSN+CAID",
    "hamnet": "HAMNet", "hamnet_official": "HAMNet-official",
}
"""The model each ablation trains, as run names and tables call it (one entry per ablation)."""


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


@dataclass
class TermInput:
    """What a term's ``compute`` sees: the (global) batch and every option of compute_losses."""

    out: Any  # a StreamOutput
    labels: Tensor  # [B]
    keep: Tensor | None  # [B, m] modality-dropout mask, None = every stream kept
    options: Mapping[str, Any]  # every keyword of compute_losses, defaults filled in
    shared: dict[str, Tensor] = field(default_factory=dict)  # what a term leaves for later ones


@dataclass(frozen=True)
class LossTerm:
    """One term of the objective. ``LOSS_TERMS`` is the only place a term is named: config
    validation, ``loss_kwargs``, the loop's logged terms, the model's outputs and the run
    labels all read it."""

    symbol: str  # how messages name it ("L_hsc")
    compute: Callable[[TermInput], Tensor]  # the unweighted term
    switch: str | None = None  # keyword turning it on: on unless None or False (None: always on)
    weight: str | None = None  # keyword whose value weights it in the total (None: added as is)
    options: Mapping[str, Any] = field(default_factory=dict)  # its other keywords, defaults
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # their closed sets
    # loss config field -> the keyword it sets when the term is on (a null field: the ablation's)
    config: Mapping[str, str] = field(default_factory=dict)
    # (bool config field, field giving the switch's value): the config, not the ablation, turns
    # the term on
    enabled_by: tuple[str, str] | None = None
    needs_cams: bool = False  # the model must return class activation maps
    per_stream: bool = True  # a modality-dropout mask can leave a dropped stream out of it


def _id_term(b: TermInput) -> Tensor:
    smoothing = b.options["label_smoothing"]
    if b.keep is None:
        return multi_stream_id_loss(b.out.scores, b.labels, smoothing)  # eq. 4
    return sum(_stream_id_loss(s, y, smoothing)  # eq. 4 over each stream's kept tuples
               for s, y in kept_rows(b.out.scores, b.labels, b.keep))


def _hsc_term(b: TermInput) -> Tensor:
    if len(b.out.scores) < 2:
        raise ValueError("L_hsc needs >= 2 streams (spectra); this model has 1: "
                         "drop hsc_alpha for a one-stream model")
    hsc = (heterogeneous_score_coherence if b.options["hsc_variant"] == "paper"
           else official_score_coherence)
    return hsc(b.out.scores, b.options["hsc_reduction"])  # weighted by alpha: eq. 6


def _caid_term(b: TermInput) -> Tensor:
    if b.out.cams is None:
        raise ValueError("caid=True needs class activation maps: call "
                         "model(images, return_cams=True)")
    smoothing = b.options["label_smoothing"]
    if b.options["caid_variant"] == "paper":
        return class_aware_id_loss(b.out.cams, b.labels, smoothing)  # eq. 12
    b.shared["fused"] = official_fused_scores(b.out.cams)  # the triplet term uses them too
    return id_loss(b.shared["fused"], b.labels, smoothing)


def _triplet_term(b: TermInput) -> Tensor:
    feats = b.out.features if b.options["triplet_on"] == "pooled" else _necked(b.out)
    pairs = kept_rows(list(feats), b.labels, b.keep)
    if "fused" in b.shared:  # the authors' objective also ranks the fused scores
        pairs.append((b.shared["fused"], b.labels))
    return sum(triplet_loss(f, y, b.options["triplet_margin"]) for f, y in pairs)


LOSS_TERMS: dict[str, LossTerm] = {
    "id": LossTerm("L_msid", _id_term, options={"label_smoothing": 0.0},
                   config={"label_smoothing": "label_smoothing"}),
    "hsc": LossTerm("L_hsc", _hsc_term, switch="hsc_alpha", weight="hsc_alpha",
                    options={"hsc_variant": "paper", "hsc_reduction": "mean"},
                    choices={"hsc_variant": HSC_VARIANTS, "hsc_reduction": HSC_REDUCTIONS},
                    config={"alpha": "hsc_alpha", "hsc_variant": "hsc_variant",
                            "hsc_reduction": "hsc_reduction"},
                    per_stream=False),
    "caid": LossTerm("L_caid", _caid_term, switch="caid", options={"caid_variant": "paper"},
                     choices={"caid_variant": CAID_VARIANTS},
                     config={"caid_variant": "caid_variant"}, needs_cams=True,
                     per_stream=False),
    "triplet": LossTerm("triplet", _triplet_term, switch="triplet_margin",
                        options={"triplet_on": "pooled"}, choices={"triplet_on": TRIPLET_ON},
                        enabled_by=("triplet", "margin")),
}
"""Every term of the objective by the name :func:`compute_losses` returns it under (logged
as ``train/<name>``), in the order they are added to the total.

A new term is its compute function, one entry here and an ablation (``ABLATIONS``,
``ABLATION_LABELS``) or ``enabled_by`` that turns it on; nothing outside this module names
terms. A setting users change from the config also needs its ``LossConfig`` field
(``msreid.config``), mapped in ``config``.
"""


def _is_on(value: Any) -> bool:
    return value is not None and value is not False  # identity: alpha 0.0 is on


def active_terms(options: Mapping[str, Any]) -> tuple[str, ...]:
    """The terms :func:`compute_losses` returns for these keyword arguments, in order."""
    return tuple(name for name, term in LOSS_TERMS.items()
                 if term.switch is None or _is_on(options.get(term.switch)))


def needs_cams(options: Mapping[str, Any]) -> bool:
    """Whether these keyword arguments need the model's CAMs (``return_cams=True``)."""
    return any(LOSS_TERMS[name].needs_cams for name in active_terms(options))


def _resolve(given: Mapping[str, Any]) -> dict[str, Any]:
    """Every term's keywords, ``given`` over the defaults; TypeError / ValueError on bad ones."""
    defaults: dict[str, Any] = {}
    for term in LOSS_TERMS.values():
        if term.switch is not None:
            defaults[term.switch] = None
        defaults.update(term.options)
    unknown = [name for name in given if name not in defaults]
    if unknown:
        raise TypeError(f"compute_losses() got an unexpected keyword argument {unknown[0]!r}: "
                        f"use {', '.join(defaults)}")
    options = {**defaults, **given}
    for term in LOSS_TERMS.values():
        for name, allowed in term.choices.items():
            if options[name] not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {options[name]!r}")
    return options


def _check_keep(active: Sequence[str]) -> None:
    if all(LOSS_TERMS[name].per_stream for name in active):
        return
    per_stream = [t.symbol for t in LOSS_TERMS.values() if t.per_stream]
    others = [t.symbol for t in LOSS_TERMS.values() if not t.per_stream]
    raise ValueError(f"a modality-dropout mask (keep) works with the per-stream terms "
                     f"({', '.join(per_stream)}) only, not with {' or '.join(others)}")


def compute_losses(out, labels: Tensor, *, keep: Tensor | None = None,
                   **options: Any) -> dict[str, Tensor]:
    """All requested terms and their total, ready for logging.

    out: a ``StreamOutput`` (features m x [B, d], scores m x [B, C], cams
    m x [B, C, h, w] or None, necked m x [B, d] or None); labels: [B]. options: the
    keywords of ``LOSS_TERMS`` (hsc_alpha=None, caid=False, triplet_margin=None,
    label_smoothing=0.0, hsc_variant="paper", hsc_reduction="mean", caid_variant="paper",
    triplet_on="pooled"). Returns {"loss", "id", and when requested "hsc", "caid", "triplet"}:
    L = L_msid + alpha L_hsc + L_caid (+ triplet); "hsc" is the unweighted term.
    caid_variant="official": L_caid is the ID loss of :func:`official_fused_scores`
    and, with a triplet margin, the triplet loss on those scores joins "triplet".
    Triplet: sum over streams of the batch-hard loss on each stream's pooled
    feature (triplet_on="pooled") or BN-necked feature ("necked").
    keep: [B, m] bool modality-dropout mask (None = none dropped): stream j's ID and
    triplet terms see only the tuples that kept it (:func:`kept_rows`); L_hsc and L_caid
    have no rule for a missing stream and refuse a mask.
    """
    resolved = _resolve(options)
    active = active_terms(resolved)
    if keep is not None:
        _check_keep(active)
    batch = TermInput(out, labels, keep, resolved)
    terms: dict[str, Tensor] = {}
    total = None
    for name in active:
        term = LOSS_TERMS[name]
        terms[name] = term.compute(batch)
        weighted = terms[name] if term.weight is None else resolved[term.weight] * terms[name]
        total = weighted if total is None else total + weighted
    return {"loss": total, **terms}


def _necked(out) -> list[Tensor]:
    necked = getattr(out, "necked", None)
    if necked is None:
        raise ValueError("triplet_on='necked' needs the BN-necked features (StreamOutput.necked)")
    return necked
