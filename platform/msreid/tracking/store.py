"""Where MLflow data goes: tracking URI resolution, reachability, experiments.

The default store is ``sqlite:///<cwd>/mlflow.db`` as an ABSOLUTE URI (Tune
changes each trial's working directory, so a relative URI would scatter
databases), the same file ``make ui`` serves. ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` point anywhere else (``http://head:5000``,
``postgresql://...``).

``StoreClient`` wraps the ``MlflowClient`` every msreid process uses
(``runs.client_for``): a full disk under the store or its artifacts becomes one
``UserError`` naming the path (SQLite rolls the failed write back; a partly
copied local artifact file is removed).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock, Timeout

from msreid.errors import SQLITE_FULL, DiskFullError, UserError, disk_full_is_user_error

DEFAULT_DB_NAME = "mlflow.db"
STORE_LOCK_TIMEOUT_S = 300  # creating a fresh store takes ~2-10 s on a loaded 2-core machine


def resolve_tracking_uri(uri: str | None = None, cwd: str | Path | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the default.

    The default is ``sqlite:///<abs cwd>/mlflow.db``. Relative SQLite paths
    (``sqlite:///mlflow.db``) and bare paths are made absolute against ``cwd``.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    base = Path(cwd or os.getcwd()).resolve()
    if not uri:
        return "sqlite:///" + str(base / DEFAULT_DB_NAME)
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not path.startswith("/"):  # sqlite:///rel.db is relative; sqlite:////abs.db absolute
            return "sqlite:///" + str((base / path).resolve())
        return uri
    if "://" not in uri and not uri.startswith("databricks"):
        # A bare path means a SQLite file (the plain file store is deprecated in MLflow 3).
        return "sqlite:///" + str((base / uri).resolve())
    return uri


ARTIFACT_METHODS = ("log_text", "log_artifact", "log_dict")  # (run_id, source, destination)


class StoreClient:
    """An ``MlflowClient`` whose calls turn a full disk into one ``UserError`` (module docstring).

    Every public method of the wrapped client is available unchanged otherwise.
    """

    def __init__(self, client, uri: str):
        self._client = client
        self._uri = uri
        # MLflow logs the whole SQLAlchemy traceback before raising; the UserError says it all.
        logging.getLogger("mlflow.store.db.utils").addFilter(_drop_disk_full_records)

    def __getattr__(self, name: str):
        inner = self.__dict__.get("_client")
        if inner is None or name.startswith("_"):  # unpickling, private state: not ours
            raise AttributeError(name)
        attr = getattr(inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            artifact = self._artifact_destination(name, args, kwargs)
            where = str(artifact or store_location(self._uri))
            try:
                with disk_full_is_user_error(where, "MLflow " + ("artifact" if artifact else "data"),
                                             STORE_FULL_ADVICE):
                    return attr(*args, **kwargs)
            except DiskFullError:
                if isinstance(artifact, Path):  # a local copy cut short: remove the stub
                    artifact.unlink(missing_ok=True)
                raise

        return call

    def _artifact_destination(self, method: str, args: tuple, kwargs: dict) -> Path | str | None:
        """Where ``log_text`` / ``log_artifact`` / ``log_dict`` will put the file: a local path
        for a ``file://`` artifact store, else the artifact URI; None for other methods."""
        if method not in ARTIFACT_METHODS:
            return None
        run_id = args[0] if args else kwargs.get("run_id")
        try:
            root = self._client.get_run(run_id).info.artifact_uri
        except Exception:  # noqa: BLE001 (the call itself will report a bad run id)
            return None
        if method == "log_artifact":
            local = Path(args[1] if len(args) > 1 else kwargs["local_path"])
            folder = args[2] if len(args) > 2 else kwargs.get("artifact_path")
            relative = str(Path(folder or "") / local.name)
        else:
            relative = str(args[2] if len(args) > 2 else kwargs["artifact_file"])
        if root.startswith("file://"):
            return Path(root[len("file://"):]) / relative
        return root.rstrip("/") + "/" + relative


def _drop_disk_full_records(record: logging.LogRecord) -> bool:
    return SQLITE_FULL not in record.getMessage()


STORE_FULL_ADVICE = ("the failed write was not stored (runs logged before it are kept); free space "
                     "there or pass another --tracking-uri / MLFLOW_TRACKING_URI, then resume "
                     "(a benchmark: the printed command with --resume NAME)")


def store_location(uri: str) -> str:
    """What a full-disk message names: a SQLite store's database file, else the URI."""
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Raise ``UserError`` unless the tracking store at ``uri`` can be used.

    HTTP(S) servers must answer ``GET /health``; a SQLite file's directory must
    exist and be writable. Called before any compute is spent.
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (user-given URL)
                if resp.status != 200:
                    raise UserError(f"MLflow tracking server {uri} answered {resp.status} on /health; "
                                    "check that `mlflow server` is running there, or pass "
                                    "--tracking-uri / MLFLOW_TRACKING_URI")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"MLflow tracking server {uri} is unreachable ({reason}); start it "
                            "(docs/BENCHMARK.md) or pass another --tracking-uri / "
                            "MLFLOW_TRACKING_URI") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(f"MLflow SQLite store {uri}: folder {folder} does not exist or is not "
                            "writable; create it or pass another --tracking-uri")


def default_artifact_location(uri: str, name: str) -> str | None:
    """Artifacts of a SQLite store live beside the database (``<db folder>/mlartifacts/<name>``);
    MLflow's own default is ``./mlruns`` of whatever directory created the experiment. Other
    stores (a server) decide themselves (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri[len("sqlite:///"):]).parent
    return (folder / "mlartifacts" / name.replace("/", "_")).as_uri()


def store_lock(uri: str):
    """A lock serialising the creation of a SQLite store (a no-op context for other stores).

    MLflow creates and migrates a fresh SQLite schema without a lock: two processes starting
    together on a new ``mlflow.db`` fail with ``duplicate column name`` / ``table ... already
    exists`` (reproduced with two drivers). The lock file sits next to the database.
    """
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    return FileLock(uri[len("sqlite:///"):] + ".lock", timeout=STORE_LOCK_TIMEOUT_S)


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """Create the store (SQLite schema) and experiment ``name`` if needed; return its id.

    Done by the driver before trials start, under ``store_lock``: several processes
    migrating a fresh SQLite schema at once fail (docs/RAY.md).
    """
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    try:
        with store_lock(uri):
            client = StoreClient(MlflowClient(tracking_uri=uri), uri)
            client.search_experiments(max_results=1)  # creates / migrates the schema now, locked
            exp = client.get_experiment_by_name(name)
            if exp is None:
                return client.create_experiment(
                    name, artifact_location=artifact_location or default_artifact_location(uri, name))
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
    except Timeout:
        raise UserError(f"MLflow SQLite store {uri}: another process held {uri[len('sqlite:///'):]}"
                        f".lock for {STORE_LOCK_TIMEOUT_S} s; if none is running, delete that "
                        "file") from None
