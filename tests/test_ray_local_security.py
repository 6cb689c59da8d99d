"""A local run's Ray stays off the network (issue 11): every TCP port its processes listen on
is bound to loopback, and a client without the instance's token cannot join it.

The session's Ray is started by ``ray_runtime.start_local_ray``, the function ``init_ray`` uses for
every local run (``msreid train``, the benchmark and tune_alpha drivers).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys

import pytest

JOIN = """
import ray
ray.init(address={addr!r}, log_to_driver=False)
print("JOINED", ray.cluster_resources().get("CPU"))
"""


def _listening(pids: set[int]) -> list[tuple[str, int, int]]:
    import psutil

    return sorted({(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN and c.pid in pids})


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or addr).is_loopback


def _join(addr: str, token: str | None, home: str, local_only: bool = True,
          timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ENABLE_W"))}
    # no ~/.ray/auth_token to fall back on; local_only: the client keeps 127.0.0.1 (as the local
    # run's own processes do) instead of replacing it with the LAN address, where nothing listens
    env["HOME"] = home
    if local_only:
        env.update({"RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    try:
        return subprocess.run([sys.executable, "-c", JOIN.format(addr=addr)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:  # still retrying: it did not get in either
        text = [(b or b"").decode(errors="replace") if isinstance(b, bytes) else (b or "")
                for b in (err.stdout, err.stderr)]  # bytes here, whatever text= said
        return subprocess.CompletedProcess(err.cmd, -1, *text)


def test_loopback_check_itself():
    assert _is_loopback("127.0.0.1") and _is_loopback("::ffff:127.0.0.1") and _is_loopback("::1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::") and not _is_loopback("192.0.2.2")


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_local_ray_ports_are_loopback_and_need_the_token(ray_session, tmp_path):
    import psutil

    ray = ray_session
    procs = psutil.Process().children(recursive=True)
    names = {p.pid: p.name() for p in procs}
    assert {"gcs_server", "raylet"} <= set(names.values()), names  # the probe sees Ray itself
    ports = _listening(set(names) | {os.getpid()})
    assert any(names.get(pid) == "gcs_server" for _, _, pid in ports), ports
    exposed = [(ip, port, names.get(pid, "driver")) for ip, port, pid in ports
               if not _is_loopback(ip)]
    assert not exposed, f"listening on non-loopback addresses: {exposed}"

    gcs = ray.get_runtime_context().gcs_address
    assert gcs.startswith("127.0.0.1:"), gcs  # what clients are told
    assert os.environ["RAY_AUTH_MODE"] == "token" and len(os.environ["RAY_AUTH_TOKEN"]) == 64
    out = _join(gcs, None, str(tmp_path))  # a client without the token
    assert "JOINED" not in out.stdout and out.returncode != 0, out.stdout
    assert "AuthenticationError" in out.stderr or "authentication" in out.stderr.lower(), \
        out.stderr[-2000:]  # refused for the token, not for anything else
    assert not (tmp_path / ".ray" / "auth_token").exists()  # no token file was made for them
    out = _join(gcs, os.environ["RAY_AUTH_TOKEN"], str(tmp_path))  # the check can pass
    assert "JOINED" in out.stdout, out.stderr[-2000:]


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_a_plain_client_is_sent_to_the_lan_address_where_nothing_listens(ray_session, tmp_path):
    """docs/RAY.md, "A client that tries to join a local run": a plain ray.init(address=127.0.0.1:
    PORT) rewrites the address before connecting, so it never meets the token check and waits."""
    from ray._private.services import node_ip_address_from_perspective

    lan = node_ip_address_from_perspective()
    if _is_loopback(lan):
        pytest.skip("this machine has no LAN address for Ray to substitute")
    gcs = ray_session.get_runtime_context().gcs_address
    out = _join(gcs, None, str(tmp_path), local_only=False, timeout=15)
    assert "JOINED" not in out.stdout and out.returncode == -1, out.stderr[-2000:]  # still waiting
    port = gcs.rsplit(":", 1)[1]
    assert f"Connecting to existing Ray cluster at address: {lan}:{port}" in out.stderr, \
        out.stderr[-2000:]


OWN_TOKEN_RUN = """
import sys, time
import ray
from msreid.train.ray_runtime import start_local_ray
start_local_ray(1, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
time.sleep(120)
"""


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_a_run_started_with_your_token_can_be_joined_on_purpose(tmp_path):
    """docs/RAY.md: export RAY_AUTH_TOKEN before the run, find its GCS port with `ss -ltnp`,
    join with that token and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0."""
    import secrets

    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    run = subprocess.Popen([sys.executable, "-c", OWN_TOKEN_RUN], env={**env, "RAY_AUTH_TOKEN": token},
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           start_new_session=True)
    try:
        gcs = run.stdout.readline().strip()
        assert gcs.startswith("127.0.0.1:"), gcs
        listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        assert any("gcs_server" in line and gcs.rsplit(":", 1)[1] in line
                   for line in listening.splitlines()), listening
        out = _join(gcs, token, str(tmp_path))
        assert "JOINED" in out.stdout, out.stderr[-2000:]
    finally:
        run.send_signal(signal.SIGINT)  # ray.shutdown on the way out
        try:  # how fast its Ray stops is not this test's business (once > 60 s at load 8)
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)  # whatever of that Ray is left


LATE_SWITCH_RUN = """
import ray  # before msreid could set the local-only switch
from msreid.train.ray_runtime import local_ray_environment, start_local_ray
local_ray_environment()  # too late: Ray read the switch when it was imported
start_local_ray(1, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
ray.shutdown()
"""


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_a_ray_imported_before_the_switch_is_refused_before_it_starts(tmp_path):
    """docs/RAY.md: the switch is read when Ray is imported; a program that imports Ray first
    would get a local Ray on every address, so start_local_ray refuses, naming the fixes, and
    starts nothing."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_ENABLE_W", "RAY_TMPDIR"))}
    out = subprocess.run([sys.executable, "-c", LATE_SWITCH_RUN], capture_output=True, text=True,
                         env={**env, "HOME": str(tmp_path), "RAY_TMPDIR": str(tmp_path)},
                         timeout=180)
    assert out.returncode != 0 and "UserError" in out.stderr, out.stderr[-2000:]
    message = out.stderr.strip().splitlines()[-1]
    for fix in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0", "local_ray_environment()", "ray.init()",
                "RAY_ADDRESS"):
        assert fix in message, message
    assert not list(tmp_path.rglob("session_*")), "a Ray instance was started"
