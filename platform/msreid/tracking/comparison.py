"""What trials and benchmarks log so that cells compare in the MLflow UI without friction.

A trial's child run: a name leading with modality, model and backbone, a description
(``mlflow.note.content``), the ``msreid.cell`` tag to group seeds by, per-epoch curves at
step = epoch, final metrics once in % at step 0 (the UI then draws one bar per run), the manifest
as a dataset input, the selected checkpoint as an external LoggedModel linked to the final
metrics, the breakdown tables via ``log_table``. A benchmark's parent run: every table cell as
a metric (mean over seeds, std beside), the tables via ``log_table``, optionally the best seed
of each cell in the model registry. Units: Ray Tune keeps the fractions the training reports;
MLflow and the tables hold %.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
from mlflow.entities import Dataset
from mlflow.tracking import MlflowClient

from msreid.tracking import entities, runs, views
from msreid.tracking.tables import cell_metrics

log = logging.getLogger(__name__)

FINAL_PREFIXES = ("test/", "best_val/", "final_test/", "selection/")
FINAL_KEYS = ("best_epoch",)
NOT_CURVES = ("training_iteration",)  # `epoch` stays: the curves' x axis in the table views


def is_final(key: str) -> bool:
    """Keys the training reports once, at the end (logged at step 0, not as curves)."""
    return key.startswith(FINAL_PREFIXES) or key in FINAL_KEYS


def epoch_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The per-epoch part of a training report, retrieval metrics in %."""
    return runs.in_percent({k: v for k, v in metrics.items()
                            if not is_final(k) and k not in NOT_CURVES})


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The final part of a training report (or a TrainOutcome's metrics), retrieval metrics in %."""
    return runs.in_percent({k: v for k, v in metrics.items() if is_final(k)})


def from_percent(metrics: dict[str, float]) -> dict[str, float]:
    """MLflow's % values back to the fractions the training reports (for Ray Tune)."""
    return {k: v / 100.0 if runs.is_percent_metric(k) else v for k, v in metrics.items()}


def trial_identity(cells: list, seed: int, dataset: str, manifest: str, spectra, ablation: str,
                   backbone: str, epochs: int,
                   modality_dropout: float = 0.0) -> tuple[str, dict[str, str]]:
    """``(run name, tags)`` of a trial's child run: the name, the cell tag and the description."""
    name = runs.trial_run_name(spectra, ablation, backbone, seed, cells, modality_dropout)
    tags = {runs.TAG_CELL: runs.cell_key(cells[0]), **runs.row_tags(cells),
            runs.TAG_NOTE: runs.trial_description(cells, dataset, manifest, seed, epochs)}
    return name, tags


def metric_split(key: str) -> str | None:
    """The dataset context a final metric was measured on (None: not a measurement)."""
    if key.startswith(("test/", "final_test/")):
        return "test"
    if key.startswith(("best_val/", "selection/")):
        return "validation"
    return None


def _model_description(client: MlflowClient, run_id: str, checkpoint: str, metrics: dict,
                       params: dict | None) -> str:
    from msreid.tracking.tables import PROTOCOLS

    selection = str((params or {}).get("run.selection", "validation"))
    epoch = metrics.get("best_epoch")
    cell = client.get_run(run_id).data.tags.get(runs.TAG_CELL, "(not a table cell)")
    return entities.model_description(cell, PROTOCOLS.get(selection, selection),
                                      None if epoch is None else int(epoch), checkpoint, run_id)


def log_trial_result(client: MlflowClient, experiment_id: str, run_id: str, run_name: str,
                     metrics: dict[str, Any], checkpoint: str | None, artifacts_dir: str | None,
                     dataset: Dataset | None, params: dict | None = None) -> dict[str, float]:
    """Log a finished trial's final metrics (in %, step 0) linked to its checkpoint's LoggedModel
    and to the dataset context they were measured on, and its breakdown tables; returns the
    logged metrics."""
    final = final_metrics(metrics)
    parts: dict[str, Dataset] = {}
    if dataset is not None:
        splits = tuple(s for s in entities.SPLITS
                       if s != "validation" or any(metric_split(k) == "validation" for k in final))
        parts = entities.log_dataset_inputs(client, run_id, dataset, splits)
    model_id = None
    if checkpoint:
        model_id = entities.log_checkpoint_model(
            client, experiment_id, run_id, run_name, str(checkpoint), params,
            _model_description(client, run_id, str(checkpoint), final, params))
    client.set_tag(run_id, runs.TAG_UNITS, "percent")
    groups: dict[str | None, dict[str, float]] = {}
    for key, value in final.items():
        groups.setdefault(metric_split(key), {})[key] = value
    for split, values in groups.items():
        part = parts.get(split) if split else None
        digest = (part.name, part.digest) if part is not None else None
        runs.log_final_metrics(client, run_id, values, model_id=model_id, dataset=digest)
    if artifacts_dir:
        entities.log_breakdowns(client, run_id, artifacts_dir)
    return final


def log_parent_results(client: MlflowClient, parent: str, suite, frames: dict) -> None:
    """Every cell as a parent metric (mean over seeds in %, ``_std`` beside) and every table via
    ``log_table`` (``tables/<name>.json``), which the UI compares across runs. ``suite``: the
    benchmark's grid Suite."""
    runs.log_metrics(client, parent, cell_metrics(suite, frames), step=runs.FINAL_STEP)
    for name, frame in frames.items():
        entities.log_table(client, parent, frame, f"tables/{name}.json")
    log_table_figures(client, parent, suite, frames)


def log_table_figures(client: MlflowClient, parent: str, suite, frames: dict) -> None:
    """``figures/<table>.png`` on the parent: each table as labelled bars, ours beside the paper,
    with the seed spread (``figures.table_figure``)."""
    import tempfile
    from pathlib import Path

    from msreid.tracking.figures import table_figure

    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in frames.items():
            table = suite.table(name)
            path = table_figure(frame, table.row_label, table.column_label, list(table.metrics),
                                table.title or name, Path(tmp) / f"{name}.png")
            client.log_artifact(parent, str(path), "figures")


def paper_references(suite, frames: dict) -> dict[tuple, dict[str, float]]:
    """``{(table, row, column): {"paper/<table>/<metric>": value}}`` from the assembled tables
    (cells the paper has no number for are left out)."""
    out: dict[tuple, dict[str, float]] = {}
    for name, frame in frames.items():
        table = suite.table(name)
        for line in frame.to_dict("records"):
            cell = (name, str(line[table.row_label]), str(line[table.column_label]))
            values = {views.paper_metric(name, m): float(line[f"{m}_paper"]) for m in table.metrics
                      if not math.isnan(float(line[f"{m}_paper"]))}
            if values:
                out[cell] = values
    return out


def seed_spread(values: list[float], metric: str) -> dict[str, float]:
    """``seeds/<metric>_min|_max|_std`` of a cell's per-seed values (empty for one seed); std is
    the sample standard deviation, as in the tables."""
    if len(values) < 2:
        return {}
    low, high, std = views.spread_metrics(metric)
    return {low: min(values), high: max(values), std: float(np.std(values, ddof=1))}


def log_cell_references(client: MlflowClient, experiment_id: str, parent: str, suite,
                        frames: dict) -> int:
    """On every finished child of ``parent``: the paper's value of each of its cells
    (``paper/<table>/<metric>``) and its cell's seed spread, at step 0, so a table's view shows
    them beside ours. Returns how many runs got them."""
    papers = paper_references(suite, frames)
    metrics = sorted({m for t in suite.tables for m in t.metrics})
    kids = [k for k in runs.children(client, experiment_id, parent)
            if k.info.status == "FINISHED" and "test/mAP" in k.data.metrics]
    by_cell: dict[str, list] = {}
    for kid in kids:
        by_cell.setdefault(kid.data.tags.get(runs.TAG_CELL, kid.info.run_id), []).append(kid)
    for group in by_cell.values():
        spread = {}
        for metric in metrics:
            values = [k.data.metrics[f"test/{metric}"] for k in group
                      if f"test/{metric}" in k.data.metrics]
            spread.update(seed_spread(values, metric))
        for kid in group:
            ref = dict(spread)
            for cell in json.loads(kid.data.tags.get(runs.TAG_CELLS, "[]")):
                ref.update(papers.get(tuple(cell), {}))
            runs.log_metrics(client, kid.info.run_id, ref, step=runs.FINAL_STEP)
    return len(kids)


def register_best_models(client: MlflowClient, experiment_id: str, parent: str,
                         prefix: str = "msreid") -> dict[str, str]:
    """Register the LoggedModel of each cell's best seed (by validation mAP, never test) as
    ``<prefix>-<table>-<row>-<column>``; returns ``{cell key: registered model name}``."""
    best: dict[tuple, Any] = {}
    for child in runs.children(client, experiment_id, parent):
        tags, score = child.data.tags, child.data.metrics.get("best_val/mAP")
        if child.info.status != "FINISHED" or entities.TAG_MODEL_ID not in tags or score is None:
            continue
        for cell in json.loads(tags.get(runs.TAG_CELLS, "[]")):
            cell = tuple(cell)
            if cell not in best or score > best[cell].data.metrics["best_val/mAP"]:
                best[cell] = child
    registered = {}
    for cell, child in best.items():
        name = entities.model_name(" ".join((prefix, *cell)))
        entities.register_model(client, name, child.data.tags[entities.TAG_MODEL_ID],
                                child.info.run_id)
        registered[runs.cell_key(cell)] = name
    return registered
