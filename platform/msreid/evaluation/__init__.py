"""Re-ID evaluation: CMC / mAP / mINP (Market-1501 protocol), re-ranking, breakdowns,
the query x gallery spectrum matrix.

Plain torch / numpy / pandas; see docs/EVALUATION.md for the exact definitions.
"""

from msreid.evaluation.breakdowns import (
    SHORT_NAMES,
    challenge_table,
    evaluate_subsets,
    spectrum_subsets,
    subset_name,
    subset_table,
)
from msreid.evaluation.cross_spectral import (
    cross_spectral_matrix,
    matrix_table,
    mean_std_over_seeds,
)
from msreid.evaluation.distance import METRICS, compute_distance_matrix
from msreid.evaluation.rank import (
    QueryStats,
    RankResult,
    evaluate_features,
    evaluate_rank,
    feature_stats,
    rank_stats,
    rgbnt201_protocol,
    summarize,
)
from msreid.evaluation.rerank import re_ranking

__all__ = [
    "METRICS",
    "SHORT_NAMES",
    "QueryStats",
    "RankResult",
    "challenge_table",
    "compute_distance_matrix",
    "cross_spectral_matrix",
    "evaluate_features",
    "evaluate_rank",
    "evaluate_subsets",
    "feature_stats",
    "matrix_table",
    "mean_std_over_seeds",
    "rank_stats",
    "re_ranking",
    "rgbnt201_protocol",
    "spectrum_subsets",
    "subset_name",
    "subset_table",
    "summarize",
]
