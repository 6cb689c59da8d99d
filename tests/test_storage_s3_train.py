"""A training run whose manifest and storage are on object storage gives the numbers of the same
run on local disk, in local mode (checkpoints mirrored to the bucket) and with a Ray Train worker
(Ray's own storage on S3); the checkpoints are in the bucket, no local copy is left behind.

Ray tests: the session's Ray (tests/conftest.py) started after the loopback S3 store, so its
workers read the store. About a minute on 2 idle cores (three 2-epoch runs of a tiny model).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path

import pytest

from test_storage_s3 import listing

PRESETS = Path(__file__).resolve().parents[1] / "experiments" / "presets"
SPEC = {"ids": 6, "cameras": 3, "tuples_per_id": 6, "height": 32, "width": 64, "seed": 1}
METRICS = ("test/mAP", "test/R1", "test/R5", "test/mINP")


def _cfg(manifest: str, workers: int):
    from msreid.config import load_config

    cpus = ["run.cpus_per_worker=0.5"] if workers else []
    return load_config(PRESETS / "smoke.yaml", [
        f"data.manifest={manifest}", "data.image_size=[32, 64]", "data.batch_size=8",
        "data.val_ids=2", "optim.epochs=2", "run.eval_every=1", f"run.num_workers={workers}",
        *cpus])


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_runs_on_s3_equal_the_run_on_local_disk(ray_session, s3_prefix, tmp_path):
    from msreid.orchestration.datasets import synthetic_manifest
    from msreid.train import checkpoint as ck
    from msreid.train.fit import fit

    local_manifest = synthetic_manifest(SPEC, root=tmp_path / "cache")
    s3_manifest = synthetic_manifest(SPEC, root=f"{s3_prefix}/cache")
    on_disk = fit(_cfg(local_manifest, 0), storage_path=str(tmp_path / "runs"), name="r")
    expected = {m: on_disk.metrics[m] for m in METRICS}

    local_mode = fit(_cfg(s3_manifest, 0), storage_path=f"{s3_prefix}/runs", name="local")
    assert {m: local_mode.metrics[m] for m in METRICS} == expected
    assert local_mode.stored_at == f"{s3_prefix}/runs/local/{ck.LOCAL_PREFIX}final"
    stored = listing(f"{s3_prefix}/runs/local")
    final = {posixpath.basename(n): b for n, b in stored.items()
             if n.startswith(f"{ck.LOCAL_PREFIX}final/")}
    sums = json.loads(final.pop(ck.CHECKSUM_FILE))
    assert sums == {n: hashlib.sha256(b).hexdigest() for n, b in final.items()}
    assert ck.FINAL_METRICS_FILE in final and "cmc.csv" in final  # artifacts travel with it
    local_copy = Path(local_mode.checkpoint_path)
    assert local_copy.is_dir()  # a temporary copy for MLflow logging ...
    local_mode.release()
    assert not local_copy.exists()  # ... removed once logged

    one_worker = fit(_cfg(s3_manifest, 1), storage_path=f"{s3_prefix}/runs", name="ray")
    assert {m: one_worker.metrics[m] for m in METRICS} == expected
    assert one_worker.stored_at.startswith(f"{s3_prefix}/runs/ray/checkpoint_")
    assert (Path(one_worker.artifacts_dir) / "cmc.csv").is_file()
    one_worker.release()
    names = {n.split("/")[0] for n in listing(f"{s3_prefix}/runs/ray")}
    assert "checkpoint_manager_snapshot.json" in names
    assert any(n.startswith("checkpoint_") and n != "checkpoint_manager_snapshot.json"
               for n in names)
