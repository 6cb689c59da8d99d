"""The benchmark driver with a stand-in fit (tests/orchestration_fakes.py): Tune trials,
MLflow parent/child runs, tables, `msreid report`, resume after the driver is killed.

The same flow with the real fit is tests/test_orchestration_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle

import orchestration_fakes
from orchestration_fakes import expected_map

# Ray workers do not see tests/ on their path: ship the fake by value.
ray.cloudpickle.register_pickle_by_value(orchestration_fakes)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

T3 = """
name: table3
title: "T3 (mini)"
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
title: "T5 (mini)"
paper_table: table5
paper_backbone: ResNet50
metrics: [mAP, R1]
row_label: Model
column_label: Dataset
columns: [{name: RGBNT100, dataset: rgbnt100, set: {data.spectra: [rgb, nir, tir]}}]
rows:
  - {name: baseline (MSN), paper_row: baseline (MSN), set: {loss.ablation: msn}}
  - {name: + L_caid, paper_row: + L_caid, set: {loss.ablation: msn+caid}}
"""
SUITE = """
name: mini
preset: {preset}
seeds: [0, 1]
tables: [t3.yaml, t5.yaml]
set: {{model.backbone: test_resnet, optim.epochs: 2}}
trial_resources: [{{CPU: 1}}, {{CPU: 1}}]
max_concurrent_trials: 2
max_failures: 0
checks:
  - {{table: table3, metric: mAP, row: RGB-N-T MSN, above: [RGB one-stream]}}
"""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from msreid.orchestration.datasets import synthetic_manifest

    return synthetic_manifest({"ids": 4, "cameras": 2, "tuples_per_id": 3, "height": 16,
                               "width": 32}, root=tmp_path_factory.mktemp("cache"))


def write_suite(tmp_path: Path) -> Path:
    """Two rows of Table 3 and two of Table 5 (one shared): 3 distinct trials per seed."""
    (tmp_path / "t3.yaml").write_text(T3)
    (tmp_path / "t5.yaml").write_text(T5)
    path = tmp_path / "mini.yaml"
    path.write_text(SUITE.format(preset=ROOT / "experiments" / "presets" / "smoke.yaml"))
    return path


def options(tmp_path, manifest, **kw):
    from msreid.orchestration.benchmark import BenchmarkOptions

    return BenchmarkOptions(preset=str(write_suite(tmp_path)), data=(f"rgbnt100={manifest}",),
                            tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t",
                            storage_path=str(tmp_path / "results"), fit=orchestration_fakes.fit,
                            verbose=0, **kw)


def children(uri, parent):
    from msreid.tracking import runs

    client = runs.client_for(uri)
    exp = client.get_experiment_by_name("t").experiment_id
    return client, runs.children(client, exp, parent)


def report_markdown(uri, parent, capsys) -> str:
    from msreid.cli import main

    capsys.readouterr()
    assert main(["report", "--experiment", "t", "--run", parent, "--tracking-uri", uri]) == 0
    return capsys.readouterr().out


# The subprocess's Ray workers import orchestration_fakes from tests/ on PYTHONPATH.
DRIVER = """
import orchestration_fakes
from msreid.orchestration.benchmark import BenchmarkOptions, run_benchmark
opts = BenchmarkOptions(**{opts!r}, fit=orchestration_fakes.fit)
run_benchmark(opts)
"""


def _finished(uri, parent_tag):
    from msreid.tracking import runs

    client = runs.client_for(uri)
    exp = client.get_experiment_by_name("t")
    if exp is None:
        return []
    return [r for r in runs.find_runs(client, exp.experiment_id, {runs.TAG_KIND: "trial"})
            if r.info.status == "FINISHED"]


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_tables_and_resume_after_the_driver_is_killed(ray_session, tmp_path, manifest, capsys):
    from msreid.orchestration.benchmark import load_benchmark_suite, prepare_trials, run_benchmark

    opts = options(tmp_path, manifest, name="mini-resume")
    trials = prepare_trials(opts, load_benchmark_suite(opts), {"rgbnt100"})[2]
    assert len(trials) == 3 * 2  # 2 Table 3 rows + 1 unshared Table 5 row, x 2 seeds
    # The last trial hangs until the driver is killed mid-benchmark.
    results = tmp_path / "results" / "mini-resume"
    results.mkdir(parents=True)
    (results / "hang_trials").write_text(trials[-1].key)
    fields = {k: v for k, v in opts.__dict__.items() if k not in ("figures", "synth", "fit")}
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(opts=fields)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    uri = opts.tracking_uri
    # Generous: on a loaded 2-core machine Tune needs minutes for 5 fake trials.
    deadline = time.time() + 300
    calls_dir = results / "train" / "calls"

    def hanging() -> bool:  # the last trial is inside fit, the others finished
        return calls_dir.is_dir() and any(p.name.startswith(trials[-1].key)
                                          for p in calls_dir.iterdir())

    while not (len(_finished(uri, None)) == 5 and hanging()) and time.time() < deadline:
        assert proc.poll() is None, "the driver ended before it was killed"
        time.sleep(1)
    time.sleep(2)  # let Tune record what it can, then kill the driver and its Ray
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {r.data.tags["msreid.trial_key"] for r in _finished(uri, None)}
    assert len(done_before) == 5

    out = run_benchmark(options(tmp_path, manifest, name=None, resume=""))
    assert out.name == "mini-resume" and out.errors == []
    client, kids = children(uri, out.parent_run_id)
    # One parent, one child per trial, none duplicated; all finished.
    from msreid.tracking import runs

    exp = client.get_experiment_by_name("t").experiment_id
    assert len(runs.find_runs(client, exp, {runs.TAG_KIND: "benchmark"})) == 1
    assert sorted(k.data.tags["msreid.trial_key"] for k in kids) == sorted(t.key for t in trials)
    assert {k.info.status for k in kids} == {"FINISHED"}
    # Finished trials trained once; only the killed one trained twice.
    calls = [p.name.split(".")[0] for p in (results / "train" / "calls").iterdir()]
    assert {key: calls.count(key) for key in done_before} == {key: 1 for key in done_before}
    assert calls.count(trials[-1].key) == 2
    # Every cell is a metric of a child under the parent; per-epoch curves have step = epoch.
    cells = {tuple(c) for k in kids for c in json.loads(k.data.tags["msreid.cells"])}
    assert len(cells) == 2 + 2
    for k in kids:
        assert {"test/mAP", "test/R1", "test/R5", "test/R10", "test/mINP"} <= set(k.data.metrics)
        assert k.data.params["model.backbone"] == "test_resnet"
        steps = [m.step for m in client.get_metric_history(k.info.run_id, "train/loss")]
        assert sorted(steps) == [0, 1]
    # Hand-computed from the fake: RGB-N-T MSN = 0.2 + 0.3 + 0 + 0.002 * seed -> 50.0 and
    # 50.2 (%): mean 50.1, sample std sqrt(0.1^2 + 0.1^2) = 0.1414; paper 60.5 -> -10.4.
    t3 = out.frames["table3"].set_index("Modality")
    assert t3.loc["RGB-N-T MSN", "mAP"] == pytest.approx(50.1)
    assert t3.loc["RGB-N-T MSN", "mAP"] == pytest.approx(
        100 * (expected_map(3, "msn", 0) + expected_map(3, "msn", 1)) / 2)
    assert t3.loc["RGB-N-T MSN", "mAP_std"] == pytest.approx(0.1414, abs=1e-3)
    assert t3.loc["RGB-N-T MSN", "mAP_diff"] == pytest.approx(50.1 - 60.5)
    # RGB one-stream: 0.3, 0.302 -> 30.1; + L_caid: 0.52, 0.522 -> 52.1 (shared baseline 50.1).
    assert t3.loc["RGB one-stream", "mAP"] == pytest.approx(30.1)
    t5 = out.frames["table5"].set_index("Model")
    assert t5.loc["+ L_caid", "mAP"] == pytest.approx(52.1)
    assert t5.loc["baseline (MSN)", "mAP"] == pytest.approx(50.1)
    assert all(ok for ok, _ in out.checks)
    # The parent carries the tables; `msreid report` rebuilds the printed ones from MLflow.
    arts = {a.path for a in client.list_artifacts(out.parent_run_id, "tables")}
    assert {"tables/table3.md", "tables/table3.csv", "tables/table3.html",
            "tables/table5.md"} <= arts
    assert report_markdown(uri, out.parent_run_id, capsys) == out.markdown
    # The captions state what the trials ran: protocol, backbone, seeds (the same from MLflow).
    assert "validation ids held out of the train ids; backbone trained: test_resnet; 2 seeds" \
        in out.markdown.splitlines()[0]


@pytest.mark.timeout(120)
def test_a_benchmark_that_fails_in_tune_leaves_its_parent_run_failed(tmp_path, manifest, monkeypatch):
    """Without Ray: the Tune step raises after the parent run exists; the parent must end FAILED."""
    from msreid.orchestration import benchmark
    from msreid.tracking import runs

    def broken_tune(*args, **kwargs):
        raise RuntimeError("the cluster went away")

    monkeypatch.setattr(benchmark, "init_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr(benchmark, "run_tune", broken_tune)
    opts = options(tmp_path, manifest, name="breaks")
    with pytest.raises(RuntimeError, match="the cluster went away"):
        benchmark.run_benchmark(opts)
    client = runs.client_for(opts.tracking_uri)
    exp = client.get_experiment_by_name("t").experiment_id
    (parent,) = runs.find_runs(client, exp, {runs.TAG_KIND: "benchmark", runs.TAG_BENCHMARK: "breaks"})
    assert parent.info.status == "FAILED"


def test_collect_results_reports_a_trial_that_never_started():
    """Tune hands back a result with no config for a trial the stopped driver never placed: it is
    an error line (so the grid is not complete), not a TypeError, and finished trials still count,
    with the config they trained (the preset's backbone, the cell's selection, the forced dropout)."""
    from types import SimpleNamespace

    from msreid.grid import TrialSpec
    from msreid.orchestration import benchmark

    ctx = SimpleNamespace(base_config={"model.backbone": "test_resnet"}, manifests={"d": "/m"},
                          force={"loss.ablation": "msn", "data.modality_dropout": 0.25})
    spec = TrialSpec(key="d-0123456789-s3", dataset="d", seed=3, overrides={"run.selection": "final"},
                     cells=(("t3", "rgb", "tiny"),), label="RGB one-stream")
    done = SimpleNamespace(config={"trial": spec.to_dict()}, error=None,
                           metrics={"test/mAP": 0.25, "epoch": 1})
    failed = SimpleNamespace(config={"trial": spec.to_dict()}, error=ValueError("boom"), metrics={})
    never = SimpleNamespace(config=None, error=None, metrics={})
    results, errors = benchmark.collect_results([done, failed, never], ctx)
    rows = [(r.cells, r.seed, r.metrics["test/mAP"]) for r in results]
    assert rows == [((("t3", "rgb", "tiny"),), 3, 25.0)]
    assert results[0].config == {"model.backbone": "test_resnet", "run.selection": "final",
                                 "data.modality_dropout": "0.25"}
    assert errors == ["RGB one-stream: ValueError: boom",
                      "a trial never started (the run was stopped before it was placed)"]
