"""Re-ID evaluation: CMC / mAP / mINP (Market-1501 protocol), re-ranking, breakdowns.

Plain torch / numpy; see docs/EVALUATION.md for the exact definitions.
"""

from msreid.evaluation.distance import METRICS, compute_distance_matrix
from msreid.evaluation.rerank import re_ranking
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

__all__ = [
    "METRICS",
    "QueryStats",
    "RankResult",
    "compute_distance_matrix",
    "evaluate_features",
    "evaluate_rank",
    "feature_stats",
    "rank_stats",
    "re_ranking",
    "rgbnt201_protocol",
    "summarize",
]
