"""A local run's Ray stays off the network (issue 11): every TCP port its processes listen on
is bound to loopback, and a client without the instance's token cannot join it.

The session's Ray is started by ``fit.start_local_ray``, the function ``init_ray`` uses for
every local run (``msreid train``, the benchmark and tune_alpha drivers).
"""

from __future__ import annotations

import ipaddress
import os
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


def _join(addr: str, token: str | None, home: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    # no ~/.ray/auth_token to fall back on; the client keeps 127.0.0.1 (as the local run's own
    # processes do) instead of replacing it with the LAN address, where nothing listens
    env.update({"RAY_AUTH_MODE": "token", "HOME": home, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    try:
        return subprocess.run([sys.executable, "-c", JOIN.format(addr=addr)], env=env,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as err:  # still retrying: it did not get in either
        return subprocess.CompletedProcess(err.cmd, -1, err.stdout or "", err.stderr or "")


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
