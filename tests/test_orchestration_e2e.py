"""The smoke grid end to end with the REAL fit, at a reduced size, against a real MLflow
SQLite store: every expected cell is a metric of a child run under the parent, the
artifacts are there, and `msreid report` rebuilt from MLflow equals the printed tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GRIDS = ROOT / "experiments" / "grids"

# The real grid files, reduced: two Table 3 rows and Table 5's baseline, which is the
# same trial as Table 3's RGB-N-T MSN: 2 trials of 2 epochs on a tiny synthetic set.
SUITE = f"""
name: smoke-mini
preset: smoke
seeds: [0]
tables:
  - grid: {GRIDS}/table3_rgbnt100.yaml
    rows: [RGB one-stream, RGB-N-T MSN]
    columns: [{{name: test_resnet, paper_backbone: ResNet50, set: {{model.backbone: test_resnet}}}}]
  - grid: {GRIDS}/table5_ablation.yaml
    rows: [baseline (MSN)]
    columns: [RGBNT100]
set: {{model.backbone: test_resnet, optim.epochs: 2, run.eval_every: 1}}
# 4 logical CPUs in the test session: 2 trials x 1.5 leave 1 whole CPU for Ray Data.
trial_resources: [{{CPU: 0.5}}, {{CPU: 1}}]
max_concurrent_trials: 2
max_failures: 0
"""


def _run_mini(tmp_path: Path, experiment: str, manifest: str | None = None):
    """The reduced smoke suite, once, into ``tmp_path`` (MLflow store, results, data cache)."""
    from msreid.orchestration.benchmark import BenchmarkOptions, run_benchmark
    from msreid.orchestration.datasets import synthetic_manifest

    if manifest is None:
        manifest = synthetic_manifest({"ids": 6, "cameras": 3, "tuples_per_id": 6, "height": 32,
                                       "width": 64}, root=tmp_path / "cache")
    (tmp_path / "suite.yaml").write_text(SUITE)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = run_benchmark(BenchmarkOptions(
        preset=str(tmp_path / "suite.yaml"), data=(manifest,), tracking_uri=uri,
        experiment=experiment, storage_path=str(tmp_path / "results"), verbose=0,
        figures={"cam_queries": 2}))
    assert out.errors == []
    return out, uri, manifest


@pytest.fixture(scope="module")
def mini_run(ray_session, tmp_path_factory):
    return _run_mini(tmp_path_factory.mktemp("mini"), "e2e")


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_smoke_grid_end_to_end(mini_run, capsys):
    from msreid.cli import main as cli
    from msreid.data.schema import manifest_info
    from msreid.grid import expand_cells, load_suite
    from msreid.tracking import runs

    out, uri, manifest = mini_run
    tmp_path = Path(uri.removeprefix("sqlite:///")).parent

    client = runs.client_for(uri)
    kids = runs.children(client, out.experiment_id, out.parent_run_id)
    assert len(kids) == 2 and {k.info.status for k in kids} == {"FINISHED"}
    by_cell = {tuple(c): k for k in kids for c in json.loads(k.data.tags[runs.TAG_CELLS])}
    suite = load_suite(tmp_path / "suite.yaml")
    expected = [c for t in suite.tables for c in expand_cells(t, suite.set)]
    assert len(expected) == 3 and set(by_cell) == {c.id for c in expected}
    for cell in expected:  # every table cell is a metric of a child run under the parent
        kid = by_cell[cell.id]
        for metric in suite.table(cell.id[0]).metrics:
            value = kid.data.metrics[f"test/{metric}"]
            frame = out.frames[cell.id[0]]
            row = frame[frame.iloc[:, 0] == cell.id[1]].iloc[0]
            assert row[metric] == pytest.approx(value)  # MLflow and the tables are in %
        flag = kid.data.metrics["selection/within_noise"]  # 1 seed: the cell's count is the flag
        assert row["noisy_seeds"] == flag and kid.data.tags[runs.TAG_WITHIN_NOISE] == (
            "true" if flag else "false")
    fingerprint = manifest_info(manifest).fingerprint
    for kid in kids:
        assert kid.data.tags[runs.TAG_PARENT] == out.parent_run_id
        assert kid.data.tags["msreid.manifest_fingerprint"] == fingerprint
        assert kid.data.params["data.manifest"] == manifest
        assert {"test/mINP", "best_val/mAP", "best_epoch"} <= set(kid.data.metrics)
        steps = sorted(m.step for m in client.get_metric_history(kid.info.run_id, "train/loss"))
        assert steps == [0, 1]  # one point per epoch
        arts = {a.path for p in ("evaluation", "figures", "figures/cams")
                for a in client.list_artifacts(kid.info.run_id, p)}
        assert {"evaluation/cmc.csv", "evaluation/ranking.json", "figures/cmc.png",
                "figures/ranked_list.png"} <= arts
        assert len([a for a in arts if a.startswith("figures/cams/")]) == 2
    three = by_cell[("table3", "RGB-N-T MSN", "test_resnet")]
    assert "evaluation/missing_modality.csv" in {
        a.path for a in client.list_artifacts(three.info.run_id, "evaluation")}
    assert three is by_cell[("table5", "baseline (MSN)", "RGBNT100")]  # shared trial

    capsys.readouterr()
    assert cli(["report", "--experiment", "e2e", "--run", out.parent_run_id,
                "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out == out.markdown


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_two_runs_of_the_same_benchmark_give_the_same_numbers_bit_for_bit(mini_run, tmp_path):
    """The same suite run again (another store and results directory, the same data): every
    metric of every trial, each epoch's history and the printed tables are equal, not close."""
    from msreid.tracking import runs

    first, uri1, manifest = mini_run
    second, uri2, _ = _run_mini(tmp_path, "e2e-again", manifest)

    def numbers(out, uri):
        client = runs.client_for(uri)
        found = {}
        for kid in runs.children(client, out.experiment_id, out.parent_run_id):
            history = {name: [(m.step, m.value) for m in sorted(
                client.get_metric_history(kid.info.run_id, name), key=lambda m: m.step)]
                for name in ("train/loss", "val/mAP")}
            found[kid.data.tags[runs.TAG_CELLS]] = (dict(kid.data.metrics), history)
        return found

    a, b = numbers(first, uri1), numbers(second, uri2)
    assert len(a) == 2 and a.keys() == b.keys()
    for cells in a:
        metrics_a, history_a = a[cells]
        metrics_b, history_b = b[cells]
        timing = {"tuples_per_s"}  # the only measured (not computed) metric of a trial run
        assert {k: v for k, v in metrics_a.items() if k not in timing} == {
            k: v for k, v in metrics_b.items() if k not in timing}, cells
        assert history_a == history_b and len(history_a["train/loss"]) == 2, cells
    for table, frame in first.frames.items():
        assert frame.equals(second.frames[table]), table
