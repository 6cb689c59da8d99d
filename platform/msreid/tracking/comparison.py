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
from typing import Any

from mlflow.entities import Dataset
from mlflow.tracking import MlflowClient

from msreid.tracking import entities, runs
from msreid.tracking.tables import cell_metrics

log = logging.getLogger(__name__)

FINAL_PREFIXES = ("test/", "best_val/", "final_test/", "selection/")
FINAL_KEYS = ("best_epoch",)
NOT_CURVES = ("epoch", "training_iteration")  # the step already says which epoch


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
    tags = {runs.TAG_CELL: runs.cell_key(cells[0]),
            runs.TAG_NOTE: runs.trial_description(cells, dataset, manifest, seed, epochs)}
    return name, tags


def log_trial_result(client: MlflowClient, experiment_id: str, run_id: str, run_name: str,
                     metrics: dict[str, Any], checkpoint: str | None, artifacts_dir: str | None,
                     dataset: Dataset | None, params: dict | None = None) -> dict[str, float]:
    """Log a finished trial's final metrics (in %, step 0) linked to its checkpoint's LoggedModel
    and its dataset, and its breakdown tables; returns the logged metrics."""
    if dataset is not None:
        entities.log_dataset_input(client, run_id, dataset)
    model_id = None
    if checkpoint:
        model_id = entities.log_checkpoint_model(client, experiment_id, run_id, run_name,
                                                 str(checkpoint), params)
    final = final_metrics(metrics)
    client.set_tag(run_id, runs.TAG_UNITS, "percent")
    digest = (dataset.name, dataset.digest) if dataset is not None else None
    runs.log_final_metrics(client, run_id, final, model_id=model_id, dataset=digest)
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
