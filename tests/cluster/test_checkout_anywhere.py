"""`make cluster-test` from a checkout under /tmp (issue 19).

Each node of the cluster test has its own /tmp; that used to hide a checkout under /tmp and its
venv (`node.sh: line 25: /tmp/<clone>/.venv/bin/python: No such file or directory`), so a CI
runner cloning there failed. Here the cluster files are copied under /tmp with a venv of their
own, and `run_cluster_test.sh --nodes-only` starts both nodes exactly as the full test does and
runs the head's start-up commands (the YAML's, through SSH) with that venv: 17-20 s on 2 loaded
cores. The full run stays `make cluster-test` (`.ci/run` runs it from wherever CI cloned the
repository).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the node start-up reads from the checkout: the script and its overlay, the on-prem YAML,
# and the node scripts (copied to the head's ~/msreid as `ray up` does).
CLUSTER_FILES = ("tests/cluster", "experiments/cluster", "cluster-onprem.yaml")
TOOLS = ("sshd", "ssh", "rsync", "tmux", "ip", "pgrep", "unshare")


def _missing_tools() -> list[str]:
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [tool for tool in TOOLS if shutil.which(tool, path=path) is None]


@pytest.mark.skipif(os.geteuid() != 0, reason="the cluster test's nodes need root (namespaces)")
@pytest.mark.skipif(bool(_missing_tools()), reason=f"needs {', '.join(_missing_tools())} "
                    "(.ci/run installs them from Debian)")
@pytest.mark.timeout(240)
def test_cluster_nodes_start_from_a_checkout_under_tmp():
    clone = Path(tempfile.mkdtemp(prefix="msreid-clone-", dir="/tmp"))
    try:
        for rel in CLUSTER_FILES:
            if (ROOT / rel).is_dir():
                shutil.copytree(ROOT / rel, clone / rel, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / rel, clone / rel)
        # The clone's own venv (where `make venv` puts it). Its packages are this test's, through a
        # .pth file: node.sh checks that the venv imports the project's dependencies.
        venv = clone / ".venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                       timeout=60)
        site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        (site / "site-packages" / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        env = {k: v for k, v in os.environ.items() if k != "MSREID_CLUSTER_VENV"}
        run = subprocess.run([str(clone / "tests" / "cluster" / "run_cluster_test.sh"),
                              "--nodes-only"], env=env, capture_output=True, text=True, timeout=200)
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-4000:]
        for n in (1, 2):
            assert f"node {n}: the venv {venv} and the checkout {clone} visible, /tmp its own" \
                in run.stdout, output[-4000:]
        assert "cluster test: PASSED" in run.stdout
    finally:
        shutil.rmtree(clone, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the cluster test's nodes need root (namespaces)")
@pytest.mark.timeout(60)
def test_a_venv_path_with_a_space_is_refused_before_anything_starts(tmp_path):
    venv = tmp_path / "my clone" / ".venv"
    (venv / "bin").mkdir(parents=True)
    for tool in ("python", "ray"):
        (venv / "bin" / tool).write_text("#!/bin/sh\nexit 0\n")
        (venv / "bin" / tool).chmod(0o755)
    run = subprocess.run([str(ROOT / "tests" / "cluster" / "run_cluster_test.sh")],
                         env={**os.environ, "MSREID_CLUSTER_VENV": str(venv)},
                         capture_output=True, text=True, timeout=50)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr == (f"cluster test: Ray cannot start workers from a venv whose path has a "
                          f"space: {venv}; clone the repository to a path without spaces, or point "
                          f"MSREID_CLUSTER_VENV at such a venv\n")
