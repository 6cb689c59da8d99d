"""Tracking URI resolution, reachability errors, parent/child runs on a real SQLite store."""

import socket

import pytest

from msreid.errors import UserError
from msreid.tracking import runs
from msreid.tracking.store import check_reachable, ensure_experiment, resolve_tracking_uri


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///x.db", tmp_path) == f"sqlite:///{tmp_path}/x.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("store.db", tmp_path) == f"sqlite:///{tmp_path}/store.db"
    assert resolve_tracking_uri("http://h:5000", tmp_path) == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://env:5000"
    assert resolve_tracking_uri("http://arg:1", tmp_path) == "http://arg:1"


def test_unreachable_server_is_a_user_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=f"127.0.0.1:{port} is unreachable"):
        check_reachable(f"http://127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(UserError, match="does not exist"):
        check_reachable(f"sqlite:///{tmp_path}/missing/dir/mlflow.db")


def test_parent_and_children_are_found_again_not_duplicated(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "bench")
    assert ensure_experiment(uri, "bench") == exp
    client = runs.client_for(uri)
    parent, created = runs.get_or_create_parent(client, exp, "smoke-1")
    assert created
    assert runs.get_or_create_parent(client, exp, "smoke-1") == (parent, False)
    assert runs.get_or_create_parent(client, exp, "smoke-2")[0] != parent
    child, created = runs.get_or_create_child(client, exp, parent, "k-s0", "cell | seed 0")
    assert created
    runs.log_params(client, child, {"model.backbone": "x", "model.spectra": ["rgb", "nir"]})
    runs.log_params(client, child, {"model.backbone": "x", "loss.alpha": 0.001})  # re-log skips existing
    runs.log_metrics(client, child, {"test/mAP": 0.5, "bad": float("nan"), "flag": True}, step=3)
    client.set_terminated(child)
    assert runs.get_or_create_child(client, exp, parent, "k-s0", "cell | seed 0") == (child, False)
    run = client.get_run(child)
    assert run.info.status == "FINISHED"  # a finished child stays finished
    assert run.data.tags[runs.TAG_PARENT] == parent
    assert run.data.params == {"model.backbone": "x", "model.spectra": '["rgb", "nir"]',
                               "loss.alpha": "0.001"}
    assert run.data.metrics == {"test/mAP": 0.5}
    assert [r.info.run_id for r in runs.children(client, exp, parent)] == [child]


RACE = """
import sys, time
from msreid.tracking.store import ensure_experiment
while time.time() < float(sys.argv[2]):  # all processes start creating the store together
    time.sleep(0.001)
print(ensure_experiment("sqlite:///" + sys.argv[1], "t"))
"""


def test_processes_creating_a_fresh_sqlite_store_together_all_succeed(tmp_path):
    """Without the lock: 'duplicate column name' / 'table ... already exists' (3 of 3 tries)."""
    import subprocess
    import sys
    import time

    db = tmp_path / "mlflow.db"
    start = str(time.time() + 5)  # time for the interpreters to import MLflow first
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(db), start], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-800:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1  # one experiment, the same id for all
