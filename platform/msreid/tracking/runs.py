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

from msreid.tracking.store import StoreClient

TAG_KIND = "msreid.kind"            # "benchmark" (parent), "trial" (child), "tune_alpha" (parent)
TAG_BENCHMARK = "msreid.benchmark"  # Tune experiment name, shared by the parent and its children
TAG_TRIAL = "msreid.trial_key"
TAG_CELLS = "msreid.cells"          # JSON list of [table, row, column] fed by this trial
TAG_SEED = "msreid.seed"
TAG_CELL = "msreid.cell"            # readable key of the run's (first) cell, for the UI's Group-by
TAG_ROW_PREFIX = "msreid.row."      # msreid.row.<table> = "<row> / <column>": the run feeds that table
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_NOTE = "mlflow.note.content"    # the run's description in the UI
TAG_UNITS = "msreid.units"          # "percent": retrieval metrics in %; absent: fractions (older runs)
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_DIRTY = "mlflow.source.git.dirty"
CONTEXT_TAGS = ("mlflow.user", "mlflow.source.name", "mlflow.source.type")

PERCENT_PREFIXES = ("test/", "val/", "best_val/", "final_test/")
PERCENT_METRICS = ("mAP", "mINP")  # and every CMC rank R<k>
PERCENT_KEYS = ("selection/margin", "selection/resolution")  # differences of val mAPs
TAG_WITHIN_NOISE = "msreid.selection_within_noise"  # "true": best and runner-up val mAP < 1 query apart
FINAL_STEP = 0
"""Final metrics are logged once at step 0: the UI draws a metric whose every step is 0 as a bar
chart (one bar per run), any later step turns it into a line chart."""

_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call


@functools.lru_cache(maxsize=8)
def client_for(uri: str) -> MlflowClient:
    """A client bound to ``uri`` (never the process-global tracking URI), one per process.

    Cached: building a client opens the store (for SQLite: an engine and a schema
    check), which costs about a second per call when done per epoch. A ``StoreClient``:
    a full disk under the store is one ``UserError`` naming it.
    """
    return StoreClient(MlflowClient(tracking_uri=uri), uri)


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

    ``extra_tags`` should hold ``context_tags()`` of the driver: a client-created
    run gets none of MLflow's context tags by itself. Returns ``(run_id, created)``.
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


def git_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """MLflow's git tags for the source tree msreid runs from: the bare commit hash (what the UI
    links) and ``mlflow.source.git.dirty`` = "true"/"false"; empty outside a git checkout."""
    import msreid

    where = Path(cwd) if cwd else Path(msreid.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {TAG_GIT_COMMIT: head, TAG_GIT_DIRTY: str(bool(dirty)).lower()}


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The bare commit hash of the source tree msreid runs from, or None."""
    return git_tags(cwd).get(TAG_GIT_COMMIT)


def context_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """The standard tags ``mlflow.start_run`` would set (user, source name and type) from MLflow's
    own context-provider registry, plus the git tags of msreid's checkout.

    Resolved once in the driver and passed to every run it and its trials create:
    a Tune worker's "source" would be Ray's worker script.
    """
    from mlflow.tracking.context.registry import resolve_tags

    resolved = resolve_tags()
    tags = {k: resolved[k] for k in CONTEXT_TAGS if resolved.get(k)}
    return {**tags, **git_tags(cwd)}


def is_percent_metric(key: str) -> bool:
    """Whether ``key`` is a retrieval metric reported in % (``test/mAP``, ``val/R1``, ...)."""
    if key in PERCENT_KEYS:
        return True
    prefix, _, name = key.rpartition("/")
    if prefix + "/" not in PERCENT_PREFIXES:
        return False
    return name in PERCENT_METRICS or (name[:1] == "R" and name[1:].isdigit())


def in_percent(metrics: dict[str, Any], digits: int = 4) -> dict[str, float]:
    """Numeric finite entries of ``metrics``; retrieval metrics (fractions) turned into % rounded to
    ``digits`` decimals (tables print 1), everything else (loss, lr, epoch) unchanged."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[key] = round(100.0 * value, digits) if is_percent_metric(key) else float(value)
    return out


def stored_in_percent(run) -> dict[str, float]:
    """A run's metrics with retrieval metrics in %, whether it logged % (tag ``msreid.units``) or,
    like runs logged before it existed, fractions."""
    metrics = dict(run.data.metrics)
    return metrics if run.data.tags.get(TAG_UNITS) == "percent" else in_percent(metrics)


def log_final_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float],
                      model_id: str | None = None, dataset: tuple[str, str] | None = None) -> None:
    """Log a trial's final metrics once, at step ``FINAL_STEP``, linked to the logged model
    ``model_id`` and the dataset ``(name, digest)`` when given (the UI's model page lists them)."""
    import time

    now = int(time.time() * 1000)
    name, digest = dataset if dataset else (None, None)
    items = [Metric(k, float(v), now, FINAL_STEP, model_id=model_id, dataset_name=name,
                    dataset_digest=digest) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i:i + 1000])


def modality_label(spectra: Iterable[str]) -> str:
    """The paper's modality names: ``[rgb]`` -> RGB, ``[rgb, nir, tir]`` -> RGB-N-T."""
    names = [s.upper() for s in spectra]
    if not names:
        return "all spectra"
    return "-".join([names[0]] + [n[0] for n in names[1:]])


def cell_key(cell: Iterable[str]) -> str:
    """The readable ``msreid.cell`` tag of a (table, row, column) cell: ``table3 / RGB-N-T MSN / R50``.
    Runs of one cell differ only by seed, so Group-by on this tag averages seeds."""
    return " / ".join(str(part) for part in cell)


def row_tag(table: str) -> str:
    """The tag a run feeding ``table`` carries (the table's view filters and groups by it)."""
    return TAG_ROW_PREFIX + table


def row_tags(cells: Iterable[Iterable[str]]) -> dict[str, str]:
    """``{msreid.row.<table>: "<row> / <column>"}`` for each table a trial's cells belong to; a run
    shared by Table 3 and Table 5 carries both, so each table's view selects exactly its rows."""
    out: dict[str, list[str]] = {}
    for table, row, col in (tuple(c) for c in cells):
        out.setdefault(row_tag(str(table)), []).append(f"{row} / {col}")
    return {tag: "; ".join(labels) for tag, labels in out.items()}


def trial_run_name(spectra: Iterable[str], ablation: str, backbone: str, seed: int,
                   cells: Iterable[Iterable[str]], modality_dropout: float = 0.0) -> str:
    """What tells runs apart first (the UI truncates names): modality, model (with its modality
    dropout when on), backbone, then the seed, then the table(s):
    ``RGB-N-T MSN resnet50 · s0 · table3+table5``, ``RGB-N-T MSN drop0.3 test_resnet · s1 · robustness``."""
    # torch + timm come with the losses: late, so `msreid ui` / `report` (which import this
    # module but never name a trial) start without them
    from msreid.losses import ABLATION_LABELS

    tables = list(dict.fromkeys(str(next(iter(c))) for c in cells))
    model = ABLATION_LABELS.get(ablation, ablation)
    if modality_dropout > 0:
        model += f" drop{modality_dropout:g}"
    return f"{modality_label(spectra)} {model} {backbone} · s{seed} · {'+'.join(tables)}"


def trial_description(cells: list, dataset: str, manifest: str, seed: int, epochs: int) -> str:
    """The run's description (markdown, ``mlflow.note.content``): its cells and the protocol."""
    lines = [f"**Cell** {cell_key(cells[0])}" + (f" (also {', '.join(cell_key(c) for c in cells[1:])})"
                                                if len(cells) > 1 else ""),
             "",
             f"Dataset `{dataset}` (manifest `{manifest}`), seed {seed}, {epochs} epoch(s).",
             "",
             "Protocol: the checkpoint with the best validation mAP is selected; `test/*` are the "
             "test set's query-vs-gallery metrics of that checkpoint, in % (CMC rank-k `R<k>`, "
             "mAP, mINP), logged once at step 0. `best_val/*` is the selected epoch's validation; "
             "`selection/margin` (best minus runner-up val mAP) below `selection/resolution` "
             "(one validation query's worth) sets `selection/within_noise` = 1 and the "
             f"`{TAG_WITHIN_NOISE}` tag: the validation could not tell the two epochs apart; "
             "per-epoch curves (`train/*`, `val/*`) use step = epoch. A table cell is the mean "
             "over seeds: group runs by the `msreid.cell` tag."]
    return "\n".join(lines)

