"""Selection rules, margin and resolution (msreid.evaluation.selection), on hand-made scores."""

from __future__ import annotations

import math

import pytest

from msreid.config import RunOptions
from msreid.evaluation import selection

# the two runs: the same epoch 0, epoch 1 moved by float rounding
W0 = [0.8719, 0.8665]
W1 = [0.8719, 0.8804]


def test_resolution_is_one_query_of_map():
    assert selection.resolution(8) == 0.125
    assert selection.resolution(1) == 1.0
    assert selection.resolution(0) == math.inf  # no query: nothing is resolved


def test_best_takes_the_highest_and_the_earliest_of_ties():
    assert selection.select([0.2, 0.5, 0.4], "best") == 1
    assert selection.select([0.5, 0.3, 0.5], "best") == 0
    assert selection.select([], "best") == -1
    # the issue: w0 keeps epoch 0, w1 takes epoch 1
    assert selection.select(W0, "best") == 0 and selection.select(W1, "best") == 1


def test_latest_near_best_takes_the_latest_within_the_tolerance():
    # max 0.5; the band [0.4, 0.5] holds epochs 1 (0.5) and 2 (0.45); epoch 3 (0.39) is out
    assert selection.select([0.2, 0.5, 0.45, 0.39], "latest_near_best", 0.1) == 2
    assert selection.select([0.2, 0.5, 0.45, 0.39], "latest_near_best", 0.0) == 1  # = best
    # the runs with 10 validation queries (0.1): both keep epoch 1
    assert selection.select(W0, "latest_near_best", 0.1) == 1
    assert selection.select(W1, "latest_near_best", 0.1) == 1


@pytest.mark.parametrize("rule", selection.RULES)
def test_rules_move_the_choice_only_to_the_newest_evaluation(rule):
    """What lets the loop keep one copy of the weights: prefix by prefix, the choice is the
    previous one or the newest evaluation."""
    scores = [0.30, 0.52, 0.50, 0.61, 0.55, 0.60, 0.20, 0.62]
    chosen = 0
    for n in range(1, len(scores) + 1):
        now = selection.select(scores[:n], rule, 0.05)
        assert now in (chosen, n - 1), (n, now, chosen)
        chosen = now
    assert chosen == 7


def test_margin_and_runner_up():
    assert selection.margin([0.2, 0.5, 0.45]) == pytest.approx(0.05)
    assert selection.runner_up([0.2, 0.5, 0.45]) == 2
    assert selection.margin([0.5, 0.3, 0.5]) == 0.0
    assert selection.runner_up([0.5, 0.3, 0.5]) == 2  # the tie that lost
    assert selection.margin([0.7]) == math.inf and selection.runner_up([0.7]) == -1
    assert selection.margin(W0) == pytest.approx(0.0054)


def test_within_noise_compares_the_margin_with_one_query():
    assert selection.within_noise(W0, 10)  # 0.54 points < 10 points
    assert selection.within_noise(W1, 10)  # 0.85 points < 10 points
    assert selection.within_noise(W1, 100)  # 0.85 points < 1 point
    assert not selection.within_noise(W1, 200)  # 0.85 points > 0.5 point
    assert not selection.within_noise([0.9], 10)  # one validation: nothing to confuse
    assert not selection.within_noise([0.5, 0.25], 4)  # exactly one query apart: resolved


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="latest_near_best"):
        selection.select([0.1], "smoothest")


def test_the_config_offers_exactly_the_rules():
    import dataclasses

    field = {f.name: f for f in dataclasses.fields(RunOptions)}["selection_rule"]
    assert field.metadata["choices"] == selection.RULES and field.default == "best"


def test_the_loop_records_margin_resolution_and_flag_from_its_history():
    from msreid.train.loop import selection_metrics

    history = [{"epoch": 0, "train/loss": 9.2, "val/mAP": 0.50, "val/queries": 8.0},
               {"epoch": 1, "train/loss": 9.1},  # not validated
               {"epoch": 2, "train/loss": 9.0, "val/mAP": 0.60, "val/queries": 8.0},
               {"epoch": 3, "train/loss": 8.9, "val/mAP": 0.55, "val/queries": 8.0}]
    got = selection_metrics(history, queries=99)
    # best 0.60 (epoch 2), runner-up 0.55 (epoch 3): margin 0.05 < 1/8 = 0.125
    assert got == {"selection/resolution": 0.125, "selection/val_queries": 8.0,
                   "selection/within_noise": 1.0, "selection/margin": pytest.approx(0.05),
                   "selection/runner_up_epoch": 3.0}
    history[3]["val/mAP"] = 0.45  # 0.10 apart: still within 0.125; runner-up epoch 0 (0.50)
    got = selection_metrics(history, queries=99)
    assert got["selection/within_noise"] == 1.0 and got["selection/runner_up_epoch"] == 0.0
    history[0]["val/mAP"] = 0.30  # 0.15 apart: resolved; runner-up epoch 3 (0.45)
    got = selection_metrics(history, queries=99)
    assert got["selection/within_noise"] == 0.0 and got["selection/runner_up_epoch"] == 3.0
    assert got["selection/margin"] == pytest.approx(0.15)
    one = selection_metrics([{"epoch": 0, "val/mAP": 0.5}], queries=4)  # an older history
    assert one == {"selection/resolution": 0.25, "selection/val_queries": 4.0,
                   "selection/within_noise": 0.0}
