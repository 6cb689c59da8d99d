"""Shared fixtures. Ray tests share ONE session-scoped ray.init (see ray_session)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session.

    4 logical CPUs on a 2-core machine: Ray Train reserves its workers' CPUs
    and Ray Data needs whole CPUs of its own (docs/RAY.md).
    """
    import ray

    from msreid.train.fit import start_local_ray

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    if not ray.is_initialized():  # as a local run starts it: loopback node, private token
        start_local_ray(4, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
