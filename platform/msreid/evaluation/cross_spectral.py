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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from msreid.errors import UserError
from msreid.evaluation.breakdowns import spectrum_subsets, subset_name
from msreid.evaluation.names import MAP, TABLE_METRICS
from msreid.evaluation.rank import RankResult, evaluate_features

MATRIX_METRICS = TABLE_METRICS
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


def pivot(frame: pd.DataFrame, metric: str = MAP) -> pd.DataFrame:
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


def off_diagonal_mean(frame: pd.DataFrame, metric: str = MAP) -> float:
    """Mean of ``metric`` over the pairs whose query and gallery subsets differ."""
    off = frame[frame["query"] != frame["gallery"]]
    return float(off[metric].astype(float).mean()) if len(off) else float("nan")


def cell_value(frame: pd.DataFrame, query: str, gallery: str, metric: str = MAP) -> float:
    """One cell of a matrix table (NaN when the pair is absent)."""
    hit = frame[(frame["query"] == query) & (frame["gallery"] == gallery)]
    return float(hit[metric].iloc[0]) if len(hit) else float("nan")


@dataclass(frozen=True)
class MatrixComparison:
    """Matrices of a treated model vs a baseline, over seeds (all values in %).

    ``off_*``: per seed, the mean ``metric`` over the off-diagonal pairs; then mean and sample
    std (ddof=1) over seeds. ``full_*``: the all-spectra diagonal cell (e.g. RGB-N-T vs
    RGB-N-T). ``spread``: sqrt(std_treated^2 + std_baseline^2), the seed spread of a
    difference of two seeds' values; NaN with fewer than 2 seeds per side.
    """

    metric: str
    full_key: str
    seeds: tuple[int, int]  # (treated, baseline)
    off: tuple[float, float]
    off_std: tuple[float, float]
    full: tuple[float, float]
    full_std: tuple[float, float]

    @property
    def off_diff(self) -> float:
        return self.off[0] - self.off[1]

    @property
    def full_diff(self) -> float:
        return self.full[0] - self.full[1]

    @property
    def spread(self) -> float:
        return math.hypot(*self.off_std)

    @property
    def full_spread(self) -> float:
        return math.hypot(*self.full_std)

    @property
    def passed(self) -> bool:
        """True only when the off-diagonal gain is larger than the seed spread."""
        return math.isfinite(self.spread) and self.off_diff > self.spread


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = float(np.mean(values)) if values else float("nan")
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def compare_matrices(treated: Sequence[pd.DataFrame], baseline: Sequence[pd.DataFrame],
                     metric: str = MAP) -> MatrixComparison:
    """Per-seed matrix tables (``matrix_table`` frames) of two models -> MatrixComparison."""
    frames = [*treated, *baseline]
    if not treated or not baseline:
        raise UserError("compare_matrices needs at least one matrix per model")
    full_key = max(frames[0]["query"], key=len)  # the subset with every spectrum
    sides = []
    for side in (treated, baseline):
        off = _mean_std([off_diagonal_mean(f, metric) for f in side])
        full = _mean_std([cell_value(f, full_key, full_key, metric) for f in side])
        sides.append((len(side), off, full))
    (n_t, off_t, full_t), (n_b, off_b, full_b) = sides
    return MatrixComparison(metric, full_key, (n_t, n_b), (off_t[0], off_b[0]),
                            (off_t[1], off_b[1]), (full_t[0], full_b[0]), (full_t[1], full_b[1]))
