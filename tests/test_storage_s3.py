"""Object storage (s3://) against a real S3-compatible store on loopback (SeaweedFS, the
`s3_store` fixture): pre-flight errors, the synthetic default and its checksums in the bucket,
checkpoints of a run stored there (with the damaged-checkpoint fallback), no secret recorded.

Expected values come from the store itself (listed and hashed here with pyarrow), never from
msreid's own record of what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

import s3_store
from msreid import storage
from msreid.errors import UserError
from msreid.train import checkpoint as ck
from msreid.train.ray_runtime import SNAPSHOT_FILE
from msreid.train.session import LocalSession, RaySession

ROOT = Path(__file__).resolve().parents[1]
TINY = {"ids": 4, "cameras": 2, "tuples_per_id": 3, "height": 16, "width": 32}


def bucket_fs() -> pafs.S3FileSystem:
    """A client of the test store built here, from the test's own credentials."""
    return pafs.S3FileSystem(access_key=s3_store.ACCESS_KEY, secret_key=s3_store.SECRET_KEY,
                             region="us-east-1", endpoint_override=os.environ["AWS_ENDPOINT_URL"])


def listing(uri: str) -> dict[str, bytes]:
    """``{path relative to uri: bytes}`` of every object under ``uri``."""
    fs, root = bucket_fs(), uri[len("s3://"):]
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return {}
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[posixpath.relpath(info.path, root)] = f.read()
    return out


def put(uri: str, data: bytes) -> None:
    with bucket_fs().open_output_stream(uri[len("s3://"):]) as out:
        out.write(data)


# ------------------------------------------------------------------ pre-flight: one clear error


def test_a_writable_prefix_passes_and_keeps_nothing(s3_prefix):
    storage.check_store(s3_prefix, "storage")
    assert listing(s3_prefix) == {}  # the probe object is gone


def test_a_missing_bucket_is_named(s3_store):
    with pytest.raises(UserError) as err:
        storage.check_store("s3://no-such-bucket/msreid", "Ray storage")
    assert "bucket 'no-such-bucket' does not exist" in str(err.value)
    assert s3_store.endpoint in str(err.value)


def test_refused_credentials_are_access_denied(s3_prefix, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(UserError) as err:
        storage.check_store(s3_prefix, "Ray storage")
    assert "access denied" in str(err.value) and "AWS_ACCESS_KEY_ID" in str(err.value)
    assert "not-the-secret" not in str(err.value)


def test_an_unreachable_endpoint_fails_within_seconds(s3_prefix, monkeypatch):
    closed = s3_store.free_ports("127.0.0.1", 1)[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        storage.check_store(s3_prefix, "Ray storage")
    assert time.monotonic() - start < 10  # two short attempts, not the SDK's long retry loop
    assert f"127.0.0.1:{closed} cannot be reached" in str(err.value)


def test_credentials_in_a_uri_are_refused_without_echoing_them():
    for uri in ("s3://AKIAEXAMPLE:topsecret@bucket/x", "s3://bucket/x?secret_key=topsecret"):
        with pytest.raises(UserError) as err:
            storage.check_uri(uri, "--data")
        assert "topsecret" not in str(err.value) and "AWS_ACCESS_KEY_ID" in str(err.value)


# ------------------------------------------------------------------ manifests on the store


def test_the_synthetic_default_is_written_once_with_its_checksums(s3_prefix, capsys):
    from msreid.data.schema import manifest_info, verify_manifest
    from msreid.orchestration.datasets import synthetic_manifest

    manifest = synthetic_manifest(TINY, root=s3_prefix)
    assert "Generating" in capsys.readouterr().out
    stored = listing(s3_prefix)
    (base,) = {name.split("/")[0] for name in stored}
    assert manifest == f"{s3_prefix}/{base}/manifest"
    parts = {n.rsplit("/", 1)[1]: b for n, b in stored.items() if n.endswith(".parquet")}
    assert parts and f"{base}/manifest.done" in stored
    sums = stored[f"{base}/manifest/_SHA256SUMS"].decode()
    assert sums == "".join(f"{hashlib.sha256(parts[n]).hexdigest()}  {n}\n" for n in sorted(parts))
    assert not any("released" in n for n in stored)  # only the manifest is uploaded
    assert verify_manifest(manifest) == len(parts)
    assert manifest_info(manifest).num_rows > 0
    assert synthetic_manifest(TINY, root=s3_prefix) == manifest  # cached: not generated again
    assert "Generating" not in capsys.readouterr().out


def test_a_missing_manifest_prefix_and_a_checksum_mismatch_on_s3(s3_prefix):
    from msreid.data.schema import manifest_info, verify_manifest
    from msreid.orchestration.datasets import synthetic_manifest

    with pytest.raises(UserError, match="not found"):
        manifest_info(f"{s3_prefix}/nothing-here")
    manifest = synthetic_manifest(TINY, root=s3_prefix)
    part = sorted(n for n in listing(manifest) if n.endswith(".parquet"))[0]
    data = bytearray(listing(manifest)[part])
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    put(f"{manifest}/{part}", bytes(data))
    with pytest.raises(UserError) as err:
        verify_manifest(manifest)
    assert f"{part}: content differs from the checksum recorded at ingest" in str(err.value)


# ------------------------------------------------------------------ the benchmark driver


def _options(tmp_path, **kw):
    from msreid.orchestration.benchmark import BenchmarkOptions

    suite = ROOT / "tests" / "cluster" / "suite.yaml"
    return BenchmarkOptions(preset=str(suite), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                            experiment="t", verbose=0, **kw)


def _runs(tmp_path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_bad_storage_stops_the_benchmark_before_anything_is_written(s3_prefix, tmp_path):
    from msreid.orchestration.benchmark import run_benchmark

    with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist"):
        run_benchmark(_options(tmp_path, storage_path="s3://no-such-bucket/ray_results",
                               synth=TINY))
    assert not (tmp_path / "mlflow.db").exists()


def test_a_damaged_manifest_on_s3_stops_the_benchmark_before_any_run(s3_prefix, tmp_path):
    from msreid.orchestration.benchmark import run_benchmark
    from msreid.orchestration.datasets import synthetic_manifest

    manifest = synthetic_manifest(TINY, root=s3_prefix)
    sums = listing(manifest)["_SHA256SUMS"].decode().splitlines()
    put(f"{manifest}/_SHA256SUMS", ("0" * 64 + sums[0][64:] + "\n").encode()
        + "".join(s + "\n" for s in sums[1:]).encode())
    with pytest.raises(UserError, match="content differs from the checksum"):
        run_benchmark(_options(tmp_path, storage_path=f"{s3_prefix}/ray_results",
                               data=(manifest,)))
    assert _runs(tmp_path) == []
    assert listing(f"{s3_prefix}/ray_results") == {}


# ------------------------------------------------------------------ checkpoints on the store


def _write(directory: Path, epoch: int, final: bool = False) -> Path:
    files = {ck.MODEL_FILE: {"w": torch.full((64,), float(epoch))}, ck.META_FILE: {"epoch": epoch}}
    if final:
        files[ck.FINAL_METRICS_FILE] = {"test/mAP": 0.5}
    return ck.write_checkpoint(directory, files)


def test_a_local_mode_run_on_s3_uploads_prunes_and_falls_back_from_a_damaged_checkpoint(
        s3_prefix, tmp_path, caplog):
    from msreid.train.session import RunMirror

    run = f"{s3_prefix}/run"
    mirror = RunMirror(run)
    session = LocalSession(False, mirror.local, {}, (), mirror)
    for epoch in (0, 1, 2):
        directory = _write(session.checkpoint_dir(epoch), epoch)
        session.report({"epoch": epoch}, directory)
    mirror.close()
    stored = listing(run)
    kept = sorted({n.split("/")[0] for n in stored})
    assert kept == [f"{ck.LOCAL_PREFIX}1", f"{ck.LOCAL_PREFIX}2"]  # KEEP_CHECKPOINTS = 2
    model = stored[f"{ck.LOCAL_PREFIX}2/{ck.MODEL_FILE}"]
    put(f"{run}/{ck.LOCAL_PREFIX}2/{ck.MODEL_FILE}", bytes(len(model)))  # zeroed in the bucket
    again = RunMirror(run)
    with caplog.at_level("WARNING", logger="msreid.train.checkpoint"):
        assert LocalSession.resume_epoch(again.local) == 2  # epoch 1's checkpoint: go on at 2
        chosen = LocalSession(False, again.local, {}, (), again).latest_checkpoint()
    assert chosen.path.endswith(f"{ck.LOCAL_PREFIX}1") and "model.pt" in caplog.text
    assert torch.equal(ck.load_pt(chosen.path, ck.MODEL_FILE)["w"], torch.full((64,), 1.0))
    again.close()
    assert not Path(again.local).exists()


def test_ray_resume_from_s3_skips_a_damaged_latest_checkpoint(s3_prefix, tmp_path):
    run = f"{s3_prefix}/ray-run"
    names = ["checkpoint_2026-12-01_10-00-00.000000", "checkpoint_2026-12-01_10-01-00.000000"]
    for epoch, name in enumerate(names):
        storage.upload_dir(_write(tmp_path / name, epoch), f"{run}/{name}")
    put(f"{run}/{SNAPSHOT_FILE}",
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": names[1]}}).encode())
    assert RaySession.resume_epoch(run) == 2
    model = listing(f"{run}/{names[1]}")[ck.MODEL_FILE]
    put(f"{run}/{names[1]}/{ck.MODEL_FILE}", bytes(len(model)))
    assert RaySession.resume_epoch(run) == 1  # epoch 0's checkpoint, checked on a local copy
