"""Table assembly: mean +- std over seeds beside the paper's numbers, hand-computed."""

import math
from pathlib import Path

import pytest

from msreid.grid import Check, Level, Suite, TableSpec, expand_cells, load_suite
from msreid.tracking.tables import (
    TrialResult,
    assemble_suite,
    assemble_table,
    run_checks,
    suite_markdown,
    to_csv,
    to_html,
    to_markdown,
)

TABLE = TableSpec(
    name="table3", title="T3", paper_table="table3", metrics=("mAP", "R1"),
    row_label="Modality", column_label="Backbone",
    columns=(Level(name="R50", paper_backbone="ResNet50"),),
    rows=(Level(name="RGB", paper_row="RGB one-stream", set={"s": 1}),
          Level(name="RNT", paper_row="RGB-N-T MSN", set={"s": 3})),
    base=Level(name="", dataset="rgbnt100"))
RGB, RNT = ("table3", "RGB", "R50"), ("table3", "RNT", "R50")


def results():
    return [TrialResult(cells=(RGB,), seed=0, metrics={"test/mAP": 40.0, "test/R1": 50.0}),
            TrialResult(cells=(RGB,), seed=1, metrics={"test/mAP": 44.0, "test/R1": 60.0}),
            TrialResult(cells=(RGB,), seed=2, metrics={"test/mAP": 48.0, "test/R1": 70.0}),
            TrialResult(cells=(RNT,), seed=0, metrics={"test/mAP": 61.0})]


def test_mean_std_paper_and_difference():
    frame = assemble_table(TABLE, results())
    rgb = frame.iloc[0]
    # mAP over seeds 40, 44, 48 (%): mean 44; sample std sqrt((16+0+16)/2) = 4.
    assert rgb["mAP"] == pytest.approx(44.0)
    assert rgb["mAP_std"] == pytest.approx(4.0)
    assert rgb["mAP_paper"] == 41.0                      # Table 3, ResNet50, RGB one-stream
    assert rgb["mAP_diff"] == pytest.approx(44.0 - 41.0)
    # R1 over 50, 60, 70: mean 60, std sqrt((100+0+100)/2) = 10; paper 58.5.
    assert (rgb["R1"], rgb["R1_std"], rgb["R1_diff"]) == pytest.approx((60.0, 10.0, 1.5))
    assert rgb["seeds"] == 3
    rnt = frame.iloc[1]
    # One seed: no std; R1 was never reported: n/a.
    assert rnt["mAP"] == pytest.approx(61.0) and math.isnan(rnt["mAP_std"])
    assert rnt["mAP_diff"] == pytest.approx(61.0 - 60.5)
    assert math.isnan(rnt["R1"])


def test_renderings():
    frame = assemble_table(TABLE, results())
    md = to_markdown(TABLE, frame)
    assert "| Modality | Backbone | seeds | mAP | mAP paper | ΔmAP | R1 | R1 paper | ΔR1 |" in md
    assert "| RGB | R50 | 3 | 44.0 ± 4.0 | 41.0 | +3.0 | 60.0 ± 10.0 | 58.5 | +1.5 |" in md
    assert "| RNT | R50 | 1 | 61.0 | 60.5 | +0.5 | n/a | 82.6 | n/a |" in md
    assert "<td>44.0 ± 4.0</td>" in to_html(TABLE, frame)
    csv = to_csv(frame).splitlines()
    assert csv[0].startswith("Modality,Backbone,seeds,backbone,selection,mAP,mAP_std,mAP_paper,mAP_diff")
    assert csv[1].startswith("RGB,R50,3,?,validation,44.0000,4.0000,41.0000,3.0000")


def test_caption_states_protocol_backbone_and_seeds_as_trained():
    smoke = {"model.backbone": "test_resnet", "run.selection": "validation"}
    runs = [r.__class__(r.cells, r.seed, r.metrics, smoke) for r in results()]
    md = to_markdown(TABLE, assemble_table(TABLE, runs))
    assert md.splitlines()[0] == (
        "**T3; checkpoint selected on validation ids held out of the train ids; backbone trained: "
        "test_resnet; 1-3 seeds per cell**")
    assert "ResNet50" not in md and "five backbones" not in md
    final = [r.__class__(r.cells, r.seed, r.metrics, {"model.backbone": "resnet50",
                                                      "run.selection": "final"})
             for r in results() if r.seed == 0]
    html = to_html(TABLE, assemble_table(TABLE, final))
    assert ("<h3>T3; trained on all train ids, final checkpoint (the paper&#x27;s protocol); "
            "backbone trained: resnet50; 1 seed per cell</h3>") in html
    assert to_markdown(TABLE, assemble_table(TABLE, [])).startswith("**T3; no finished trials**")


def test_smoke_suite_titles_never_name_the_papers_backbones():
    suite = load_suite(Path(__file__).resolve().parents[1] / "experiments" / "grids" / "smoke.yaml")
    trained = {"model.backbone": "test_resnet", "run.selection": "validation"}
    runs = [TrialResult(cells=(c.id,), seed=0, metrics={"test/mAP": 0.5, "test/R1": 0.6},
                        config=trained) for t in suite.tables for c in expand_cells(t, suite.set)]
    text = suite_markdown(suite, assemble_suite(suite, runs))
    captions = [line for line in text.splitlines() if line.startswith("**")]
    assert len(captions) == 2
    for line in captions:
        assert "backbone trained: test_resnet; 1 seed per cell" in line
        assert "ResNet50" not in line and "five backbones" not in line


def test_checks():
    suite = Suite(name="s", preset="p", tables=(TABLE,),
                  checks=(Check(table="table3", metric="mAP", row="RNT", above=("RGB",)),))
    frame = assemble_table(TABLE, results())
    (ok, msg), = run_checks(suite, {"table3": frame})
    assert ok and msg.endswith("PASS")  # 61.0 > 44.0
    worse = results()[:3] + [TrialResult(cells=(RNT,), seed=0, metrics={"test/mAP": 43.0})]
    (ok, msg), = run_checks(suite, {"table3": assemble_table(TABLE, worse)})
    assert not ok and "43.0 > RGB 44.0: FAIL" in msg


def test_a_cell_selected_within_noise_is_marked():
    """Seeds 0 and 2 of RGB report selection/within_noise = 1: the cell says "2/3", the tables
    get the column and the note; RNT (flag 0) stays unmarked; a table without it is unchanged."""
    flags = {0: 1.0, 1: 0.0, 2: 1.0}
    marked = [TrialResult(r.cells, r.seed, {**r.metrics, "selection/within_noise":
                                            flags[r.seed] if r.cells == (RGB,) else 0.0})
              for r in results()]
    frame = assemble_table(TABLE, marked)
    assert list(frame["noisy_seeds"]) == [2, 0]
    md = to_markdown(TABLE, frame)
    assert "| Modality | Backbone | seeds | mAP | mAP paper | ΔmAP | R1 | R1 paper | ΔR1 | selection |" in md
    assert ("| RGB | R50 | 3 | 44.0 ± 4.0 | 41.0 | +3.0 | 60.0 ± 10.0 | 58.5 | +1.5 "
            "| within noise in 2/3 seeds |") in md
    assert "| RNT | R50 | 1 | 61.0 | 60.5 | +0.5 | n/a | 82.6 | n/a |  |" in md
    assert "*selection within noise: in that many seeds the best and the runner-up" in md
    assert "<td>within noise in 2/3 seeds</td>" in to_html(TABLE, frame)
    assert "selection within noise" in to_html(TABLE, frame)
    assert to_csv(frame).splitlines()[1].endswith(",2")
    plain = assemble_table(TABLE, results())
    assert list(plain["noisy_seeds"]) == [0, 0]
    assert "selection" not in to_markdown(TABLE, plain).split("\n")[2]
    assert "within noise" not in to_markdown(TABLE, plain) + to_html(TABLE, plain)
