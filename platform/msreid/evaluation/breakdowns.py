"""Breakdown tables: missing-modality subsets and per-challenge metrics (pandas DataFrames).

Both are plain data for the tracking layer to log as tables: one row per
spectrum subset / per query challenge tag, columns ``mAP mINP R1 R5 R10
num_valid num_skipped`` (plus the row key and, for challenges, ``num_queries``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from msreid import SPECTRA
from msreid.errors import UserError
from msreid.evaluation.names import METRIC_NAMES
from msreid.evaluation.rank import RankResult, evaluate_features, feature_stats, summarize

SHORT_NAMES = {"rgb": "r", "nir": "n", "tir": "t"}
"""One-letter spectrum names used in subset keys (``"rn"`` = RGB + NIR)."""

_METRIC_COLUMNS = [*METRIC_NAMES, "num_valid", "num_skipped"]


def spectrum_subsets(spectra: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``spectra``: singles, then pairs, ..., each in canonical order.

    ``("rgb", "nir", "tir")`` -> r, n, t, rn, rt, nt, rnt (as tuples of full names).
    """
    unknown = [s for s in spectra if s not in SPECTRA]
    if unknown or len(set(spectra)) != len(spectra) or not spectra:
        raise UserError(f"spectra={list(spectra)}: give distinct names from {', '.join(SPECTRA)}")
    ordered = [s for s in SPECTRA if s in spectra]
    return [c for n in range(1, len(ordered) + 1) for c in itertools.combinations(ordered, n)]


def subset_name(subset: Sequence[str]) -> str:
    """Short key of a subset: ``("rgb", "tir")`` -> ``"rt"``."""
    return "".join(SHORT_NAMES[s] for s in subset)


def _row(result: RankResult) -> dict[str, float | int]:
    row: dict[str, float | int] = result.as_dict()
    row.update(num_valid=result.num_valid, num_skipped=result.num_skipped)
    return row


def subset_table(results: Mapping[str, RankResult]) -> pd.DataFrame:
    """Missing-modality table: one row per subset key (e.g. ``"rn"``), in the mapping's order.

    Columns: ``subset``, ``spectra`` (``"rgb+nir"``), then the metric columns.
    """
    long = {v: k for k, v in SHORT_NAMES.items()}
    rows = [{"subset": key, "spectra": "+".join(long.get(ch, ch) for ch in key), **_row(res)}
            for key, res in results.items()]
    return pd.DataFrame(rows, columns=["subset", "spectra", *_METRIC_COLUMNS])


def evaluate_subsets(
    features_for: Callable[[tuple[str, ...]], tuple[object, object]],
    spectra: Sequence[str],
    q_ids, g_ids, q_cams, g_cams, q_scenes=None, g_scenes=None, **evaluate_kwargs,
) -> dict[str, RankResult]:
    """Evaluate every spectrum subset: ``features_for(subset) -> (query [Q, D], gallery [G, D])``
    embeds the test set with only those spectra present (the others blanked).

    Returns ``{subset_name: RankResult}`` in ``spectrum_subsets`` order, ready for ``subset_table``.
    """
    out = {}
    for subset in spectrum_subsets(spectra):
        query, gallery = features_for(subset)
        out[subset_name(subset)] = evaluate_features(
            query, gallery, q_ids, g_ids, q_cams, g_cams, q_scenes, g_scenes, **evaluate_kwargs)
    return out


def challenge_table(query, gallery, q_ids, g_ids, q_cams, g_cams, q_challenges,
                    q_scenes=None, g_scenes=None, **evaluate_kwargs) -> pd.DataFrame | None:
    """Metrics per challenge tag of the query (manifest column ``challenge``).

    One row per distinct non-null tag, sorted by tag: ``challenge``, ``num_queries``
    and the metric columns; every tag's queries are ranked against the whole gallery.
    Queries without a tag are left out. Returns None when ``q_challenges`` is None or
    all null. ``evaluate_kwargs`` as ``evaluate_features`` (``max_rank``, ``rerank``, ...).
    """
    if q_challenges is None:
        return None
    tags = pd.Series(np.asarray(q_challenges, dtype=object))
    if len(tags) != len(np.asarray(q_ids)):
        raise UserError(f"q_challenges: expected {len(np.asarray(q_ids))} tags (one per query), "
                        f"got {len(tags)}")
    present = ~tags.isna().to_numpy()
    if not present.any():
        return None
    max_rank = evaluate_kwargs.pop("max_rank", 50)
    stats = feature_stats(query, gallery, q_ids, g_ids, q_cams, g_cams, q_scenes, g_scenes,
                          **evaluate_kwargs)
    rows = []
    for tag in sorted(set(tags[present].astype(str))):
        mask = present & (tags.astype(str).to_numpy() == tag)
        rows.append({"challenge": tag, "num_queries": int(mask.sum()),
                     **_row(summarize(stats, max_rank, mask))})
    return pd.DataFrame(rows, columns=["challenge", "num_queries", *_METRIC_COLUMNS])
