"""Comparing cells in the MLflow UI: a reduced benchmark (the stand-in fit of
tests/orchestration_fakes.py, the real Tune + MLflow logging path), what it leaves in MLflow, and
headless Chromium on the landing link served by `msreid ui --serve` (what `make ui` runs).

The browser test opens every link `msreid ui` prints, each in a fresh tab: the landing view, each
table's saved view (its rows as labelled groups, ours beside the paper, per-epoch curves) and a
reduced alpha search's view. It needs Debian's `chromium` and Playwright; without them it is
skipped with the reason and how to install them. README's screenshots are taken by the same
command it runs last (`python tests/mlflow_browser.py`), on a real smoke run's store.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import ray.cloudpickle

import orchestration_fakes
from mlflow_browser import missing_browser, mlflow_ui, printed_links
from msreid.tracking.ui import run_url
from orchestration_fakes import expected_map

ray.cloudpickle.register_pickle_by_value(orchestration_fakes)

ROOT = Path(__file__).resolve().parents[1]
SUITE = """
name: ui
preset: {preset}
seeds: [0]
tables: [t3.yaml, t5.yaml]
set: {{model.backbone: test_resnet, optim.epochs: 2}}
trial_resources: [{{CPU: 1}}]
max_concurrent_trials: 2
max_failures: 0
"""
T3 = """
name: table3
title: "Table 3 (mini): mAP/R1 by modality"
paper_table: table3
dataset: rgbnt100
row_label: Modality
column_label: Backbone
columns: [{name: tiny, paper_backbone: ResNet50, set: {model.backbone: test_resnet}}]
rows:
  - {name: RGB one-stream, paper_row: RGB one-stream, set: {data.spectra: [rgb], loss.ablation: one_stream}}
  - {name: RGB-N-T MSN, paper_row: RGB-N-T MSN, set: {data.spectra: [rgb, nir, tir], loss.ablation: msn}}
  - {name: RGB-N-T HAMNet, paper_row: RGB-N-T HAMNet,
     set: {data.spectra: [rgb, nir, tir], loss.ablation: hamnet}}
"""
# Table 5's baseline and full model are Table 3's MSN and HAMNet trials (identical settings).
T5 = """
name: table5
title: "Table 5 (mini): ablation"
paper_table: table5
paper_backbone: ResNet50
metrics: [mAP, R1]
row_label: Model
column_label: Dataset
columns: [{name: RGBNT100, dataset: rgbnt100, set: {data.spectra: [rgb, nir, tir]}}]
rows:
  - {name: baseline (MSN), paper_row: baseline (MSN), set: {loss.ablation: msn}}
  - {name: + L_hsc, paper_row: + L_hsc, set: {loss.ablation: msn+hsc}}
  - {name: + L_caid, paper_row: + L_caid, set: {loss.ablation: msn+caid}}
  - {name: + L_hsc + L_caid, paper_row: + L_hsc + L_caid, set: {loss.ablation: hamnet}}
"""
# (run name, msreid.cell, fake test mAP as a fraction) of the five trials.
EXPECTED = {
    "RGB one-stream test_resnet · s0 · table3": ("table3 / RGB one-stream / tiny",
                                                 expected_map(1, "one_stream", 0)),
    "RGB-N-T MSN test_resnet · s0 · table3+table5": ("table3 / RGB-N-T MSN / tiny",
                                                     expected_map(3, "msn", 0)),
    "RGB-N-T HAMNet test_resnet · s0 · table3+table5": ("table3 / RGB-N-T HAMNet / tiny",
                                                        expected_map(3, "hamnet", 0)),
    "RGB-N-T MSN+HSC test_resnet · s0 · table5": ("table5 / + L_hsc / RGBNT100",
                                                  expected_map(3, "msn+hsc", 0)),
    "RGB-N-T MSN+CAID test_resnet · s0 · table5": ("table5 / + L_caid / RGBNT100",
                                                   expected_map(3, "msn+caid", 0)),
}
# The rows each table's view shows: label -> (fake test mAP, the paper's mAP on RGBNT100 with
# ResNet50, from msreid/reference/paper_tables.yaml).
ROWS = {
    "table3": {"RGB one-stream / tiny": (expected_map(1, "one_stream", 0), 41.0),
               "RGB-N-T MSN / tiny": (expected_map(3, "msn", 0), 60.5),
               "RGB-N-T HAMNet / tiny": (expected_map(3, "hamnet", 0), 64.1)},
    "table5": {"baseline (MSN) / RGBNT100": (expected_map(3, "msn", 0), 60.5),
               "+ L_hsc / RGBNT100": (expected_map(3, "msn+hsc", 0), 61.4),
               "+ L_caid / RGBNT100": (expected_map(3, "msn+caid", 0), 61.4),
               "+ L_hsc + L_caid / RGBNT100": (expected_map(3, "hamnet", 0), 64.1)},
}
ALPHAS = 3  # trials of the reduced alpha search


@pytest.fixture(scope="module")
def bench(tmp_path_factory, ray_session):
    """One reduced benchmark (5 trials, 1 seed, 2 epochs) with --register, and a reduced alpha
    search (3 trials, stand-in fit) in the same store."""
    from msreid.orchestration.alpha import AlphaOptions, run_alpha_search
    from msreid.orchestration.benchmark import BenchmarkOptions, run_benchmark
    from msreid.orchestration.datasets import synthetic_manifest

    tmp = tmp_path_factory.mktemp("ui")
    manifest = synthetic_manifest({"ids": 4, "cameras": 2, "tuples_per_id": 3, "height": 16,
                                   "width": 32}, root=tmp / "cache")
    (tmp / "t3.yaml").write_text(T3)
    (tmp / "t5.yaml").write_text(T5)
    (tmp / "ui.yaml").write_text(SUITE.format(preset=ROOT / "experiments" / "presets" / "smoke.yaml"))
    opts = BenchmarkOptions(preset=str(tmp / "ui.yaml"), data=(f"rgbnt100={manifest}",),
                            tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment="msreid-benchmark",
                            storage_path=str(tmp / "results"), fit=orchestration_fakes.fit_with_checkpoint,
                            figures={"cam_queries": 0, "ranked_list": False}, register=True,
                            verbose=0)
    out = run_benchmark(opts)
    assert out.errors == []
    alpha = run_alpha_search(AlphaOptions(
        data=(manifest,), num_samples=ALPHAS, seed=0,
        overrides=("optim.epochs=2", "data.image_size=[16,32]", "data.batch_size=4"),
        grace_period=2, reduction_factor=2, probe_steps=0, probe_batches=1, repeat_top=0, repeat_seeds=0,
        max_concurrent_trials=2, tracking_uri=out.tracking_uri, experiment="msreid-alpha",
        storage_path=str(tmp / "results"), fit=orchestration_fakes.fit, verbose=0))
    return tmp, manifest, out, alpha


def _children(out):
    from msreid.tracking import runs

    client = runs.client_for(out.tracking_uri)
    return client, runs.children(client, out.experiment_id, out.parent_run_id)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_trial_runs_compare_as_cells(bench):
    from msreid.data.schema import manifest_info
    from msreid.tracking import entities

    tmp, manifest, out, _ = bench
    client, kids = _children(out)
    assert sorted(k.info.run_name for k in kids) == sorted(EXPECTED)
    digest = manifest_info(manifest).fingerprint[:36]
    for kid in kids:
        cell, score = EXPECTED[kid.info.run_name]
        tags, run_id = kid.data.tags, kid.info.run_id
        assert tags["msreid.cell"] == cell and tags["msreid.units"] == "percent"
        assert tags["mlflow.note.content"].startswith(f"**Cell** {cell}")
        assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"])
        assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
        # Final metrics once, in %, at step 0 (bars); curves keep their epochs; no `epoch` metric.
        assert kid.data.metrics["test/mAP"] == pytest.approx(100 * score, abs=1e-4)
        for key in ("test/mAP", "test/R1", "best_val/mAP", "best_epoch"):
            assert [m.step for m in client.get_metric_history(run_id, key)] == [0]
        val = client.get_metric_history(run_id, "val/mAP")
        assert sorted((m.step, round(m.value, 4)) for m in val) == [
            (0, round(100 * score / 2, 4)), (1, round(100 * score, 4))]
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "epoch")] == [
            (0, 0.0), (1, 1.0)]  # the curves' x axis in the table views
        inputs = {i.tags[0].value: i.dataset for i in kid.inputs.dataset_inputs}
        assert {k: (d.name, d.digest) for k, d in inputs.items()} == {
            s: (f"rgbnt100/{s}", digest) for s in ("train", "validation", "test")}
        (model_out,) = kid.outputs.model_outputs
        model = client.get_logged_model(model_out.model_id)
        assert entities.checkpoint_of(client, model.model_id).endswith("checkpoint_final")
        linked = {m.key: (m.value, m.dataset_name) for m in model.metrics}
        assert linked["test/mAP"] == (kid.data.metrics["test/mAP"], "rgbnt100/test")
        assert linked["best_val/mAP"][1] == "rgbnt100/validation"
        assert model.tags["mlflow.note.content"].startswith(f"**Cell** {cell}")
        assert "epoch 1" in model.tags["mlflow.note.content"]  # the fake selects the last epoch
        # The paper's value of each of its rows, for the table views (one seed: no spread).
        for table, rows in ROWS.items():
            label = tags.get(f"msreid.row.{table}")
            assert (label in rows) == (f"paper/{table}/mAP" in kid.data.metrics)
            if label:
                assert kid.data.metrics[f"paper/{table}/mAP"] == rows[label][1]
        assert not any(k.startswith("seeds/") for k in kid.data.metrics)
        table = json.loads(Path(client.download_artifacts(run_id, "tables/missing_modality.json"))
                           .read_text())
        assert table["data"][1][:3] == ["half", "one", round(50 * score, 2)]
    # Registered: each cell's (only) seed.
    names = {m.name for m in client.search_registered_models()}
    assert names == {"msreid-table3-RGB-one-stream-tiny", "msreid-table3-RGB-N-T-MSN-tiny",
                     "msreid-table3-RGB-N-T-HAMNet-tiny", "msreid-table5-baseline-MSN-RGBNT100",
                     "msreid-table5-+-L_hsc-RGBNT100", "msreid-table5-+-L_caid-RGBNT100",
                     "msreid-table5-+-L_hsc-+-L_caid-RGBNT100"}
    # Nothing outside the test's directory.
    location = client.get_experiment(out.experiment_id).artifact_location
    assert location.startswith(tmp.as_uri())


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_parent_holds_every_cell(bench):
    from msreid.tracking import runs

    tmp, manifest, out, _ = bench
    client = runs.client_for(out.tracking_uri)
    parent = client.get_run(out.parent_run_id)
    metrics = parent.data.metrics
    # One seed: the mean is the trial's value and no std is logged.
    assert metrics["table3/RGB one-stream/tiny/mAP"] == pytest.approx(
        100 * expected_map(1, "one_stream", 0), abs=1e-4)
    assert metrics["table5/plus L_caid/RGBNT100/R1"] == pytest.approx(
        100 * (expected_map(3, "msn+caid", 0) + 0.1), abs=1e-4)
    assert not any(k.endswith("_std") for k in metrics)
    assert len(metrics) == 3 * 4 + 4 * 2  # table3: 3 cells x 4 metrics; table5: 4 cells x 2
    arts = {a.path for a in client.list_artifacts(out.parent_run_id, "tables")}
    assert {"tables/table3.json", "tables/table5.json", "tables/table3.html"} <= arts
    figures = {a.path for a in client.list_artifacts(out.parent_run_id, "figures")}
    assert figures == {"figures/table3.png", "figures/table5.png"}
    page = Path(client.download_artifacts(out.parent_run_id, "tables/table3.html")).read_text("utf-8")
    assert '<meta charset="utf-8">' in page and "ΔmAP" in page
    assert out.landing_url.endswith(f"/#/experiments/{out.experiment_id}/runs?workflowType="
                                    "machine_learning&compareRunsMode=CHART&viewStateShareKey="
                                    "msreid-cells")
    assert list(out.links) == ["Table 3 (mini): mAP/R1 by modality", "Table 5 (mini): ablation"]
    assert [u.rsplit("=", 1)[1] for u in out.links.values()] == [
        f"msreid-{out.name}-table3", f"msreid-{out.name}-table5"]


def _bars(traces: list[list[dict]], metric: str) -> dict[str, dict[str, float]] | None:
    """``{series: {row label: value}}`` of the bar chart whose first series is ``metric``; a bar's
    category is the UI's group key ``tag.msreid.row.<table>.<label>``."""
    for chart in traces:
        if chart and chart[0]["type"] == "bar" and chart[0]["name"] == metric:
            return {t["name"]: {y.split(".", 4)[-1]: x for x, y in zip(t["x"], t["y"])}
                    for t in chart}
    return None


def _line_charts(traces: list[list[dict]]) -> list[list[list]]:
    """The x values of each line chart's traces (the UI names the lines in its own legend)."""
    return [[t["x"] for t in chart] for chart in traces
            if chart and all(t["type"] == "scatter" for t in chart)]


def check_table_view(browser, url: str, table: str) -> None:
    """A table's printed link in a fresh tab: exactly its rows as groups, each bar labelled by its
    row with ours and the paper's value, per-epoch curves per row with the epoch on the x axis."""
    from mlflow_browser import fresh_tab, wait_for_traces

    rows = ROWS[table]
    page = fresh_tab(browser, url, height=2400)  # the UI draws only the charts in view
    bars = wait_for_traces(page, lambda t: (b := _bars(t, "test/mAP")) and len(
        b["test/mAP"]) == len(rows) and b, f"{table}'s mAP bars")
    assert set(bars) >= {"test/mAP", f"paper/{table}/mAP"}
    assert bars["test/mAP"] == pytest.approx({k: 100 * v[0] for k, v in rows.items()}, abs=1e-3)
    assert bars[f"paper/{table}/mAP"] == {k: v[1] for k, v in rows.items()}
    # val/mAP and train/loss per epoch: per row a line over the epochs 0 and 1 (x = the epoch
    # metric), named "<row> (<metric>)" in the chart's legend.
    lines = wait_for_traces(page, lambda t: (c := _line_charts(t)) and len(c) == 2 and c,
                            f"{table}'s per-epoch curves")
    for chart in lines:
        assert sum(1 for x in chart if x == [0, 1]) >= len(rows)
    body = page.inner_text("body")
    assert f"{len(rows)} matching runs" in body and "Additional runs" not in body
    for label in rows:  # the groups of the runs list, the difference table's columns, legends
        assert f"Group: {label}" in body and body.count(label) >= 2
        assert f"{label} (val/mAP)" in body and f"{label} (train/loss)" in body
    page.context.close()


def check_alpha_view(browser, url: str, alpha) -> None:
    """The alpha search's link: a scatter of loss.alpha against validation mAP, one point per
    trial that finished."""
    from mlflow_browser import fresh_tab, wait_for_traces

    finished = alpha.table[alpha.table["status"] == "finished"]
    page = fresh_tab(browser, url)
    (points,) = wait_for_traces(page, lambda t: [c[0] for c in t if c and c[0]["type"] == "scatter"
                                                  and len(c[0]["x"]) == len(finished)],
                                "the alpha scatter")
    got = sorted((float(x), y) for x, y in zip(points["x"], points["y"]))
    want = sorted(zip(finished["alpha"], 100 * finished["val/mAP"]))
    assert [a for a, _ in got] == pytest.approx([a for a, _ in want], rel=1e-9)
    assert [m for _, m in got] == pytest.approx([m for _, m in want], abs=1e-3)  # 4 decimals
    assert "loss.alpha" in page.inner_text("body")
    page.context.close()


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_printed_links_in_chromium(bench):
    from mlflow_browser import chromium_browser, fresh_tab, wait_for_traces

    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    tmp, manifest, out, alpha = bench
    client, kids = _children(out)
    with mlflow_ui(out.tracking_uri, "msreid-benchmark", tmp / "ui.log") as (base, printed):
        links = printed_links(printed)
        landing = f"{base}/#/experiments/{out.experiment_id}/runs?workflowType=machine_learning&" \
                  "compareRunsMode=CHART&viewStateShareKey=msreid-cells"
        assert links["Compare the cells of 'msreid-benchmark'"] == landing
        for table, url in zip(("table3", "table5"), out.links.values()):
            # `msreid ui` prints the same views the benchmark printed, at the server it serves.
            assert links[f"{table} of {out.name}"] == url.replace("http://127.0.0.1:5000", base)
        with chromium_browser() as browser:
            page = fresh_tab(browser, landing)
            want = sorted(k.data.metrics["test/mAP"] for k in kids)  # one bar per cell
            wait_for_traces(page, lambda t: any(
                c and c[0]["type"] == "bar" and sorted(c[0]["x"]) == pytest.approx(want)
                for c in t), "the landing view's test/mAP bars")
            page.context.close()
            for table in ("table3", "table5"):
                check_table_view(browser, links[f"{table} of {out.name}"], table)
            check_alpha_view(browser, alpha.link.replace("http://127.0.0.1:5000", base), alpha)
            # The parent's table, as the UI shows it (UTF-8: "ΔmAP", not "Î”mAP").
            page = fresh_tab(browser, run_url(base, out.experiment_id, out.parent_run_id,
                                              "artifacts/tables/table3.html"))
            table = page.frame_locator("iframe")
            table.get_by_text("ΔmAP").first.wait_for(timeout=60_000)
            assert "RGB-N-T MSN" in table.locator("body").inner_text()
    # README's screenshots come from a real smoke run through this same command; here it runs
    # on the reduced store, into the test's folder.
    import mlflow_browser

    assert mlflow_browser.main(["--tracking-uri", out.tracking_uri, "--out", str(tmp / "img")]) == 0
    assert sorted(p.name for p in (tmp / "img").iterdir()) == sorted(mlflow_browser.SHOTS.values())


def test_without_a_browser_the_skip_says_how_to_install(monkeypatch):
    import mlflow_browser

    monkeypatch.setattr(mlflow_browser, "CHROMIUM", "/nonexistent/chromium")
    reason = mlflow_browser.missing_browser()
    assert "apt-get install -y chromium" in reason and "pip install -e '.[test]'" in reason
