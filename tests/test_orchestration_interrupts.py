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
