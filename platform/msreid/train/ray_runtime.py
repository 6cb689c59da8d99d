"""The Ray this process runs on, and every Ray internal msreid relies on: this module only.

- ``local_ray_environment()``: entry points call it before anything imports Ray, so that a
  local Ray listens on loopback only (docs/RAY.md, "A local Ray and the network").
- ``init_ray`` joins a cluster or starts the local Ray (``start_local_ray``): token
  authentication with a token of this instance, and how many idle workers Ray keeps.
- What no public Ray API gives, each at one place below with why:
  ``_reread_auth_settings`` (``ray._raylet``), ``autoscaler_max_gpus``
  (``ray._private.state``), ``latest_checkpoint_name`` (Ray Train's checkpoint-manager
  snapshot file), the ``_system_config`` argument of ``ray.init``, ``local_only_mode``
  (``ray._private.ray_constants``), and (mirrored by
  ``session.worker_threads``, not called) ``ray._private.utils.set_omp_num_threads_if_unset``.
  tests/test_ray_private_api.py runs each of them: a Ray upgrade that breaks one fails there,
  naming it and the Ray version.

Ray is imported inside the functions, never at this module's top: Ray reads its local-only
switch once, when it is imported, and the entry points (``msreid`` CLI, the experiment
scripts, the test session) import this module to set that switch first.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import secrets

from msreid.data.schema import resolve_filesystem
from msreid.errors import UserError

LOOPBACK = "127.0.0.1"  # the node address of a local Ray: every Ray process binds to it
# Ray's switch of its local-only mode (node address 127.0.0.1, kept as is), read once when Ray is
# imported into ray._private.ray_constants.ENABLE_RAY_CLUSTER; "0" selects it (the default on
# macOS/Windows). Not set on cluster nodes: `ray start --address ...` refuses to join with it.
LOCAL_ONLY_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run's checkpoints


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster to join: ``address``, else ``$RAY_ADDRESS``; None: start a local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


def local_ray_environment() -> None:
    """Select Ray's local-only mode for this process, unless ``$RAY_ADDRESS`` names a cluster.

    Call it before anything imports Ray (the ``msreid`` CLI, the experiment scripts and the
    test session do). It changes nothing for a driver that joins a cluster by address (measured
    with Ray 2.60: a driver with the switch joins a LAN head, explicitly or by ``auto``), and
    Ray's processes inherit it. Too late (Ray already imported), ``start_local_ray`` warns.
    """
    if not os.environ.get("RAY_ADDRESS"):
        os.environ[LOCAL_ONLY_SWITCH] = "0"


def init_ray(address: str | None = None, *, train_cpus: float = 0.0, quiet: bool = False) -> None:
    """Join ``address`` / ``$RAY_ADDRESS`` (``auto`` on cluster nodes), or start a local Ray.

    Joining passes no resources (Ray refuses them for a running cluster) and keeps the
    environment's auth mode (cluster nodes use the cluster's token). Locally Ray gets the
    cores, plus the Train workers' CPUs and one when a plain ``fit`` starts workers: Train
    takes its workers' CPUs out of Ray Data's budget and Data tasks need whole CPUs
    (docs/RAY.md). Tune trials need nothing extra: their Data tasks run inside their own
    placement group (``msreid.orchestration.trainable.data_in_trial_reservation``).
    quiet: no worker logs on the driver.
    """
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(address)
    if address:
        ray.init(address=address)
        return
    cores = os.cpu_count() or 1
    cpus = cores + (math.ceil(train_cpus) + 1 if train_cpus else 0)
    start_local_ray(cpus, **({"configure_logging": False, "log_to_driver": False} if quiet else {}))


def start_local_ray(num_cpus: float, **init_kwargs) -> None:
    """A private local Ray kept off the network (docs/RAY.md, "A local Ray and the network").

    Every Ray process binds to loopback when this process imported Ray in its local-only mode
    (``local_ray_environment``). Otherwise, on Linux, gcs_server, raylet and the agents would
    listen on every address: that is refused (UserError naming the fix) before anything starts,
    and checked again on the running instance. Token authentication stays on as well, with a token of
    this instance only, passed to Ray's processes (and so to Tune trials and Train workers) in
    RAY_AUTH_TOKEN, so no other local user can connect and ``~/.ray/auth_token`` is not
    written; an explicit RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH is kept.
    address="local": a private instance even where `ray start` runs (ray.init() would join it
    and then refuse num_cpus); RAY_ADDRESS=auto / --ray-address auto joins that one instead.
    """
    import ray

    if not local_only_mode():
        raise UserError(TOO_LATE)
    os.environ["RAY_AUTH_MODE"] = "token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # 256 bits, as `ray get-auth-token`
    _reread_auth_settings()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             _system_config=idle_worker_limit(num_cpus) or None, **init_kwargs)
    gcs = ray.get_runtime_context().gcs_address
    if not _is_loopback(gcs.rsplit(":", 1)[0].strip("[]")):  # a Ray release that moved the switch
        ray.shutdown()
        raise UserError(f"the local Ray listened on {gcs}, not on loopback only, and was stopped. "
                        + TOO_LATE)


TOO_LATE = (f"A local Ray must listen on loopback only, and Ray reads {LOCAL_ONLY_SWITCH} once, "
            "when it is imported: this process imported Ray before it was set. Set "
            f"{LOCAL_ONLY_SWITCH}=0 in the environment (or call msreid.train.ray_runtime."
            "local_ray_environment() before importing Ray, as `msreid` and the experiment scripts "
            "do), or start Ray yourself with ray.init() before calling msreid, or join a cluster "
            "with RAY_ADDRESS")


def local_only_mode() -> bool:
    """Whether the Ray this process imported binds a local instance to loopback.

    Private (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``): the value Ray took from
    LOCAL_ONLY_SWITCH when it was imported; no public API tells it, and checking only after
    ``ray.init`` would leave a Ray on every address for its start-up. False on Linux unless the
    switch was "0" at import; True by default on macOS / Windows.
    """
    from ray._private import ray_constants

    return not ray_constants.ENABLE_RAY_CLUSTER


def idle_worker_limit(num_cpus: float) -> dict[str, int]:
    """``_system_config`` of a local Ray: the idle worker processes it keeps ({}: Ray's default).

    By default as many as CPUs, counting the actors a benchmark holds (trials, Tune's queues,
    Ray Data's coordinators), so on 2 cores every decode worker was killed after 1 s idle and a
    new one paid the Python/Ray start-up again (105 worker processes in one smoke benchmark).
    8 kept: 22 -> 10 workers and 70 -> 63 s for two smoke trials (docs/PERFORMANCE.md).
    $RAY_num_workers_soft_limit wins. Private: ``ray.init``'s ``_system_config`` has no public
    counterpart; an unknown key stops gcs_server at start ("Received unexpected config
    parameter"), so a renamed one cannot pass unseen.
    """
    if "RAY_num_workers_soft_limit" in os.environ:
        return {}
    return {"num_workers_soft_limit": max(8, math.ceil(num_cpus))}


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def _reread_auth_settings() -> None:
    """Make this process's Ray see RAY_AUTH_MODE / RAY_AUTH_TOKEN as they are now.

    Private (``ray._raylet``): Ray reads both once, into its C++ config and token cache, by the
    time it is imported. Set later without this, the driver meets its own GCS without the token
    ("Unauthenticated: ... InvalidAuthToken" once a second, then AuthenticationError after about
    20 s; measured with Ray 2.60). Set before Ray is imported, this is not needed; but the token
    is chosen only here, once this process is known to start its own Ray, after the entry point
    imported Ray (a driver joining a cluster keeps the cluster's token). Re-reading is what
    ``ray.init`` itself does when it turns token auth on (``ray._private.authentication.
    authentication_token_setup._enable_token_auth``); no public API does it and no upstream
    issue asks for one (the caching: ray-project/ray#64755 review, marin-community/marin#2279).
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def autoscaler_max_gpus() -> int | None:
    """The most GPUs the cluster's autoscaler may provide; None: no autoscaler config.

    Private (``ray._private.state``): ray-project/ray#49501 asked for a public
    ``max_cluster_resources``; #49568 closed it with this internal method, which Ray Train and
    Ray Data call themselves. Any failure reads as "no config" (the run is then refused rather
    than left waiting for GPUs), and tests/test_ray_private_api.py notices it.
    """
    try:
        from ray._private.state import state

        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 (an internal API: no config is the safe reading)
        return None
    return None if limits is None else int(limits.get("GPU", 0))


def latest_checkpoint_name(run_dir: str) -> str | None:
    """The directory name of Ray Train's latest checkpoint of the run in ``run_dir`` (local path
    or URI); None when Ray recorded none there or its record is unreadable.

    Reads Ray Train V2's checkpoint-manager snapshot, the record Ray itself restores a run from.
    The public ``ray.train.Result.from_path(run_dir).checkpoint`` reads the same file, but builds
    Train's whole checkpoint manager for it, logs a paragraph at every call (made before every
    worker-group start) and failed on read-only storage (ray-project/ray#64305); one field is
    all msreid needs.
    """
    fs, path = resolve_filesystem(run_dir)
    try:
        with fs.open_input_stream(f"{path}/{SNAPSHOT_FILE}") as f:
            name = json.loads(f.read())["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return name if isinstance(name, str) and name else None
