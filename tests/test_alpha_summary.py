"""msreid.orchestration.alpha_summary: mean +- std per alpha, the candidates, the verdict (by hand)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from msreid.orchestration.alpha_summary import (
    candidates,
    per_alpha,
    to_markdown,
    verdict,
    verdict_sentence,
)


def trials(rows) -> pd.DataFrame:
    """rows: (phase, alpha, seed, status, val, test)."""
    return pd.DataFrame([{"phase": p, "alpha": a, "seed": s, "status": st, "epochs": 4,
                          "val/mAP": v, "test/mAP": t, "trial_id": f"t{i}"}
                         for i, (p, a, s, st, v, t) in enumerate(rows)])


SEARCH = [("search", 0.001, 0, "finished", 0.80, 0.50),
          ("search", 0.02, 0, "finished", 0.84, 0.52),
          ("search", 0.0003, 0, "finished", 0.82, 0.51),
          ("search", 0.09, 0, "stopped (ASHA)", 0.99, math.nan)]


def test_candidates_are_the_best_finished_alphas_then_the_paper():
    table = trials(SEARCH)
    assert candidates(table, 1) == [0.02, 0.001]  # the stopped 0.09 never counts
    assert candidates(table, 2) == [0.02, 0.0003, 0.001]
    paper_best = trials([("search", 0.001, 0, "finished", 0.9, 0.5), *SEARCH[1:]])
    assert candidates(paper_best, 1) == [0.02, 0.001]  # the paper's is always the reference


def test_mean_and_sample_std_per_alpha():
    table = trials(SEARCH + [("repeat", 0.02, 1, "finished", 0.80, 0.50),
                             ("repeat", 0.02, 2, "finished", 0.82, 0.48)])
    s = per_alpha(table).set_index("alpha")
    assert list(s.index) == [0.0003, 0.001, 0.02]  # finished only, increasing alpha
    assert s.loc[0.02, "seeds"] == 3
    assert s.loc[0.02, "val_mean"] == pytest.approx(0.82)  # (0.84 + 0.80 + 0.82) / 3
    assert s.loc[0.02, "val_std"] == pytest.approx(0.02)  # sqrt((0.02^2 + 0.02^2 + 0) / 2)
    assert s.loc[0.02, "test_mean"] == pytest.approx(0.50)
    assert math.isnan(s.loc[0.001, "val_std"])  # one seed


def _three_seeds(best_vals, paper_vals):
    rows = [("search", 0.02, 0, "finished", best_vals[0], 0.5),
            ("search", 0.001, 0, "finished", paper_vals[0], 0.5)]
    rows += [("repeat", 0.02, k, "finished", v, 0.5) for k, v in enumerate(best_vals[1:], 1)]
    rows += [("repeat", 0.001, k, "finished", v, 0.5) for k, v in enumerate(paper_vals[1:], 1)]
    return per_alpha(trials(rows))


def test_a_gap_the_seeds_spread_covers_is_no_significant_difference():
    # best 0.84 +- 0.03, paper 0.80 +- 0.02: gap 0.04 < spread 0.05
    v = verdict(_three_seeds([0.84, 0.81, 0.87], [0.80, 0.78, 0.82]), margin=0.01)
    assert v["best"]["alpha"] == 0.02 and v["other"]["alpha"] == 0.001
    assert v["gap"] == pytest.approx(0.04) and v["spread"] == pytest.approx(0.05)
    assert not v["significant"]
    text = verdict_sentence(v)
    assert "no significant difference" in text and "spread 5.0 covers it" in text
    assert "best alpha = 0.02: val mAP 84.0 +- 3.0 (3 seeds)" in text
    assert "the paper's 0.001: 80.0 +- 2.0 (3 seeds)" in text


def test_a_gap_beyond_spread_and_margin_is_significant():
    # best 0.90 +- 0.01, paper 0.80 +- 0.01: gap 0.10 > spread 0.02 and > margin 1/53
    v = verdict(_three_seeds([0.90, 0.89, 0.91], [0.80, 0.79, 0.81]), margin=1 / 53)
    assert v["significant"] and v["gap"] == pytest.approx(0.10)
    assert "difference +10.0 points: significant" in verdict_sentence(v)


def test_a_gap_below_one_query_is_no_significant_difference_even_without_spread():
    v = verdict(_three_seeds([0.81, 0.81, 0.81], [0.80, 0.80, 0.80]), margin=1 / 53)
    assert v["spread"] == pytest.approx(0.0, abs=1e-12) and not v["significant"]
    assert "below one validation query's worth of mAP, 1.9" in verdict_sentence(v)


def test_when_the_paper_is_best_it_is_compared_with_the_runner_up():
    v = verdict(_three_seeds([0.70, 0.70, 0.71], [0.80, 0.79, 0.81]), margin=0.01)
    assert v["best"]["alpha"] == 0.001 and v["other"]["alpha"] == 0.02
    assert "against the runner-up 0.02" in verdict_sentence(v)


def test_markdown_marks_best_and_paper_and_ends_with_the_verdict():
    table = trials(SEARCH)
    summary = per_alpha(table)
    v = verdict(summary, 0.01)
    text = to_markdown(table, summary, v)
    assert "| 2.00e-02 **(best)** | 1 | 84.0 | 52.0 |" in text
    assert "| 1.00e-03 (paper) | 1 | 80.0 | 50.0 |" in text
    assert "| search | 9.00e-02 | 0 | stopped (ASHA) | 4 | 99.0 | n/a |" in text
    assert text.rstrip().endswith("(fewer than 2 seeds on a side)")
