"""Where MLflow data goes: tracking URI resolution, reachability, experiments.

The default store is ``sqlite:///<cwd>/mlflow.db`` as an ABSOLUTE URI (Tune
changes each trial's working directory, so a relative URI would scatter
databases), the same file ``make ui`` serves. ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` point anywhere else (``http://head:5000``,
``postgresql://...``).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from msreid.errors import UserError

DEFAULT_DB_NAME = "mlflow.db"


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


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """Create the store (SQLite schema) and experiment ``name`` if needed; return its id.

    Done by the driver before trials start: several processes migrating a fresh
    SQLite schema at once fail with "database is locked" (docs/RAY.md).
    """
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(
        name, artifact_location=artifact_location or default_artifact_location(uri, name))
