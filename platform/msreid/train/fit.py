"""``fit(cfg, ...)``: one training run, the driver side.

Everything that can be checked before Ray starts is checked here and raised
as one ``UserError``: the manifest, the spectra, the model choices, the
batch plan against the number of train ids and tuples, the validation split.
Then the manifest goes into Ray's object store (``pipeline.load_manifest``),
every epoch's batches are planned from (seed, epoch) (``msreid.train.plan``),
and ``msreid.train.loop`` runs in a session chosen once here
(``msreid.train.session``): on ``cfg.run.num_workers`` workers of a Ray Train
``TorchTrainer`` (``msreid.train.trainer``), or with ``num_workers=0`` in this
process (local mode, no trainer). Ray is joined or started by
``msreid.train.ray_runtime``, GPUs checked by ``msreid.train.resources``.

The run lives in ``<storage_path>/<name>``; the name carries no timestamp, so
calling ``fit`` again with the same pair resumes from the last checkpoint
(and returns at once when the run had finished).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pyarrow.fs as pafs
import ray.train

from msreid.config import TrainConfig, changed_settings, check_against_manifest, config_to_dict
from msreid.data.schema import manifest_info, verify_manifest
from msreid.errors import UserError
from msreid.models import EMBED_AT, EMBEDDINGS, NECKS, resolve_backbone
from msreid.train import checkpoint as ck
from msreid.train import loop
from msreid.train.pipeline import load_manifest
from msreid.train.plan import plan_epochs, split_for_run
from msreid.train.ray_runtime import cluster_address, init_ray
from msreid.train.resources import check_resources
from msreid.train.session import (
    LocalSession,
    RaySession,
    RunMirror,
    latest_run_checkpoint,
    local_scratch,
    read_json,
)
from msreid.train.trainer import build_trainer, run_datasets, train_job


@dataclass(frozen=True)
class TrainOutcome:
    """What a finished run hands back (read from its final checkpoint)."""

    metrics: dict[str, float]  # final: test/* (selected model), final_test/* if asked, ...
    history: list[dict]  # one dict per epoch as reported, then the final metrics
    checkpoint_path: str  # final checkpoint dir: best_model.pt (selected), model.pt (last)
    artifacts_dir: str  # where cmc.csv, missing_modality.csv, per_challenge.csv, ranking.json are
    checkpoint_uri: str = ""  # where the final checkpoint is stored (object storage: the URI)
    local_copy: str = ""  # object storage: the temporary local copy the paths above point into

    @property
    def stored_at(self) -> str:
        """The final checkpoint's lasting address (its URI on object storage)."""
        return self.checkpoint_uri or self.checkpoint_path

    def release(self) -> None:
        """Remove the temporary local copy of a run stored on object storage (no-op otherwise)."""
        if self.local_copy:
            shutil.rmtree(self.local_copy, ignore_errors=True)


def resolve_spectra_and_size(cfg: TrainConfig) -> tuple[tuple[str, ...], tuple[int, int]]:
    """The spectra to train on and the (H, W) input size; checks the model choices."""
    info = manifest_info(cfg.data.manifest) if cfg.data.manifest else None
    if info is None:
        raise UserError("data.manifest is empty: give data.manifest=PATH_OR_URI (a manifest "
                        "written by `msreid ingest`)")
    spectra = check_against_manifest(cfg, info.spectra)
    for key, value, choices in (("model.neck", cfg.model.neck, NECKS),
                                ("model.embedding", cfg.model.embedding, EMBEDDINGS),
                                ("model.embed_at", cfg.model.embed_at, EMBED_AT)):
        if value not in choices:
            raise UserError(f"{key}={value!r} is not valid: use one of {', '.join(choices)}")
    spec = resolve_backbone(cfg.model.backbone)  # UserError naming the valid backbones
    return spectra, tuple(cfg.data.image_size or spec.input_size)


def _outcome(checkpoint: ray.train.Checkpoint | None, where: str, *, stored_at: str = "",
             local_copy: str = "") -> TrainOutcome:
    if checkpoint is None:
        raise RuntimeError(f"the run {where} ended without a checkpoint")
    if not isinstance(checkpoint.filesystem, pafs.LocalFileSystem):  # object storage: a local copy
        local_copy = tempfile.mkdtemp(prefix="msreid-outcome-", dir=local_scratch())
        stored_at = f"{checkpoint.filesystem.type_name}://{checkpoint.path}"
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint.to_directory(
            str(Path(local_copy, Path(checkpoint.path).name))))
    with checkpoint.as_directory() as d:
        metrics = ck.load_json(d, ck.FINAL_METRICS_FILE)
        history = ck.load_json(d, ck.HISTORY_FILE, [])
    if metrics is None:
        raise RuntimeError(f"checkpoint {checkpoint.path} is not a final checkpoint")
    if not history or history[-1] != metrics:
        history = [*history, metrics]
    path = str(checkpoint.path)
    return TrainOutcome(metrics=metrics, history=history, checkpoint_path=path,
                        artifacts_dir=path, checkpoint_uri=stored_at, local_copy=local_copy)


def _run_dir(storage_path: str, name: str) -> str:
    if "://" not in storage_path:
        return str(Path(storage_path).absolute() / name)
    return f"{storage_path.rstrip('/')}/{name}"


def check_reuse(cfg: TrainConfig, run_dir: str) -> None:
    """Continue or return a run already in ``run_dir`` only when its settings are ``cfg``'s.

    Compares the config stored in the latest checkpoint with ``cfg`` on every
    setting that can change a number (``config.changed_settings``); the worker
    count is one of them. UserError when they differ; otherwise says on the
    console whether the finished run is reused or an unfinished one resumed.
    """
    where = latest_run_checkpoint(run_dir)
    old = read_json(where, ck.CONFIG_FILE)
    if old is None:
        return
    changed = changed_settings(old, config_to_dict(cfg))
    if changed:
        raise UserError(f"{run_dir} already holds a run with other settings "
                        f"({'; '.join(changed)}): its numbers are not this config's. Give "
                        "the run another name (msreid train --name NAME) or delete that "
                        "directory")
    if read_json(where, ck.FINAL_METRICS_FILE) is not None:
        print(f"msreid: reusing the finished run in {where} (every setting that can change "
              "its numbers matches); nothing is trained", file=sys.stderr, flush=True)
    else:
        print(f"msreid: resuming the unfinished run in {run_dir} from {where}",
              file=sys.stderr, flush=True)


def fit(cfg: TrainConfig, *, storage_path: str, name: str, callbacks: Sequence = (),
        max_failures: int = 0, ray_address: str | None = None,
        epoch_hooks: Sequence[Callable[[int, int], None]] = ()) -> TrainOutcome:
    """Train ``cfg`` to the end (or resume it) and evaluate the test set once.

    storage_path: local directory (or URI with num_workers >= 1; shared storage
    on a cluster); name: the run's stable directory name. callbacks: Ray Train
    ``UserCallback``s (e.g. Tune's ``TuneReportCallback``), called with rank 0's
    report of every epoch in both modes. epoch_hooks: ``hook(epoch, rank)``
    called in every worker at the start of every epoch (picklable; tests
    inject faults with it). max_failures: worker-group restarts (Ray mode).
    """
    spectra, size = resolve_spectra_and_size(cfg)
    verify_manifest(cfg.data.manifest)  # every part byte as ingested, before Ray reads it
    callbacks = list(callbacks or ())
    local = cfg.run.num_workers == 0  # the one place the mode is chosen
    world = 1 if local else cfg.run.num_workers  # processes sharing every global batch
    init_ray(ray_address, train_cpus=0.0 if local else world * cfg.run.cpus_per_worker)
    check_resources(cfg, local=local, joined=cluster_address(ray_address) is not None)
    index, meta = load_manifest(cfg.data.manifest, num_cpus=cfg.data.decode_cpus)
    rows, validate = split_for_run(cfg, meta)
    plan = plan_epochs(cfg, rows)
    run_dir = _run_dir(storage_path, name)
    if local:
        return _fit_local(cfg, callbacks, run_dir, lambda work_dir: (
            train_job(spectra, size, meta, rows, validate, plan, run_dir, epoch_hooks),
            run_datasets(cfg, index, spectra, size, rows, validate, plan, world, work_dir,
                         LocalSession.resume_epoch)))
    check_reuse(cfg, run_dir)
    job = train_job(spectra, size, meta, rows, validate, plan, run_dir, epoch_hooks)
    datasets = run_datasets(cfg, index, spectra, size, rows, validate, plan, world, run_dir,
                            RaySession.resume_epoch)
    storage = storage_path if "://" in storage_path else str(Path(storage_path).absolute())
    result = build_trainer(cfg, job, datasets, storage, name, callbacks, max_failures).fit()
    return _outcome(result.checkpoint, str(result.path))


def _fit_local(cfg: TrainConfig, callbacks: list, run_dir: str, prepare) -> TrainOutcome:
    """Local mode: no trainer, the loop runs here and the session does what Ray's controller would.

    A run on object storage works in a local mirror of its checkpoints (``RunMirror``);
    ``prepare(work_dir)`` gives the job and the datasets for the run's local directory.
    """
    mirror = RunMirror(run_dir) if "://" in run_dir else None
    work_dir = mirror.local if mirror else run_dir
    try:
        check_reuse(cfg, work_dir)
        job, datasets = prepare(work_dir)
        session = LocalSession(cfg.run.use_gpu, work_dir, {
            k: v() if callable(v) else v for k, v in datasets.items()}, callbacks, mirror)
        loop.train(cfg, job, session)
        latest = session.latest_checkpoint()
        if mirror is None:
            return _outcome(latest, run_dir)
        return _outcome(latest, run_dir, stored_at=mirror.uri_of(latest.path) if latest else "",
                        local_copy=mirror.local)
    except BaseException:
        if mirror is not None:
            mirror.close()
        raise
