"""The saved views of the MLflow UI per table and per alpha search (msreid.tracking.views): which
runs their filters select in a real SQLite store, what they group by and chart, and the paper
values and seed spreads a benchmark logs on its trial runs for them. The browser side is
tests/test_mlflow_ui.py."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from msreid.tracking import comparison, runs, views
from msreid.tracking.store import ensure_experiment

T3 = {"RGB one-stream": [("table3", "RGB one-stream", "R50")],
      "MSN": [("table3", "RGB-N-T MSN", "R50"), ("table5", "baseline (MSN)", "RGBNT100")],
      "HAMNet": [("table3", "RGB-N-T HAMNet", "R50"), ("table5", "+ L_hsc + L_caid", "RGBNT100")],
      "hsc": [("table5", "+ L_hsc", "RGBNT100")],
      "caid": [("table5", "+ L_caid", "RGBNT100")]}


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "views")
    return exp, runs.client_for(uri)


def _benchmark(client, exp, name: str, seeds=(0, 1), mAPs=None) -> tuple[str, dict]:
    """A parent with one child per (trial, seed) of ``T3``, tagged as trials tag them."""
    parent, _ = runs.get_or_create_parent(client, exp, name)
    kids = {}
    for trial, cells in T3.items():
        for seed in seeds:
            tags = {runs.TAG_BENCHMARK: name, runs.TAG_SEED: str(seed),
                    runs.TAG_CELL: runs.cell_key(cells[0]), **runs.row_tags(cells),
                    runs.TAG_CELLS: __import__("json").dumps(cells)}
            kid, _ = runs.get_or_create_child(client, exp, parent, f"{trial}-{seed}",
                                              f"{trial} s{seed}", tags)
            if mAPs:
                runs.log_metrics(client, kid, {"test/mAP": mAPs[trial][seed]})
            client.set_terminated(kid)
            kids[(trial, seed)] = kid
    return parent, kids


def test_row_tags():
    assert runs.row_tags(T3["MSN"]) == {"msreid.row.table3": "RGB-N-T MSN / R50",
                                        "msreid.row.table5": "baseline (MSN) / RGBNT100"}
    assert runs.row_tags([("t", "a", "x"), ("t", "b", "x")]) == {"msreid.row.t": "a / x; b / x"}


def test_table_filters_select_exactly_their_rows(store):
    exp, client = store
    _benchmark(client, exp, "older")  # another benchmark in the same experiment
    parent, kids = _benchmark(client, exp, "b1")
    for table, trials in (("table5", ["MSN", "HAMNet", "hsc", "caid"]),
                          ("table3", ["RGB one-stream", "MSN", "HAMNet"])):
        state = views.table_view_state("b1", table, ("mAP",), table)
        found = client.search_runs([exp], state["searchFilter"], max_results=100)
        assert sorted(r.info.run_id for r in found) == sorted(
            kids[(t, s)] for t in trials for s in (0, 1))
        assert parent not in {r.info.run_id for r in found}
        # Grouped by the row tag: one group per row of the table, named by the row.
        group_tag = state["groupBy"]["groupByKeys"][0]["groupByData"]
        groups = {r.data.tags[group_tag] for r in found}
        assert len(groups) == len(trials)
    assert groups == {"RGB one-stream / R50", "RGB-N-T MSN / R50", "RGB-N-T HAMNet / R50"}
    # Ordered by start time, MLflow's UI would fetch the children's parent and list it.
    assert state["orderByKey"] != "attributes.start_time"


def test_table_view_cards():
    state = views.table_view_state("b1", "table5", ("mAP", "R1"), "Table 5",
                                   metric_keys=["test/mAP", "paper/table3/mAP", "lr", "epoch"])
    cards = [c for c in state["compareRunCharts"] if not c["deleted"]]
    assert [c["type"] for c in cards] == ["DIFFERENCE", "BAR", "BAR", "LINE", "LINE"]
    assert cards[1]["selectedMetricKeys"] == ["test/mAP", "paper/table5/mAP", "seeds/mAP_min",
                                              "seeds/mAP_max"]
    assert [(c["metricKey"], c["xAxisKey"], c["selectedXAxisMetricKey"]) for c in cards[3:]] == [
        ("val/mAP", "metric", "epoch"), ("train/loss", "metric", "epoch")]
    # Every other metric of the runs is named by a deleted card, so the UI generates no chart
    # (and no section) for it.
    hidden = sorted(c["metricKey"] for c in state["compareRunCharts"] if c["deleted"])
    assert hidden == ["epoch", "lr", "paper/table3/mAP"]
    assert {c["metricSectionId"] for c in cards} == {s["uuid"] for s in state["compareRunSections"]}
    assert "metrics.`paper/table5/mAP`" in state["selectedColumns"]


def test_alpha_view():
    state = views.alpha_view_state("tune-alpha-1")
    assert state["searchFilter"] == ("tags.`msreid.kind` = 'trial' and tags.`msreid.benchmark` = "
                                     "'tune-alpha-1'")
    scatter, parallel = state["compareRunCharts"]
    assert (scatter["xaxis"], scatter["yaxis"]) == ({"key": "loss.alpha", "type": "PARAM"},
                                                    {"key": "best_val/mAP", "type": "METRIC"})
    assert parallel["selectedParams"] == ["loss.alpha"]
    assert views.quote("it's") == "'it\\'s'"


def test_paper_values_and_seed_spread_on_the_trials(store):
    from msreid.grid import Level, Suite, TableSpec

    exp, client = store
    mAPs = {t: {0: 40.0 + i, 1: 44.0 + i} for i, t in enumerate(T3)}
    parent, kids = _benchmark(client, exp, "b1", mAPs=mAPs)
    one, _ = runs.get_or_create_child(client, exp, parent, "solo", "solo", {
        runs.TAG_CELL: "table5 / + L_caid / X", runs.TAG_CELLS: '[["table5", "+ L_caid", "X"]]'})
    runs.log_metrics(client, one, {"test/mAP": 10.0})
    client.set_terminated(one)

    def spec(name):
        return TableSpec(name=name, title=name, metrics=("mAP",), row_label="Model",
                         column_label="Col", rows=(Level(name="r"),), columns=(Level(name="c"),))

    suite = Suite(name="s", preset="p", tables=(spec("table3"), spec("table5")))
    frames = {"table3": pd.DataFrame({"Model": ["RGB-N-T MSN", "RGB one-stream"],
                                      "Col": ["R50", "R50"], "mAP_paper": [55.5, math.nan]}),
              "table5": pd.DataFrame({"Model": ["baseline (MSN)", "+ L_caid"],
                                      "Col": ["RGBNT100", "X"], "mAP_paper": [56.0, 61.0]})}
    assert comparison.log_cell_references(client, exp, parent, suite, frames) == 11
    msn = client.get_run(kids[("MSN", 1)]).data.metrics
    # MSN's seeds scored 41 and 45: min 41, max 45, sample std sqrt(((41-43)^2 + (45-43)^2) / 1).
    assert {k: v for k, v in msn.items() if k != "test/mAP"} == pytest.approx({
        "paper/table3/mAP": 55.5, "paper/table5/mAP": 56.0, "seeds/mAP_min": 41.0,
        "seeds/mAP_max": 45.0, "seeds/mAP_std": math.sqrt(8)})
    # No paper number for RGB one-stream here; one seed: no spread.
    assert "paper/table3/mAP" not in client.get_run(kids[("RGB one-stream", 0)]).data.metrics
    assert client.get_run(one).data.metrics == {"test/mAP": 10.0, "paper/table5/mAP": 61.0}
    assert [m.step for m in client.get_metric_history(kids[("MSN", 1)], "seeds/mAP_std")] == [0]


def test_table_figure(tmp_path):
    from PIL import Image

    from msreid.tracking.figures import table_figure

    frame = pd.DataFrame({"Model": ["a", "b"], "Col": ["x", "x"], "mAP": [40.0, 50.0],
                          "mAP_std": [2.0, math.nan], "mAP_paper": [45.0, math.nan]})
    out = table_figure(frame, "Model", "Col", ["mAP"], "T", tmp_path / "t.png")
    assert Image.open(out).size[0] > 300
