"""init_ray where `ray start` already runs: a private instance of its own (no ValueError about
num_cpus), the running cluster untouched. RAY_TMPDIR keeps both in a temp dir of this test, so
no other Ray on the machine sees them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

RAY = Path(sys.executable).with_name("ray")
DRIVER = """
import ray
from msreid.train.ray_runtime import init_ray
init_ray()
print("CPUS", ray.cluster_resources().get("CPU"), "NODES", len(ray.nodes()))
ray.shutdown()
"""


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_init_ray_beside_a_running_ray_start_starts_a_private_instance():
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths have a length limit
    # the `ray start` head without token auth; the driver's private instance turns it on
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", "--num-cpus", "7",
                             "--include-dashboard", "false", "--port", "0"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(Path(tmp).rglob("ray_current_cluster")):  # what ray.init() would join
            assert head.poll() is None and time.time() < deadline, "ray start failed"
            time.sleep(0.5)
        out = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        cpus = float(out.stdout.split("CPUS ")[1].split()[0])
        assert cpus != 7.0  # its own instance (sized to this machine), not the `ray start` one
        assert head.poll() is None  # the running cluster is untouched
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:  # `ray start --block` ignores SIGTERM for 30 s or more; its leftovers die below
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        _kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_leftovers(tmp: str) -> None:
    """Ray processes of this test's instances (their command lines name its temp dir), by pid."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        if tmp in " ".join(proc.info["cmdline"] or []):
            try:
                proc.kill()
            except psutil.Error:
                pass
