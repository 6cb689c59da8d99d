"""The stop-signal handling without Ray: what each signal does outside and inside Tune's loop,
and how the MLflow runs are closed (the real driver process: test_orchestration_signals.py)."""

from __future__ import annotations

import os
import signal

import pytest

from msreid.orchestration import interrupts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_outside_tunes_loop_a_stop_signal_raises_interrupted(sig):
    before = signal.getsignal(sig)
    with pytest.raises(interrupts.Interrupted) as err:
        with interrupts.stop_signals():
            os.kill(os.getpid(), sig)
            pytest.fail("not interrupted")
    assert err.value.signal_name == sig.name and err.value.exit_code == 128 + int(sig)
    assert signal.getsignal(sig) is before  # restored


def test_inside_tunes_loop_the_first_signal_asks_tune_to_stop_the_second_raises():
    asked = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: asked.append(a[0]))  # stands for Tune's
    try:
        with interrupts.stop_signals() as stop:
            with pytest.raises(interrupts.Interrupted):
                with stop.tune_loop():
                    os.kill(os.getpid(), signal.SIGTERM)
                    assert asked == [signal.SIGTERM] and stop.signal_name == "SIGTERM"
                    os.kill(os.getpid(), signal.SIGHUP)  # second: force
                    pytest.fail("not interrupted")
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_close_interrupted_kills_unfinished_children_and_the_parent(tmp_path):
    from msreid.tracking import runs
    from msreid.tracking.store import ensure_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "t")
    client = runs.client_for(uri)
    parent, _ = runs.get_or_create_parent(client, exp, "b")
    done, _ = runs.get_or_create_child(client, exp, parent, "k1", run_name="k1")
    busy, _ = runs.get_or_create_child(client, exp, parent, "k2", run_name="k2")
    client.set_terminated(done, "FINISHED")
    assert interrupts.close_interrupted(client, exp, parent, "SIGHUP", "resume with --resume b") == 1
    status = {r: client.get_run(r).info.status for r in (parent, done, busy)}
    assert status == {parent: "KILLED", done: "FINISHED", busy: "KILLED"}
    tags = client.get_run(parent).data.tags
    assert tags["msreid.interrupted"] == "SIGHUP" and tags[runs.TAG_NOTE] == "resume with --resume b"


@pytest.mark.timeout(120)
def test_run_benchmark_interrupted_in_tune_closes_parent_and_children_without_tables(
        tmp_path, monkeypatch):
    """Without Ray: SIGTERM arrives while the (stand-in) Tune loop runs a trial."""
    from msreid.orchestration import benchmark
    from msreid.orchestration.datasets import synthetic_manifest
    from msreid.tracking import runs
    from test_orchestration_benchmark import options

    manifest = synthetic_manifest({"ids": 4, "cameras": 2, "tuples_per_id": 3, "height": 16,
                                   "width": 32}, root=tmp_path / "cache")

    def tune_hit_by_sigterm(suite, trials, ctx, storage, name, opts):
        client = runs.client_for(ctx.tracking_uri)
        child, _ = runs.get_or_create_child(client, ctx.experiment_id, ctx.parent_run_id,
                                            trials[0].key, run_name="busy")
        os.kill(os.getpid(), signal.SIGTERM)  # Tune's handler (below) ends its loop
        return [], []

    previous = signal.signal(signal.SIGUSR1, lambda *a: None)  # stands for Tune's handler
    monkeypatch.setattr(benchmark, "init_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr(benchmark, "run_tune", tune_hit_by_sigterm)
    opts = options(tmp_path, manifest, name="cut")
    try:
        with pytest.raises(interrupts.Interrupted, match=r"after 0 of 6 trials.*--resume cut"):
            benchmark.run_benchmark(opts)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    client = runs.client_for(opts.tracking_uri)
    exp = client.get_experiment_by_name("t").experiment_id
    (parent,) = runs.find_runs(client, exp, {runs.TAG_KIND: "benchmark"})
    assert parent.info.status == "KILLED" and "--resume cut" in parent.data.tags[runs.TAG_NOTE]
    assert [c.info.status for c in runs.children(client, exp, parent.info.run_id)] == ["KILLED"]
    assert not [a for a in client.list_artifacts(parent.info.run_id) if a.path == "tables"]
