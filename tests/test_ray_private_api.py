"""Every Ray internal msreid relies on (msreid/train/ray_runtime.py), run against the installed Ray.

A Ray upgrade that renames, removes or changes one of them fails here with a message naming
it and the Ray version, instead of somewhere deep in a run (or not at all: most of them fall
back quietly). The measured reasons for each are in docs/RAY.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import ray

from msreid.train import ray_runtime
from msreid.train.session import worker_threads

PLATFORM = str(Path(__file__).resolve().parents[1] / "platform")


def _broken(api: str, detail: str) -> str:
    return (f"{api} no longer does what msreid relies on, with Ray {ray.__version__}: {detail}. "
            "See msreid/train/ray_runtime.py (why it is used) and docs/RAY.md; adapt it or pin "
            "Ray below this version in pyproject.toml")


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter: what Ray reads at import is read anew."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", ray_runtime.LOCAL_ONLY_SWITCH))}
    clean["PYTHONPATH"] = os.pathsep.join([PLATFORM, clean.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


LOCAL_ONLY = """
from msreid.train.ray_runtime import local_ray_environment
{switch}
import ray
print(ray.util.get_node_ip_address())
"""


@pytest.mark.timeout(240)
def test_the_local_only_switch_read_when_ray_is_imported():
    """RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before `import ray`: the node address a new local
    Ray takes (what ray.init keeps instead of the LAN address) is loopback."""
    plain = _python(LOCAL_ONLY.format(switch=""), {})
    assert plain.returncode == 0, plain.stderr[-2000:]
    if plain.stdout.strip() == ray_runtime.LOOPBACK:
        pytest.skip("this machine has no LAN address: the switch cannot make a difference here")
    out = _python(LOCAL_ONLY.format(switch="local_ray_environment()"), {})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ray_runtime.LOOPBACK, _broken(
        f"{ray_runtime.LOCAL_ONLY_SWITCH}=0 (ray._private.ray_constants.ENABLE_RAY_CLUSTER)",
        f"a local Ray would take the node address {out.stdout.strip()!r} (without the switch: "
        f"{plain.stdout.strip()!r}), not loopback")


MODE = """
from msreid.train.ray_runtime import local_ray_environment, local_only_mode
{switch}
import ray
print(local_only_mode())
"""


@pytest.mark.timeout(240)
def test_local_only_mode_tells_whether_ray_was_imported_with_the_switch():
    """What start_local_ray checks before it starts anything: False without the switch (on
    Linux), True with it set before `import ray`."""
    import platform as std_platform

    if std_platform.system() != "Linux":
        pytest.skip("local-only is Ray's default off Linux")
    runs = {switch: _python(MODE.format(switch=switch), {})
            for switch in ("", "local_ray_environment()")}
    for run in runs.values():
        assert run.returncode == 0, _broken("ray._private.ray_constants.ENABLE_RAY_CLUSTER",
                                            run.stderr[-1500:])
    seen = {switch: run.stdout.strip() for switch, run in runs.items()}
    assert seen == {"": "False", "local_ray_environment()": "True"}, _broken(
        "ray._private.ray_constants.ENABLE_RAY_CLUSTER", f"local_only_mode() gave {seen}")


AUTH = """
import ray, ray.train  # as msreid imports them, before it chooses the token
import os
from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, get_authentication_mode
assert get_authentication_mode() == AuthenticationMode.DISABLED, get_authentication_mode()
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="ab" * 32)
stale = get_authentication_mode() == AuthenticationMode.DISABLED
from msreid.train.ray_runtime import _reread_auth_settings
_reread_auth_settings()
loader = AuthenticationTokenLoader.instance()
print(stale, get_authentication_mode() == AuthenticationMode.TOKEN, loader.has_token())
"""


@pytest.mark.timeout(240)
def test_auth_settings_set_after_import_are_read_again(tmp_path):
    """ray._raylet.Config.initialize("") + AuthenticationTokenLoader.reset_cache(): after them
    this process's Ray uses the RAY_AUTH_MODE / RAY_AUTH_TOKEN set after `import ray`."""
    out = _python(AUTH, {"HOME": str(tmp_path)})  # no ~/.ray/auth_token to fall back on
    assert out.returncode == 0, _broken("ray._raylet.Config.initialize / AuthenticationTokenLoader",
                                        out.stderr[-2000:])
    stale, token_mode, has_token = out.stdout.split()
    assert token_mode == "True" and has_token == "True", _broken(
        "ray._raylet.Config.initialize('') + AuthenticationTokenLoader.instance().reset_cache()",
        f"token mode after re-reading: {token_mode}, token found: {has_token}")
    assert stale == "True", (f"Ray {ray.__version__} now reads RAY_AUTH_MODE when it is used, "
                             "not once at import: ray_runtime._reread_auth_settings can go")


SYSTEM_CONFIG = """
import json, sys
from ray._raylet import Config
Config.initialize(json.dumps(json.loads(sys.argv[1])))
print("accepted")
"""


@pytest.mark.timeout(240)
def test_the_idle_worker_limit_is_a_key_ray_knows():
    """ray.init(_system_config=...) with msreid's key: a key Ray does not know stops gcs_server
    at start (a local Ray would then time out waiting for it), so check it alone, fast."""
    def accepted(config: dict) -> subprocess.CompletedProcess:
        return _python(SYSTEM_CONFIG.replace("sys.argv[1]", repr(json.dumps(config))), {})

    config = ray_runtime.idle_worker_limit(2)
    assert config == {"num_workers_soft_limit": 8} or "RAY_num_workers_soft_limit" in os.environ
    out = accepted(config or {"num_workers_soft_limit": 8})
    assert out.returncode == 0 and "accepted" in out.stdout, _broken(
        "ray.init(_system_config={'num_workers_soft_limit': ...})", out.stderr[-2000:])
    wrong = accepted({"no_such_setting_of_ray": 1})  # the check itself can fail
    assert wrong.returncode != 0 and "unexpected config parameter" in wrong.stderr


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_the_autoscaler_limits_are_read_from_what_the_autoscaler_reports(ray_session):
    """ray._private.state.state.get_max_resources_from_cluster_config() reads the ClusterConfig
    an autoscaler stores in the GCS: none on a local Ray, else node groups x GPUs per node."""
    from ray._private.state import state
    from ray.core.generated import autoscaler_pb2
    from ray.experimental import internal_kv

    try:
        assert state.get_max_resources_from_cluster_config() is None  # no autoscaler here
        namespace = ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE
        key = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY
    except Exception as exc:  # noqa: BLE001 (any failure: name the API)
        pytest.fail(_broken("ray._private.state.state.get_max_resources_from_cluster_config",
                            repr(exc)))
    config = autoscaler_pb2.ClusterConfig()
    gpu_nodes = config.node_group_configs.add(max_count=3)
    gpu_nodes.resources.update({"CPU": 4, "GPU": 2})
    config.node_group_configs.add(max_count=5).resources.update({"CPU": 16})
    try:
        internal_kv._internal_kv_put(key, config.SerializeToString(), namespace=namespace)
        found = ray_runtime.autoscaler_max_gpus()
        config.max_resources.update({"GPU": 4})  # the cluster's own cap
        internal_kv._internal_kv_put(key, config.SerializeToString(), namespace=namespace)
        capped = ray_runtime.autoscaler_max_gpus()
    finally:
        internal_kv._internal_kv_del(key, namespace=namespace)
    assert (found, capped) == (6, 4), _broken(  # 3 nodes x 2 GPUs; then min(6, 4)
        "ray._private.state.state.get_max_resources_from_cluster_config",
        f"GPUs of an autoscaler config with 3 x 2 GPUs: {found} (uncapped), {capped} (cap 4)")
    assert ray_runtime.autoscaler_max_gpus() is None


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_the_latest_checkpoint_is_read_from_ray_trains_snapshot(ray_session, tmp_path):
    """checkpoint_manager_snapshot.json, Ray Train V2's record of a run's checkpoints: its
    latest is the one the run returned and the one the public Result.from_path reads."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def _report_twice(config):  # defined here: Ray pickles it by value for its worker
        for epoch in range(2):
            directory = tempfile.mkdtemp()
            Path(directory, "epoch").write_text(str(epoch))
            ray.train.report({"epoch": epoch},
                             checkpoint=ray.train.Checkpoint.from_directory(directory))

    result = TorchTrainer(
        _report_twice, scaling_config=ScalingConfig(num_workers=1,
                                                    resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(storage_path=str(tmp_path), name="run")).fit()
    run_dir = str(tmp_path / "run")
    name = ray_runtime.latest_checkpoint_name(run_dir)
    latest = Path(result.checkpoint.path).name
    assert name == latest, _broken(
        f"Ray Train's {ray_runtime.SNAPSHOT_FILE} (latest_checkpoint_result.checkpoint_dir_name)",
        f"read {name!r}, the run's latest checkpoint is {latest!r}; files: "
        f"{sorted(p.name for p in Path(run_dir).iterdir())}")
    assert Path(run_dir, name, "epoch").read_text() == "1"
    public = ray.train.Result.from_path(run_dir).checkpoint
    assert Path(public.path).name == name


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_worker_threads_is_the_thread_count_ray_gives_a_worker(ray_session):
    """session.worker_threads mirrors ray._private.utils.set_omp_num_threads_if_unset: the
    OMP_NUM_THREADS Ray sets in a fresh worker reserving that many CPUs."""
    if "OMP_NUM_THREADS" in os.environ:
        pytest.skip("OMP_NUM_THREADS is set here, so Ray's workers inherit it")

    @ray.remote
    def threads() -> str | None:
        return os.environ.get("OMP_NUM_THREADS")

    for cpus in (0.5, 1.5, 2):  # a fresh worker each (its own runtime env): nothing set before
        env = {"env_vars": {"MSREID_FRESH_WORKER": uuid.uuid4().hex}}
        seen = ray.get(threads.options(num_cpus=cpus, runtime_env=env).remote())
        assert seen == str(worker_threads(cpus)), _broken(
            "ray._private.utils.set_omp_num_threads_if_unset (mirrored by worker_threads)",
            f"a worker reserving {cpus} CPUs got OMP_NUM_THREADS={seen}, worker_threads says "
            f"{worker_threads(cpus)}")
