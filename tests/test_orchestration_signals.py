"""SIGINT, SIGTERM and SIGHUP to a real benchmark driver process leave true MLflow records.

The driver is experiments/full_benchmark.py's ``main`` in a subprocess with its own
local Ray and Tune, a SQLite MLflow store in tmp and the stand-in fit of
tests/orchestration_fakes.py (one trial finishes, the other hangs inside fit until
the signal arrives). Afterwards the store must say: the finished child FINISHED,
the interrupted child KILLED, the parent KILLED with a note naming ``--resume``,
no tables logged; the driver exits with 128 + the signal's number.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

TABLE = """
name: table3
title: "T3 (one row)"
dataset: rgbnt100
columns: [{name: tiny, set: {model.backbone: test_resnet}}]
rows: [{name: RGB-N-T MSN, set: {data.spectra: [rgb, nir, tir], loss.ablation: msn}}]
"""
SUITE = """
name: sig
preset: {preset}
seeds: [0, 1]
tables: [t3.yaml]
set: {{optim.epochs: 1}}
trial_resources: [{{CPU: 1}}]
max_concurrent_trials: 2
max_failures: 0
"""
# The CLI with the stand-in fit swapped in (the flags cannot name a fit); the subprocess's Ray
# workers import orchestration_fakes from tests/ on PYTHONPATH.
DRIVER = """
import dataclasses, sys
sys.path.insert(0, {experiments!r})
import full_benchmark
import orchestration_fakes
from msreid.orchestration import benchmark
real = benchmark.run_benchmark
benchmark.run_benchmark = lambda opts: real(dataclasses.replace(opts, fit=orchestration_fakes.fit))
sys.exit(full_benchmark.main({argv!r}))
"""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from msreid.orchestration.datasets import synthetic_manifest

    return synthetic_manifest({"ids": 4, "cameras": 2, "tuples_per_id": 3, "height": 16,
                               "width": 32}, root=tmp_path_factory.mktemp("cache"))


def write_suite(tmp_path: Path) -> Path:
    (tmp_path / "t3.yaml").write_text(TABLE)
    suite = tmp_path / "sig.yaml"
    suite.write_text(SUITE.format(preset=ROOT / "experiments" / "presets" / "smoke.yaml"))
    return suite


def start_driver(tmp_path: Path, suite: Path, manifest: str, name: str,
                 hang_key: str) -> subprocess.Popen:
    results = tmp_path / "results" / name
    results.mkdir(parents=True)
    (results / "hang_trials").write_text(hang_key)  # read by orchestration_fakes.fit
    argv = ["--preset", str(suite), "--data", f"rgbnt100={manifest}", "--experiment", "t",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--name", name,
            "--storage-path", str(tmp_path / "results"), "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "driver.log", "w")
    return subprocess.Popen([sys.executable, "-c", DRIVER.format(experiments=str(ROOT / "experiments"),
                                                                   argv=argv)],
                            env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def trial_runs(uri: str) -> list:
    from msreid.tracking import runs

    client = runs.client_for(uri)
    exp = client.get_experiment_by_name("t")
    return [] if exp is None else runs.find_runs(client, exp.experiment_id, {runs.TAG_KIND: "trial"})


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def ready(tmp_path: Path, proc: subprocess.Popen, name: str, keys: list[str]) -> bool:
    """The first trial finished and the second is inside fit."""
    assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    calls = tmp_path / "results" / name / "train" / "calls"
    hanging = calls.is_dir() and any(p.name.startswith(keys[1]) for p in calls.iterdir())
    return hanging and any(r.info.status == "FINISHED" for r in trial_runs(f"sqlite:///{tmp_path}/mlflow.db"))


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_stop_signals_close_runs_as_killed(tmp_path, manifest):
    """One driver per signal, all three at once (each its own Ray): the waits overlap."""
    from msreid.orchestration.benchmark import BenchmarkOptions, load_benchmark_suite, prepare_trials
    from msreid.tracking import runs

    name = "sig-run"
    dirs = {sig: tmp_path / sig.name for sig in SIGNALS}
    procs, codes, keys = {}, {}, None
    try:
        for sig, where in dirs.items():
            where.mkdir()
            suite = write_suite(where)
            if keys is None:
                opts = BenchmarkOptions(preset=str(suite), data=(f"rgbnt100={manifest}",))
                keys = [t.key for t in prepare_trials(opts, load_benchmark_suite(opts), {"rgbnt100"})[2]]
                assert len(keys) == 2
            procs[sig] = start_driver(where, suite, manifest, name, hang_key=keys[1])
        deadline = time.time() + 300
        waiting = set(SIGNALS)
        while waiting and time.time() < deadline:
            for sig in sorted(waiting):
                if ready(dirs[sig], procs[sig], name, keys):
                    time.sleep(1)
                    os.kill(procs[sig].pid, sig)
                    waiting.discard(sig)
            time.sleep(1)
        if waiting:
            pytest.fail(f"the trials did not start in time for {sorted(s.name for s in waiting)}")
        for sig, proc in procs.items():
            codes[sig] = proc.wait(timeout=120)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    for sig, where in dirs.items():
        log = (where / "driver.log").read_text()
        assert codes[sig] == 128 + int(sig), (sig.name, log[-3000:])
        assert f"--resume {name}" in log
        uri = f"sqlite:///{where}/mlflow.db"
        client = runs.client_for(uri)
        exp = client.get_experiment_by_name("t").experiment_id
        (parent,) = runs.find_runs(client, exp, {runs.TAG_KIND: "benchmark"})
        assert parent.info.status == "KILLED"
        assert parent.data.tags["msreid.interrupted"] == sig.name
        assert f"--resume {name}" in parent.data.tags["mlflow.note.content"]
        assert [a.path for a in client.list_artifacts(parent.info.run_id)
                if a.path.startswith("tables")] == []
        status = {r.data.tags[runs.TAG_TRIAL]: r.info.status for r in trial_runs(uri)}
        assert status == {keys[0]: "FINISHED", keys[1]: "KILLED"}, sig.name
