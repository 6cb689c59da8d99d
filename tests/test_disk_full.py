"""A full disk is one clear error (exit 2) naming the path, the space needed and free, and
nothing is left half-written (issue 23).

The disk is a real tmpfs of 200 kB mounted inside the test (root only; skipped with the
reason otherwise), or one filled up with a filler file for the MLflow store. The sizes
a message states are checked against the sizes of the same output written to a roomy disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msreid.data.schema import manifest_info, verify_manifest
from msreid.data.synth import SynthSpec, generate
from msreid.errors import DiskFullError, UserError, user_error_message
from msreid.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[1]
SMALL_DISK = "200k"
BIG = ["--ids", "4", "--cameras", "2"]  # ~1.4 MB of JPEGs: does not fit in 200 kB
TINY = SynthSpec(ids=2, cameras=2, tuples_per_id=3, height=16, width=32)  # ~20 kB


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` for the block (pytest.skip when not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "small", SMALL_DISK) as path:
        yield path


def msreid(*args: str) -> subprocess.CompletedProcess:
    """``msreid ARGS`` as a user runs it (this checkout's package first on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "msreid.cli", *args], capture_output=True,
                          text=True, env=env, timeout=240)


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def stated_need(message: str) -> float:
    """The "needs about N kB/MB" of a message, in bytes."""
    number, unit = re.search(r"needs about ([\d.]+) (bytes|kB|MB|GB)", message).groups()
    return float(number) * {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]


def assert_one_clear_line(done: subprocess.CompletedProcess, command: str, what: str, out: Path):
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "OSError" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip()
    assert "\n" not in line, line
    assert line.startswith(f"msreid {command}: error: no space left on the device writing {what} "
                           f"to {out} ("), line
    assert "free there now" in line and "--out" in line, line
    return line


def test_synth_on_a_full_disk(small_disk, tmp_path):
    out = small_disk / "synth"
    done = msreid("synth", "--layout", "rgbnt100", "--out", str(out), *BIG)
    line = assert_one_clear_line(done, "synth", "the synthetic dataset", out)
    assert list(small_disk.iterdir()) == []  # no partial dataset, no temporary sibling
    reference = tmp_path / "roomy"
    assert msreid("synth", "--layout", "rgbnt100", "--out", str(reference), *BIG).returncode == 0
    real = tree_bytes(reference)  # ~1.4 MB; the message extrapolates from the images written
    assert 0.8 * real <= stated_need(line) <= 1.25 * real, (line, real)


def test_ingest_on_a_full_disk_keeps_the_previous_manifest(small_disk, tmp_path):
    old_data = generate("rgbnt100", tmp_path / "tiny", TINY)
    out = small_disk / "manifest"
    old = msreid("ingest", "--layout", "rgbnt100", "--root", str(old_data), "--out", str(out),
                 "--piece-size", "auto")
    assert old.returncode == 0, old.stderr[-2000:]
    before = manifest_info(str(out)).fingerprint
    data = tmp_path / "big"
    assert msreid("synth", "--layout", "rgbnt100", "--out", str(data), *BIG).returncode == 0
    done = msreid("ingest", "--layout", "rgbnt100", "--root", str(data / "rgbir"), "--out",
                  str(out), "--piece-size", "auto", "--overwrite")
    line = assert_one_clear_line(done, "ingest", "the manifest", out)
    assert sorted(p.name for p in small_disk.iterdir()) == ["manifest"]  # no temporary left
    verify_manifest(str(out))  # the previous manifest, whole
    assert manifest_info(str(out)).fingerprint == before
    roomy = tmp_path / "roomy-manifest"
    assert msreid("ingest", "--layout", "rgbnt100", "--root", str(data / "rgbir"), "--out",
                  str(roomy), "--piece-size", "auto").returncode == 0
    real = tree_bytes(roomy)
    assert 0.8 * real <= stated_need(line) <= 1.25 * real, (line, real)


def test_checkpoint_on_a_full_disk_keeps_the_earlier_one(small_disk):
    run_dir = small_disk / "run"
    small = {"model.pt": {"w": torch.zeros(10)}, "meta.json": {"epoch": 1}}
    first = ck.write_checkpoint(run_dir / "checkpoint_epoch_1", small)
    big = {"model.pt": {"w": torch.zeros(75_000)}, "meta.json": {"epoch": 1}}  # 300 kB of floats
    with pytest.raises(DiskFullError) as err:
        ck.write_checkpoint(run_dir / "checkpoint_epoch_1", big)
    message = str(err.value)
    assert message.startswith(f"no space left on the device writing checkpoint checkpoint_epoch_1 "
                              f"to {run_dir} (it needs about 300.0 kB, "), message
    assert "earlier checkpoints are kept" in message and "--storage" in message
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint_epoch_1"]  # no temporary
    assert ck.checkpoint_problem(first) is None  # the same epoch's earlier write is whole
    assert ck.load_pt(first, "model.pt")["w"].shape == (10,)


def test_mlflow_store_and_artifacts_on_a_full_disk(tmp_path):
    from msreid.tracking import runs
    from msreid.tracking.store import ensure_experiment

    with tmpfs(tmp_path / "store", "2m") as disk:  # an empty SQLite store takes ~1 MB
        uri = f"sqlite:///{disk}/mlflow.db"
        client = runs.client_for(uri)
        run_id, _ = runs.get_or_create_parent(client, ensure_experiment(uri, "t"), "b")
        runs.log_params(client, run_id, {"kept": 1})
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"x" * 4096)
        os.close(fd)
        artifacts = Path(client.get_run(run_id).info.artifact_uri[len("file://"):])
        with pytest.raises(DiskFullError, match=re.escape(
                f"no space left on the device writing MLflow artifact to "
                f"{artifacts / 'tables' / 'big.md'} (0 bytes free there now)")):
            runs.log_text(client, run_id, "y" * 100_000, "tables/big.md")
        assert not (artifacts / "tables" / "big.md").exists()  # no truncated copy
        with pytest.raises(DiskFullError, match=re.escape(
                f"no space left on the device writing MLflow data to {disk}/mlflow.db (")):
            runs.log_params(client, run_id, {f"p{i}": "z" * 5000 for i in range(200)})
        filler.unlink()
        assert client.get_run(run_id).data.params == {"kept": "1"}  # the failed batch rolled back


def test_a_full_disk_without_its_own_handling_names_the_file():
    message = user_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/x.csv"))
    assert message.startswith("no space left on the device writing a file to /data/x.csv"), message
    assert "Disk quota exceeded" not in message
    quota = user_error_message(OSError(errno.EDQUOT, "Disk quota exceeded", "/home/u/x"))
    assert quota.startswith("disk quota exceeded writing a file to /home/u/x"), quota
    assert user_error_message(OSError(errno.EACCES, "Permission denied", "/x")) is None  # a bug


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_a_full_disk_in_a_ray_worker_is_the_same_one_line(ray_session):
    ray = ray_session

    @ray.remote
    def write():
        from msreid.errors import disk_full_is_user_error

        with disk_full_is_user_error("/runs/r1", "checkpoint checkpoint_epoch_3", "free space"):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(Exception) as err:  # Ray's error type, carrying the worker's traceback
        ray.get(write.remote())
    assert 'File "' in str(err.value)  # the worker's traceback is part of the text
    message = user_error_message(err.value)
    assert message.startswith("no space left on the device writing checkpoint checkpoint_epoch_3 "
                              "to /runs/r1 ("), message
    assert message.endswith("; free space") and "\n" not in message


def test_a_plain_user_error_from_a_ray_worker_keeps_only_its_message():
    text = ("ray::train_func() (pid=1, ip=127.0.0.1)\n  File \"x.py\", line 3, in f\n"
            "msreid.errors.UserError: data.P=8 but only 4 train ids remain")

    class Wrapped(UserError):  # what Ray's as_instanceof_cause makes: a UserError with a traceback
        pass

    assert user_error_message(Wrapped(text)) == "data.P=8 but only 4 train ids remain"
    assert user_error_message(UserError("a\nb")) == "a\nb"  # multi-line messages stay whole


@pytest.mark.timeout(180)
def test_trials_stopped_by_a_full_disk_end_the_benchmark_with_the_resume_command(
        tmp_path, monkeypatch, capsys):
    """No Ray: Tune's loop is a stand-in whose trials all failed on a full disk (the text Ray
    gives the driver for a worker's DiskFullError)."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import full_benchmark

    from msreid.orchestration import benchmark
    from msreid.orchestration.datasets import synthetic_manifest
    from msreid.tracking import runs
    from test_orchestration_benchmark import write_suite

    manifest = synthetic_manifest({"ids": 4, "cameras": 2, "tuples_per_id": 3, "height": 16,
                                   "width": 32}, root=tmp_path / "cache")
    worker = ("ray::run_trial() (pid=7, ip=127.0.0.1)\n  File \"checkpoint.py\", line 9\n"
              "msreid.errors.DiskFullError: no space left on the device writing checkpoint "
              "checkpoint_epoch_1 to /results/k1 (12 bytes free there now); free space")

    def tune_on_a_full_disk(suite, trials, ctx, storage, name, opts):
        return [], [f"{t.label}: RayTaskError(DiskFullError): {worker}" for t in trials]

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(benchmark, "init_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr(benchmark, "run_tune", tune_on_a_full_disk)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["--preset", str(write_suite(tmp_path)), "--data", f"rgbnt100={manifest}",
            "--experiment", "t", "--tracking-uri", uri, "--storage-path", str(tmp_path / "r"),
            "--set", "optim.epochs=1", "--name", "full", "--quiet"]
    assert full_benchmark.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-2:]  # after MLflow's store creation
    assert err[0] == ("full_benchmark: error: 6 of 6 trials stopped on a full disk, the first: no "
                      "space left on the device writing checkpoint checkpoint_epoch_1 to "
                      "/results/k1 (12 bytes free there now); free space. Finished trials are "
                      "kept; once there is room, resume with:"), err
    assert err[1].startswith("  python experiments/full_benchmark.py --preset ") and \
        "--set optim.epochs=1" in err[1] and err[1].endswith("--name full --quiet --resume full"), err
    client = runs.client_for(uri)
    (parent,) = runs.find_runs(client, client.get_experiment_by_name("t").experiment_id,
                               {runs.TAG_KIND: "benchmark"})
    assert parent.info.status == "FAILED"  # not FINISHED, no tables
    assert not [a for a in client.list_artifacts(parent.info.run_id) if a.path == "tables"]


def test_a_checkpoint_cut_short_by_a_full_disk_is_skipped_on_resume(tmp_path):
    """What Ray Train's own copy into a full storage leaves (seen with --storage on a 200 kB
    tmpfs and run.num_workers=1): the folder with a cut model.pt and empty other files."""
    whole = ck.write_checkpoint(tmp_path / "checkpoint_epoch_0", {
        "model.pt": {"w": torch.zeros(3)}, "meta.json": {"epoch": 0}})
    cut = tmp_path / "checkpoint_2026-12-05_08-21-30.464779"
    cut.mkdir()
    (cut / "model.pt").write_bytes(b"PK\x03\x04" + bytes(100))
    for name in ("best_model.pt", "train_state.pt", "meta.json", "checksums.json"):
        (cut / name).write_bytes(b"")
    assert ck.checkpoint_problem(cut) == "checksums.json is unreadable (cut short or damaged)"
    assert ck.newest_intact([whole, cut]) == whole


def test_ray_trains_own_copy_failing_is_reported_for_the_run_directory():
    """Ray Train re-raises pyarrow's error as text inside its WorkerGroupError (no chain)."""
    from msreid.errors import disk_full_is_user_error

    ray_text = ("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\n"
                "... (Output truncated. See individual worker logs for full details) ...\n"
                "OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space "
                "left on device")
    with pytest.raises(DiskFullError) as err:
        with disk_full_is_user_error("runs/smoke-1", "the run's checkpoints", "free space"):
            raise RuntimeError(ray_text)
    assert str(err.value).startswith("no space left on the device writing the run's checkpoints "
                                     "to runs/smoke-1 ("), err.value
    worker = RuntimeError("ray::f()\nmsreid.errors.DiskFullError: no space left on the device "
                          "writing checkpoint x to /tmp/msreid-ckpt-1 (0 bytes free there now); a")
    with pytest.raises(DiskFullError, match=r"^no space left on the device writing checkpoint x "
                                            r"to /tmp/msreid-ckpt-1 "):  # the worker's own path
        with disk_full_is_user_error("runs/smoke-1", "the run's checkpoints", "free space"):
            raise worker
