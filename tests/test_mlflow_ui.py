"""Comparing cells in the MLflow UI: a reduced benchmark (the stand-in fit of
tests/orchestration_fakes.py, the real Tune + MLflow logging path), what it leaves in MLflow, and
headless Chromium on the landing link served by `msreid ui --serve` (what `make ui` runs).

The browser test needs Debian's `chromium` and Playwright; without them it is skipped with the
reason and how to install them. ``MSREID_SCREENSHOTS=<dir>`` also saves the screenshots the README
shows (docs/img/).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import ray.cloudpickle

import orchestration_fakes
from mlflow_browser import chromium_page, missing_browser, mlflow_ui
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
"""
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
  - {name: + L_caid, paper_row: + L_caid, set: {loss.ablation: msn+caid}}
"""
# (run name, msreid.cell, fake test mAP as a fraction) of the three trials.
EXPECTED = {
    "RGB one-stream test_resnet · s0 · table3": ("table3 / RGB one-stream / tiny",
                                                 expected_map(1, "one_stream", 0)),
    "RGB-N-T MSN test_resnet · s0 · table3": ("table3 / RGB-N-T MSN / tiny",
                                              expected_map(3, "msn", 0)),
    "RGB-N-T MSN+CAID test_resnet · s0 · table5": ("table5 / + L_caid / RGBNT100",
                                                   expected_map(3, "msn+caid", 0)),
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory, ray_session):
    """One reduced benchmark (3 trials, 1 seed, 2 epochs) with --register."""
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
    return tmp, manifest, out


def _children(out):
    from msreid.tracking import runs

    client = runs.client_for(out.tracking_uri)
    return client, runs.children(client, out.experiment_id, out.parent_run_id)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_trial_runs_compare_as_cells(bench):
    from msreid.data.schema import manifest_info
    from msreid.tracking import entities

    tmp, manifest, out = bench
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
        assert "epoch" not in kid.data.metrics
        (inp,) = kid.inputs.dataset_inputs
        assert (inp.dataset.name, inp.dataset.digest) == ("rgbnt100", digest)
        (model_out,) = kid.outputs.model_outputs
        model = client.get_logged_model(model_out.model_id)
        assert entities.checkpoint_of(client, model.model_id).endswith("checkpoint_final")
        linked = {m.key: m.value for m in model.metrics}
        assert linked["test/mAP"] == kid.data.metrics["test/mAP"]
        table = json.loads(Path(client.download_artifacts(run_id, "tables/missing_modality.json"))
                           .read_text())
        assert table["data"][1][:3] == ["half", "one", pytest.approx(50 * score, abs=1e-4)]
    # Registered: each cell's (only) seed.
    names = {m.name for m in client.search_registered_models()}
    assert names == {"msreid-table3-RGB-one-stream-tiny", "msreid-table3-RGB-N-T-MSN-tiny",
                     "msreid-table5-+-L_caid-RGBNT100"}
    # Nothing outside the test's directory.
    location = client.get_experiment(out.experiment_id).artifact_location
    assert location.startswith(tmp.as_uri())


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_parent_holds_every_cell(bench):
    from msreid.tracking import runs

    tmp, manifest, out = bench
    client = runs.client_for(out.tracking_uri)
    parent = client.get_run(out.parent_run_id)
    metrics = parent.data.metrics
    # One seed: the mean is the trial's value and no std is logged.
    assert metrics["table3/RGB one-stream/tiny/mAP"] == pytest.approx(
        100 * expected_map(1, "one_stream", 0), abs=1e-4)
    assert metrics["table5/plus L_caid/RGBNT100/R1"] == pytest.approx(
        100 * (expected_map(3, "msn+caid", 0) + 0.1), abs=1e-4)
    assert not any(k.endswith("_std") for k in metrics)
    assert len(metrics) == 2 * 4 + 1 * 2  # table3: 2 cells x 4 metrics; table5: 1 cell x 2
    arts = {a.path for a in client.list_artifacts(out.parent_run_id, "tables")}
    assert {"tables/table3.json", "tables/table5.json", "tables/table3.html"} <= arts
    page = Path(client.download_artifacts(out.parent_run_id, "tables/table3.html")).read_text("utf-8")
    assert '<meta charset="utf-8">' in page and "ΔmAP" in page
    assert out.landing_url.endswith(f"/#/experiments/{out.experiment_id}/runs?workflowType="
                                    "machine_learning&compareRunsMode=CHART&viewStateShareKey="
                                    "msreid-cells")


def _plots(page) -> dict[str, list[dict]]:
    """{chart title: [bar traces as {x, y}]} of the chart view."""
    return page.evaluate("""() => {
        const out = {};
        for (const plot of document.querySelectorAll('.js-plotly-plot')) {
            let card = plot, title = null;
            for (let i = 0; i < 12 && card && !title; i++) {
                card = card.parentElement;
                const t = card && card.querySelector('[title]');
                if (t) title = t.getAttribute('title');
            }
            out[title] = (plot.data || []).filter(t => t.type === 'bar')
                .map(t => ({x: Array.from(t.x || []), y: Array.from(t.y || [])}));
        }
        return out;
    }""")


def _wait_for_chart(page, title: str, bars: int, timeout_s: float = 90.0) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        plots = _plots(page)
        if plots.get(title) and len(plots[title][0]["x"]) >= bars:
            return plots
        time.sleep(0.5)
    raise AssertionError(f"no bar chart {title!r} with {bars} bars; charts: {_plots(page)}")


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_landing_link_in_chromium(bench):
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    tmp, manifest, out = bench
    client, kids = _children(out)
    shots = os.environ.get("MSREID_SCREENSHOTS")
    with mlflow_ui(out.tracking_uri, "msreid-benchmark", tmp / "ui.log") as (base, printed):
        url = f"{base}/#/experiments/{out.experiment_id}/runs?workflowType=machine_learning&" \
              "compareRunsMode=CHART&viewStateShareKey=msreid-cells"
        assert f"Compare the cells of 'msreid-benchmark': {url}" in printed
        with chromium_page() as page:
            page.goto(url)
            plots = _wait_for_chart(page, "test/mAP", len(kids))
            # One bar per run (one seed: one run per cell), at each run's test mAP in %.
            (bars,) = plots["test/mAP"]
            assert sorted(bars["x"]) == pytest.approx(sorted(k.data.metrics["test/mAP"] for k in kids))
            assert sorted(bars["y"]) == sorted(f"tag.msreid.cell.{c}" for c, _ in EXPECTED.values())
            body = page.inner_text("body")
            for cell, _ in EXPECTED.values():
                assert f"Group: {cell}" in body
            if shots:
                save_screenshots(page, Path(shots), base, out)
            # The parent's table, as the UI shows it (UTF-8: "ΔmAP", not "Î”mAP").
            page.goto(run_url(base, out.experiment_id, out.parent_run_id,
                              "artifacts/tables/table3.html"))
            table = page.frame_locator("iframe")
            table.get_by_text("ΔmAP").first.wait_for(timeout=60_000)
            assert "RGB-N-T MSN" in table.locator("body").inner_text()


def save_screenshots(page, folder: Path, base: str, out) -> None:
    """The two pictures of README's comparison: cells as bars, the parent's table."""
    folder.mkdir(parents=True, exist_ok=True)
    page.locator("button[aria-label='Close']").last.click()  # the assistant side panel
    time.sleep(1)
    page.screenshot(path=str(folder / "mlflow_cells.png"))
    page.goto(run_url(base, out.experiment_id, out.parent_run_id, "artifacts/tables/table3.html"))
    page.frame_locator("iframe").get_by_text("ΔmAP").first.wait_for(timeout=60_000)
    time.sleep(1)
    page.screenshot(path=str(folder / "mlflow_table.png"))


def test_without_a_browser_the_skip_says_how_to_install(monkeypatch):
    import mlflow_browser

    monkeypatch.setattr(mlflow_browser, "CHROMIUM", "/nonexistent/chromium")
    reason = mlflow_browser.missing_browser()
    assert "apt-get install -y chromium" in reason and "pip install -e '.[test]'" in reason
