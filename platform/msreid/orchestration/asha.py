"""Asynchronous successive halving that never stops a trial on a difference below a tolerance.

Ray's ``ASHAScheduler`` stops a trial at a rung when its metric is below the
rung's cutoff (the ``1 - 1/reduction_factor`` quantile of the values recorded
there) by any amount: on a validation split of a few dozen queries it ranked
trials on differences in the fifth decimal of mAP, far below what the split
can resolve (one query's worth of mAP, ``1 / num_queries``). This scheduler
keeps ASHA's rungs (``grace_period * reduction_factor ** k`` iterations, only
those before the last one: stopping at the end saves nothing) and its cutoff,
and stops a trial only when it is more than ``tolerance`` below the cutoff.

``Rungs`` is the bookkeeping (plain Python, tested by hand); ``ToleranceASHA``
plugs it into Tune through the public ``FIFOScheduler`` interface.
"""

from __future__ import annotations

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


class Rungs:
    """Values recorded per rung; ``decide`` says whether a trial reaching a rung stops."""

    def __init__(self, grace_period: int, reduction_factor: float, max_t: int, tolerance: float):
        if grace_period < 1 or reduction_factor <= 1 or tolerance < 0:
            raise ValueError(f"need grace_period >= 1, reduction_factor > 1, tolerance >= 0 "
                             f"(got {grace_period}, {reduction_factor}, {tolerance})")
        self.rf, self.tolerance = reduction_factor, tolerance
        self.milestones: list[int] = []
        m = grace_period
        while m < max_t:
            self.milestones.append(int(m))
            m *= reduction_factor
        self.recorded: dict[int, dict[str, float]] = {m: {} for m in self.milestones}

    def cutoff(self, milestone: int) -> float | None:
        """ASHA's cutoff at a rung: the (1 - 1/rf) quantile of its recorded values."""
        values = list(self.recorded[milestone].values())
        return float(np.nanpercentile(values, (1 - 1 / self.rf) * 100)) if values else None

    def decide(self, trial_id: str, iteration: int, value: float) -> bool:
        """Record ``value`` at the highest rung ``iteration`` reached (once per trial and rung);
        True = stop: the value is more than ``tolerance`` below that rung's cutoff."""
        for milestone in reversed(self.milestones):
            if iteration < milestone:
                continue
            if trial_id in self.recorded[milestone]:
                return False
            cutoff = self.cutoff(milestone)
            self.recorded[milestone][trial_id] = value
            return cutoff is not None and value < cutoff - self.tolerance
        return False


class ToleranceASHA(FIFOScheduler):
    """ASHA (mode max) on ``metric`` per ``time_attr``, stopping only beyond ``tolerance``."""

    def __init__(self, *, metric: str, time_attr: str, max_t: int, grace_period: int,
                 reduction_factor: float, tolerance: float):
        super().__init__()
        self._metric = metric
        self.time_attr = time_attr
        self.rungs = Rungs(grace_period, reduction_factor, max_t, tolerance)
        self.stopped: list[str] = []

    def set_search_properties(self, metric, mode, **spec) -> bool:
        """Tune passes the TuneConfig's metric/mode: this scheduler maximises its own metric."""
        return (metric in (None, self._metric)) and mode in (None, "max")

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._metric not in result or self.time_attr not in result:
            return TrialScheduler.CONTINUE  # e.g. the final report (test metrics only)
        if self.rungs.decide(trial.trial_id, int(result[self.time_attr]),
                             float(result[self._metric])):
            self.stopped.append(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return (f"ToleranceASHA: rungs {self.rungs.milestones}, tolerance "
                f"{self.rungs.tolerance:.4g}, stopped {len(self.stopped)}")
