"""Parent / child MLflow runs, found again by stable tags instead of created twice.

One parent run per benchmark invocation (tag ``msreid.benchmark`` = the Tune
experiment name; ``--resume`` finds and reuses it) and one child per trial
(tag ``msreid.trial_key`` = cell x seed hash, plus ``mlflow.parentRunId``).
Everything goes through ``MlflowClient`` with an explicit tracking URI: no
global ``mlflow.set_tracking_uri`` / active-run state, which Tune's worker
processes would not share (and docs/RAY.md on MLflowLoggerCallback).
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
from pathlib import Path
from typing import Any, Iterable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

TAG_KIND = "msreid.kind"            # "benchmark" (parent), "trial" (child), "tune_alpha" (parent)
TAG_BENCHMARK = "msreid.benchmark"  # Tune experiment name, shared by the parent and its children
TAG_TRIAL = "msreid.trial_key"
TAG_CELLS = "msreid.cells"          # JSON list of [table, row, column] fed by this trial
TAG_SEED = "msreid.seed"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"

_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call


@functools.lru_cache(maxsize=8)
def client_for(uri: str) -> MlflowClient:
    """A client bound to ``uri`` (never the process-global tracking URI), one per process.

    Cached: building a client opens the store (for SQLite: an engine and a schema
    check), which costs about a second per call when done per epoch.
    """
    return MlflowClient(tracking_uri=uri)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def find_runs(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> list:
    """Runs of the experiment whose tags equal ``tags``, newest first."""
    query = " and ".join(f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items())
    return client.search_runs([experiment_id], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=1000)


def get_or_create_run(client: MlflowClient, experiment_id: str, key_tags: dict[str, str],
                      run_name: str, extra_tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """The run tagged ``key_tags`` (reused, set RUNNING unless FINISHED) or a new one.

    Returns ``(run_id, created)``.
    """
    existing = find_runs(client, experiment_id, key_tags)
    if existing:
        run = existing[0]
        if run.info.status != "FINISHED":
            client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, False
    tags = {**key_tags, **(extra_tags or {}), TAG_RUN_NAME: run_name}
    run = client.create_run(experiment_id, tags=tags, run_name=run_name)
    return run.info.run_id, True


def get_or_create_parent(client: MlflowClient, experiment_id: str, benchmark: str,
                         kind: str = "benchmark", tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """The parent run of benchmark ``benchmark`` (reused on resume)."""
    return get_or_create_run(client, experiment_id, {TAG_KIND: kind, TAG_BENCHMARK: benchmark},
                             run_name=benchmark, extra_tags=tags)


def get_or_create_child(client: MlflowClient, experiment_id: str, parent_run_id: str,
                        trial_key: str, run_name: str,
                        tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """The child run of ``trial_key`` under ``parent_run_id`` (reused when the trial is retried)."""
    key = {TAG_KIND: "trial", TAG_PARENT: parent_run_id, TAG_TRIAL: trial_key}
    return get_or_create_run(client, experiment_id, key, run_name=run_name, extra_tags=tags)


def children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    """All child runs of a parent, newest first."""
    return find_runs(client, experiment_id, {TAG_PARENT: parent_run_id})


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]  # MLflow's param value limit


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log a flat dict as params, skipping keys already logged (params are immutable)."""
    have = client.get_run(run_id).data.params
    todo = [Param(k, _param_value(v)) for k, v in params.items() if k not in have]
    for i in range(0, len(todo), _BATCH):
        client.log_batch(run_id, params=todo[i:i + _BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, Any], step: int = 0,
                timestamp_ms: int | None = None) -> None:
    """Log the finite numeric entries of ``metrics`` at ``step``."""
    import time

    ts = timestamp_ms or int(time.time() * 1000)
    items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i:i + 1000])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    """Set several tags at once (values turned into strings)."""
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_text(client: MlflowClient, run_id: str, text: str, artifact_file: str) -> None:
    """Write ``text`` as an artifact file at ``artifact_file`` (e.g. 'tables/table3.md')."""
    client.log_text(run_id, text, artifact_file)


def log_files(client: MlflowClient, run_id: str, paths: Iterable[str | Path],
              artifact_path: str | None = None) -> None:
    """Upload existing files as artifacts under ``artifact_path``."""
    for path in paths:
        if Path(path).is_file():
            client.log_artifact(run_id, str(path), artifact_path)


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit hash of the source tree msreid runs from (with '-dirty' when modified), or None."""
    import msreid

    where = Path(cwd) if cwd else Path(msreid.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")
