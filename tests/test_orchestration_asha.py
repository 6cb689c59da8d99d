"""msreid.orchestration.asha: ASHA's rungs and cutoff, stopping only beyond a tolerance (by hand)."""

from __future__ import annotations

import pytest

from msreid.orchestration.asha import Rungs


@pytest.mark.parametrize("grace, rf, max_t, want", [(1, 2, 4, [1, 2]), (1, 2, 5, [1, 2, 4]),
                                                    (2, 3, 20, [2, 6, 18]), (4, 2, 4, [])])
def test_rungs_stop_before_the_last_iteration_only(grace, rf, max_t, want):
    assert Rungs(grace, rf, max_t, 0.0).milestones == want


def test_a_trial_within_the_tolerance_of_the_cutoff_continues():
    rungs = Rungs(1, 2, 4, tolerance=0.02)
    assert rungs.decide("a", 1, 0.50) is False  # first at the rung: no cutoff yet
    # cutoff = 50th percentile of [0.50] = 0.50; 0.49 is not below 0.50 - 0.02
    assert rungs.decide("b", 1, 0.49) is False
    # cutoff = median of [0.50, 0.49] = 0.495; 0.40 < 0.475: stop
    assert rungs.decide("c", 1, 0.40) is True
    assert rungs.cutoff(1) == pytest.approx(0.49)  # median of [0.50, 0.49, 0.40]


def test_plain_asha_would_have_stopped_on_the_fifth_decimal():
    # the rung after epoch 1: every trial at 0.52285-0.52290
    values = {"t1": 0.52290, "t2": 0.52285, "t3": 0.52288, "t4": 0.52286}
    plain, tolerant = Rungs(1, 2, 4, 0.0), Rungs(1, 2, 4, 1 / 53)  # 53 validation queries
    assert [plain.decide(t, 1, v) for t, v in values.items()] == [False, True, False, True]
    assert [tolerant.decide(t, 1, v) for t, v in values.items()] == [False] * 4


def test_each_rung_decides_once_per_trial_at_the_highest_rung_reached():
    rungs = Rungs(1, 2, 8, tolerance=0.0)  # rungs 1, 2, 4
    assert rungs.decide("a", 1, 0.9) is False
    assert rungs.decide("b", 1, 0.1) is True
    assert rungs.decide("b", 1, 0.1) is False  # already recorded at rung 1: no second decision
    assert rungs.decide("a", 3, 0.9) is False  # iteration 3: rung 2 (its first value)
    assert set(rungs.recorded[2]) == {"a"} and rungs.recorded[4] == {}
    assert rungs.decide("c", 2, 0.5) is True  # cutoff at rung 2 = 0.9
