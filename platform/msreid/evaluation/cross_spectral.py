"""The query x gallery spectrum matrix: every (query subset, gallery subset) pair.

The missing-modality table evaluates query and gallery with the SAME spectra
(the diagonal). Deployments mix them: a night query camera with NIR + TIR only
against a gallery built by day from RGB-N-T rigs. This module ranks the query
features of one subset against the gallery features of another; both come from
the same model (``MultiStreamNet.embed_subsets``, one embedding space), and the
dataset's protocol rules apply unchanged (same id + same camera removed, or the
scene rule of MSVR310). The diagonal is, call for call, the missing-modality
evaluation, so it equals that table exactly.

Plain numpy / torch / pandas; see docs/EVALUATION.md ("Cross-spectral matrix").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from msreid.errors import UserError
from msreid.evaluation.breakdowns import spectrum_subsets, subset_name
from msreid.evaluation.rank import RankResult, evaluate_features

MATRIX_METRICS = ("mAP", "R1", "R5", "R10", "mINP")
"""Metric columns of ``cross_spectral.csv``, in %."""

MATRIX_COLUMNS = ["query", "gallery", *MATRIX_METRICS]


def cross_spectral_matrix(
    features_for: Callable[[tuple[str, ...]], tuple[object, object]],
    spectra: Sequence[str],
    q_ids, g_ids, q_cams, g_cams, q_scenes=None, g_scenes=None, **evaluate_kwargs,
) -> dict[tuple[str, str], RankResult]:
    """Evaluate every (query subset, gallery subset) pair of the non-empty subsets of ``spectra``.

    ``features_for(subset) -> (query [Q, D], gallery [G, D])`` is called once per subset
    (as ``evaluate_subsets``); query features of subset a are ranked against gallery
    features of subset b with ``evaluate_features`` (``evaluate_kwargs``: metric,
    max_rank, ...). Returns ``{(query key, gallery key): RankResult}``, query-major, in
    ``spectrum_subsets`` order (7 x 7 = 49 pairs for 3 spectra, 3 x 3 for 2).
    """
    subsets = spectrum_subsets(spectra)
    feats = {subset_name(s): features_for(s) for s in subsets}
    out = {}
    for qa in feats:
        for gb in feats:
            out[qa, gb] = evaluate_features(feats[qa][0], feats[gb][1], q_ids, g_ids, q_cams,
                                            g_cams, q_scenes, g_scenes, **evaluate_kwargs)
    return out


def _percent(x: float) -> float:
    return round(100.0 * float(x), 2) if math.isfinite(x) else float("nan")


def matrix_table(results: Mapping[tuple[str, str], RankResult]) -> pd.DataFrame:
    """``cross_spectral.csv``: one row per pair, ``query gallery mAP R1 R5 R10 mINP``,
    metrics in % rounded to 2 decimals, in the mapping's order."""
    rows = [{"query": qa, "gallery": gb,
             **{k: _percent(v) for k, v in res.as_dict().items() if k in MATRIX_METRICS}}
            for (qa, gb), res in results.items()]
    return pd.DataFrame(rows, columns=MATRIX_COLUMNS)


def check_matrix_table(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """``frame`` if it has the matrix columns, else UserError naming ``source``."""
    missing = [c for c in MATRIX_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{source}: not a cross_spectral.csv (no column {', '.join(missing)}); "
                        "it is written by a trial's final test (run.missing_modality=true)")
    return frame


def pivot(frame: pd.DataFrame, metric: str = "mAP") -> pd.DataFrame:
    """The matrix of one metric: rows = query subset, columns = gallery subset, in file order."""
    order = list(dict.fromkeys(frame["query"]))
    gorder = list(dict.fromkeys(frame["gallery"]))
    return frame.pivot(index="query", columns="gallery", values=metric).loc[order, gorder]


def mean_std_over_seeds(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Per (query, gallery) pair: ``seeds``, then ``<m>`` (mean) and ``<m>_std`` (sample std,
    ddof=1; NaN for one seed) of every metric, rounded to 2 decimals, in the first frame's order."""
    frames = list(frames)
    if not frames:
        return pd.DataFrame(columns=["query", "gallery", "seeds"])
    stacked = pd.concat(frames, ignore_index=True)
    order = list(dict.fromkeys(zip(frames[0]["query"], frames[0]["gallery"])))
    rows = []
    for qa, gb in order:
        part = stacked[(stacked["query"] == qa) & (stacked["gallery"] == gb)]
        row: dict = {"query": qa, "gallery": gb, "seeds": len(part)}
        for m in MATRIX_METRICS:
            values = part[m].astype(float).to_numpy()
            row[m] = round(float(np.mean(values)), 2)
            row[f"{m}_std"] = round(float(np.std(values, ddof=1)), 2) if len(values) > 1 \
                else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def off_diagonal_mean(frame: pd.DataFrame, metric: str = "mAP") -> float:
    """Mean of ``metric`` over the pairs whose query and gallery subsets differ."""
    off = frame[frame["query"] != frame["gallery"]]
    return float(off[metric].astype(float).mean()) if len(off) else float("nan")


def cell_value(frame: pd.DataFrame, query: str, gallery: str, metric: str = "mAP") -> float:
    """One cell of a matrix table (NaN when the pair is absent)."""
    hit = frame[(frame["query"] == query) & (frame["gallery"] == gallery)]
    return float(hit[metric].iloc[0]) if len(hit) else float("nan")
