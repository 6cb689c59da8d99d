"""MLflow 3 entities of a trial: its manifest as a dataset input, its selected checkpoint as a
LoggedModel (optionally registered), its breakdown tables, its system metrics.

The checkpoint is an *external* LoggedModel (``flavor: external``): MLflow records the model,
its params and the metrics linked to it, and the tag ``msreid.checkpoint`` points at the Ray
checkpoint directory, which stays where Ray Train wrote it (shared storage on a cluster). Why not
``mlflow.pytorch.log_model``: it would copy every trial's weights (a ResNet50 is ~100 MB; the
paper suite has hundreds of trials) into the artifact store and pickle msreid's classes, while the
checkpoint directory already holds the selected weights in the format ``msreid`` and the figures
read (``msreid.train.checkpoint.load_model``). See docs/BENCHMARK.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Iterator

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, LoggedModelStatus
from mlflow.tracking import MlflowClient

from msreid.tracking.runs import is_percent_metric

log = logging.getLogger(__name__)

TAG_CHECKPOINT = "msreid.checkpoint"
TAG_MODEL_ID = "msreid.model_id"
TAG_NOTE = "mlflow.note.content"  # a run's or a LoggedModel's description in the UI
DIGEST_LENGTH = 36  # MLflow's SQL stores hold dataset digests of at most 36 characters
BREAKDOWNS = {"missing_modality.csv": "tables/missing_modality.json",
              "per_challenge.csv": "tables/per_challenge.json"}


def manifest_dataset(name: str, uri: str, fingerprint: str, num_rows: int | None = None) -> Dataset:
    """The MLflow dataset of a manifest: digest = the fingerprint's first 36 hex characters (the
    whole sha256 is in the profile), source = its URI."""
    scheme = uri.split("://", 1)[0] if "://" in uri else "local"
    if scheme == "local":
        uri = str(Path(uri).resolve())
    profile = {"fingerprint": fingerprint, **({"num_rows": num_rows} if num_rows is not None else {})}
    return Dataset(name=name, digest=fingerprint[:DIGEST_LENGTH], source_type=scheme,
                   source=json.dumps({"uri": uri}), profile=json.dumps(profile))


SPLITS = {"train": "the train split's identities minus those held out for validation",
          "validation": "the train identities held out for validation (query vs gallery), which "
                        "select the checkpoint",
          "test": "the query and gallery splits (test/* metrics)"}
"""The parts of a manifest a trial uses, as MLflow dataset contexts."""


def split_dataset(dataset: Dataset, split: str) -> Dataset:
    """The manifest's dataset for one context: name ``<name>/<split>``, same digest and source
    (MLflow keeps one input per dataset name and digest, so each context needs its own name)."""
    profile = {**json.loads(dataset.profile or "{}"), "split": split, "rows": SPLITS[split]}
    return Dataset(name=f"{dataset.name}/{split}", digest=dataset.digest,
                   source_type=dataset.source_type, source=dataset.source,
                   profile=json.dumps(profile))


def log_dataset_inputs(client: MlflowClient, run_id: str, dataset: Dataset,
                       splits: tuple[str, ...] = tuple(SPLITS)) -> dict[str, Dataset]:
    """Record the manifest once per context it served (``train``, ``validation``, ``test``) as
    inputs of the run (the runs table's Dataset column); returns ``{split: dataset}``."""
    parts = {split: split_dataset(dataset, split) for split in splits}
    client.log_inputs(run_id, [DatasetInput(d, [InputTag("mlflow.data.context", split)])
                               for split, d in parts.items()])
    return parts


def model_name(text: str) -> str:
    """A LoggedModel / registered model name from free text (MLflow refuses / : . % " ')."""
    keep = [ch if ch.isalnum() or ch in "-_+ " else " " for ch in text]
    return "-".join("".join(keep).split())[:200] or "model"


def model_description(cell: str, protocol: str, epoch: int | None, checkpoint: str,
                      run_id: str) -> str:
    """The LoggedModel's description (markdown): its cell, how its weights were selected, where
    they are and how to load them."""
    chosen = f"epoch {epoch}" if epoch is not None else "the selected epoch"
    return "\n".join([
        f"**Cell** {cell}", "",
        f"Protocol: {protocol}. Weights: {chosen} (`best_model.pt`; `model.pt` beside it holds the "
        f"last epoch) in the checkpoint directory", "", f"`{checkpoint}`", "",
        f"Source run `{run_id}`. Load with `msreid.train.checkpoint.load_model(<directory>)`; "
        "the MLmodel here is MLflow's external-model pointer, the weights stay in Ray's storage."])


def log_checkpoint_model(client: MlflowClient, experiment_id: str, run_id: str, name: str,
                         checkpoint: str, params: dict | None = None,
                         description: str = "") -> str:
    """An external LoggedModel for ``checkpoint`` as the run's output; returns its model id.

    Its MLmodel file is MLflow's external-model spec (what ``mlflow.create_external_model``
    writes), so the model can be registered. ``description``: the model page's description.
    """
    from mlflow.models.utils import get_external_mlflow_model_spec
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_IS_EXTERNAL

    params = {k: str(v)[:6000] for k, v in (params or {}).items()}
    model = client.create_logged_model(
        experiment_id, name=model_name(name), source_run_id=run_id, params=params,
        model_type="msreid", tags={MLFLOW_MODEL_IS_EXTERNAL: "true", TAG_CHECKPOINT: checkpoint,
                                   **({TAG_NOTE: description} if description else {})})
    with tempfile.TemporaryDirectory() as tmp:
        get_external_mlflow_model_spec(model).save(str(Path(tmp) / "MLmodel"))
        client.log_model_artifacts(model.model_id, tmp)
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    client.set_tag(run_id, TAG_MODEL_ID, model.model_id)
    return model.model_id


def checkpoint_of(client: MlflowClient, model_id: str) -> str:
    """The Ray checkpoint directory a LoggedModel points at (load it with
    ``msreid.train.checkpoint.load_model``)."""
    return client.get_logged_model(model_id).tags[TAG_CHECKPOINT]


def register_model(client: MlflowClient, name: str, model_id: str, run_id: str) -> str:
    """Register LoggedModel ``model_id`` as a new version of registered model ``name``; returns the
    version."""
    from mlflow.exceptions import MlflowException

    name = model_name(name)
    try:
        client.get_registered_model(name)
        for version in client.search_model_versions(f"name = '{name}'"):
            if version.run_id == run_id:  # registered by an earlier (resumed) invocation
                return str(version.version)
    except MlflowException:
        client.create_registered_model(name, description="msreid: best seed of one table cell "
                                                         "(selected by validation mAP)")
    # The model's artifact location, not models:/<id>: that would be resolved against the
    # process-global tracking URI instead of this client's.
    source = client.get_logged_model(model_id).artifact_location
    version = client.create_model_version(name, source=source, run_id=run_id, model_id=model_id)
    return str(version.version)


def log_table(client: MlflowClient, run_id: str, frame: pd.DataFrame, artifact_file: str) -> None:
    """``client.log_table`` (the UI compares such tables across runs), but a second call replaces
    the table instead of appending to it (a resumed benchmark logs its tables again)."""
    folder = str(Path(artifact_file).parent) if "/" in artifact_file else None
    if artifact_file in {a.path for a in client.list_artifacts(run_id, folder)}:
        client.log_text(run_id, frame.to_json(orient="split", index=False), artifact_file)
    else:
        client.log_table(run_id, frame, artifact_file)


PERCENT_DIGITS = 2
"""Breakdown tables in % with 2 decimals: one test query of 100 moves mAP by up to 1 point."""


def percent_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A breakdown frame with its metric columns (mAP, mINP, R<k>, CMC) in %, 2 decimals."""
    out = frame.copy()
    for column in out.columns:
        if is_percent_metric(f"test/{column}") or column == "cmc":
            out[column] = (100.0 * out[column].astype(float)).round(PERCENT_DIGITS)
    return out


def percent_csv(path: str | Path, out_dir: str | Path) -> Path:
    """``path`` (an evaluation CSV in fractions) rewritten in % under ``out_dir``, same name."""
    out = Path(out_dir) / Path(path).name
    percent_columns(pd.read_csv(path)).to_csv(out, index=False)
    return out


def log_breakdowns(client: MlflowClient, run_id: str, artifacts_dir: str | Path) -> list[str]:
    """The missing-modality and per-challenge tables of a trial, in %, with ``log_table``."""
    logged = []
    for csv_name, artifact_file in BREAKDOWNS.items():
        path = Path(artifacts_dir) / csv_name
        if path.is_file():
            log_table(client, run_id, percent_columns(pd.read_csv(path)), artifact_file)
            logged.append(artifact_file)
    return logged


@contextlib.contextmanager
def system_metrics(tracking_uri: str, run_id: str, enabled: bool,
                   interval_s: float = 10.0) -> Iterator[None]:
    """Log CPU / memory / disk / network (and GPU when present) as ``system/*`` metrics of the run
    while the block runs, when ``enabled`` (MLflow's own monitor, sampled every ``interval_s``)."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=True,
                                   tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
