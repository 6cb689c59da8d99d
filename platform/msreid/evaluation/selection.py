"""Model selection on validation scores: which evaluation to keep, and how sure that choice is.

Plain functions of the validation scores in evaluation order (one per
validated epoch, e.g. mAP as a fraction), so the training loop, tuning code
and offline analyses share them.

Resolution: mAP is the mean over Q queries of a per-query AP in [0, 1], so one
query moving from a hit to a miss moves mAP by up to 1/Q. Two scores closer
than that are not told apart by the validation split: a float-level change of
the weights (another thread count or summation order) may swap them. The
margin between the best and the runner-up, set against that resolution, says
whether a selection was made by the data or by noise.

Rules (``RULES``):

- ``best``: the highest score; the earliest of exact ties.
- ``latest_near_best``: the latest evaluation whose score is within
  ``tolerance`` of the highest (the loop passes the resolution). Scores the
  validation split cannot tell apart go to the longest-trained model instead
  of to float noise; the choice still moves when a score crosses the line
  ``max - tolerance``.

Both only ever move the choice to the newest evaluation, so a training loop
can apply them online, keeping one copy of the selected weights.
"""

from __future__ import annotations

import math
from typing import Sequence

RULES = ("best", "latest_near_best")


def resolution(num_queries: int) -> float:
    """One query's worth of mAP: ``1 / num_queries`` (``inf`` without queries)."""
    return 1.0 / num_queries if num_queries > 0 else math.inf


def select(scores: Sequence[float], rule: str = "best", tolerance: float = 0.0) -> int:
    """Index of the evaluation ``rule`` keeps among ``scores`` (-1 when there is none).

    tolerance: the band below the highest score ``latest_near_best`` accepts.
    """
    if rule not in RULES:
        raise ValueError(f"selection rule {rule!r}: use one of {', '.join(RULES)}")
    if not scores:
        return -1
    top = max(scores)
    if rule == "best":
        return list(scores).index(top)
    return max(i for i, s in enumerate(scores) if s >= top - tolerance)


def margin(scores: Sequence[float]) -> float:
    """Best minus runner-up score (``inf`` with fewer than two evaluations: nothing to confuse)."""
    if len(scores) < 2:
        return math.inf
    first, second = sorted(scores, reverse=True)[:2]
    return first - second


def runner_up(scores: Sequence[float]) -> int:
    """Index of the second-highest score (the earliest of ties; -1 with fewer than two)."""
    if len(scores) < 2:
        return -1
    best = select(scores, "best")
    rest = [(s, -i) for i, s in enumerate(scores) if i != best]
    return -max(rest)[1]


def within_noise(scores: Sequence[float], num_queries: int) -> bool:
    """Whether the best and the runner-up differ by less than one query's worth of mAP."""
    return margin(scores) < resolution(num_queries)
