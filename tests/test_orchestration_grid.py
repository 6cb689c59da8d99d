"""Grid YAML -> cells -> trials: counts, merge order, dedup, stable keys, errors."""

from pathlib import Path

import pytest

from msreid.config import config_from_dict, config_to_dict, load_config
from msreid.errors import UserError
from msreid.grid import (
    expand_cells,
    expand_trials,
    load_suite,
    load_table,
    suite_from_dict,
    suite_to_dict,
    trial_key,
)

GRIDS = Path(__file__).resolve().parents[1] / "experiments" / "grids"


def test_table_grids_have_the_papers_shape():
    t2 = load_table(GRIDS / "table2_rgbn300.yaml")
    t3 = load_table(GRIDS / "table3_rgbnt100.yaml")
    t5 = load_table(GRIDS / "table5_ablation.yaml")
    assert len(expand_cells(t2)) == 5 * 4   # 5 backbones x 4 rows
    assert len(expand_cells(t3)) == 5 * 7   # 5 backbones x 7 rows
    assert len(expand_cells(t5)) == 2 * 4   # 2 datasets x 4 models


def test_every_paper_grid_cell_points_at_a_published_number():
    from msreid.tracking.paper import load_paper_tables

    published = load_paper_tables()
    for name in ("table2_rgbn300.yaml", "table3_rgbnt100.yaml", "table5_ablation.yaml"):
        for cell in expand_cells(load_table(GRIDS / name)):
            assert cell.paper in published, cell


def test_paper_suite_merges_shared_cells():
    suite = load_suite(GRIDS / "paper.yaml")
    trials = expand_trials(suite)
    # Distinct configurations: 20 (T2) + 35 (T3) + 8 (T5) - 4 shared with T2/T3
    # (baseline and full model on both datasets) + 6 (test-feature comparison, own
    # trials) = 65, times 3 seeds = 195.
    assert len(trials) == 65 * 3
    shared = [t for t in trials if len(t.cells) == 2]
    assert len(shared) == 4 * 3
    assert {c[0] for t in shared for c in t.cells} == {"table2", "table3", "table5"}
    # Only the RGBNT100 manifest given: Table 3 (35) + its Table 5 column (4 - 2 shared) + 6.
    assert len(expand_trials(suite, datasets={"rgbnt100"})) == (35 + 2 + 6) * 3


def test_smoke_suite():
    suite = load_suite(GRIDS / "smoke.yaml")
    trials = expand_trials(suite)
    # Table 3 with one backbone: 7 rows; Table 5 RGBNT100: 4 rows, 2 shared with Table 3.
    assert len(trials) == 7 + 2
    assert all(t.overrides["model.backbone"] == "test_resnet" for t in trials)
    assert suite.checks[0].row == "RGB-N-T MSN"


def test_merge_order_and_keys(tmp_path):
    (tmp_path / "t.yaml").write_text(
        "name: t\ndataset: d\nset: {a: 0, b: 0, c: 0}\n"
        "columns: [{name: C, set: {b: 1, c: 1}}]\n"
        "rows: [{name: R, set: {c: 2}}, {name: S, dataset: e}]\n")
    (tmp_path / "s.yaml").write_text("name: s\npreset: smoke\nseeds: [0, 1]\n"
                                     "tables: [t.yaml]\nset: {a: 9}\n")
    suite = load_suite(tmp_path / "s.yaml")
    cells = expand_cells(suite.tables[0], suite.set)
    # table < column < row < suite: a from suite, b from column, c from row.
    assert cells[0].overrides == {"a": 9, "b": 1, "c": 2}
    assert cells[0].dataset == "d" and cells[1].dataset == "e"
    trials = expand_trials(suite)
    assert [t.key for t in trials] == [
        trial_key("d", {"a": 9, "b": 1, "c": 2}, 0), trial_key("d", {"a": 9, "b": 1, "c": 2}, 1),
        trial_key("e", {"a": 9, "b": 1, "c": 1}, 0), trial_key("e", {"a": 9, "b": 1, "c": 1}, 1)]
    # The key depends on content only, not on key order.
    assert trial_key("d", {"b": 1, "a": 9}, 0) == trial_key("d", {"a": 9, "b": 1}, 0)
    assert trial_key("d", {"a": 1}, 0) != trial_key("d", {"a": 1}, 1)
    assert suite_from_dict(suite_to_dict(suite)) == suite


def test_user_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ncolumns: [{name: C}]\n")
    with pytest.raises(UserError, match="bad.yaml.*rows"):
        load_table(bad)
    bad.write_text("name: t\ncolumns: [{name: C, sett: {}}]\nrows: [R]\n")
    with pytest.raises(UserError, match="unknown key"):
        load_table(bad)
    bad.write_text("name: t\ncolumns: [C]\nrows: [R]\n")
    with pytest.raises(UserError, match="no `dataset`"):
        expand_cells(load_table(bad))
    (tmp_path / "s.yaml").write_text("name: s\npreset: p\ntables: [{grid: bad.yaml, columns: [X]}]\n")
    with pytest.raises(UserError, match="no column 'X'"):
        load_suite(tmp_path / "s.yaml")


def test_restrict_suite_to_the_given_data():
    from msreid.grid import restrict_suite

    suite = load_suite(GRIDS / "paper.yaml")
    only, notes = restrict_suite(suite, {"rgbnt100"})
    # Table 2 (RGBN300) dropped; Table 5 keeps its RGBNT100 column only.
    assert [t.name for t in only.tables] == ["table3", "table5", "embedding"]
    assert [c.name for c in only.table("table5").columns] == ["RGBNT100"]
    assert notes == ["table2 skipped: no data for rgbn300",
                     "table5: cells on rgbn300 left out (no data)"]
    assert len(expand_trials(only)) == (35 + 2 + 6) * 3
    same, notes = restrict_suite(suite, {"rgbnt100", "rgbn300"})
    assert same == suite and notes == []


def test_embedding_table_compares_the_three_test_features_as_columns():
    table = load_table(GRIDS / "embedding_rgbnt100.yaml")
    assert [c.set["model.embedding"] for c in table.columns] == ["sum", "cam_official", "cam_weighted"]
    for cell in expand_cells(table):  # every cell is a valid training config
        flat = {**config_to_dict(load_config(None)), **cell.overrides, "data.manifest": "x"}
        config_from_dict(flat)


def test_robustness_suite_pairs_msn_with_and_without_dropout():
    from msreid.orchestration.benchmark import BenchmarkOptions, load_benchmark_suite, prepare_trials

    suite = load_suite(GRIDS / "robustness.yaml")
    assert suite.synth == {"variant": "hard"} and len(suite.seeds) >= 3
    (check,) = suite.matrix_checks
    assert (check.table, check.row, check.against) == ("robustness", "MSN + modality dropout", "MSN")
    assert suite_from_dict(suite_to_dict(suite)) == suite  # the parent's suite.json keeps it
    opts = BenchmarkOptions(preset="robustness")
    _, _, trials = prepare_trials(opts, load_benchmark_suite(opts), {"rgbnt100"})  # every config valid
    assert len(trials) == 2 * len(suite.seeds)
    drops = sorted({t.overrides.get("data.modality_dropout", 0.0) for t in trials})
    assert drops[0] == 0.0 and drops[1] > 0 and {t.overrides["loss.ablation"] for t in trials} == {"msn"}
