"""``fit(cfg, ...)``: one training run as a Ray Train ``TorchTrainer`` (the driver side).

Everything that can be checked before Ray starts is checked here and raised
as one ``UserError``: the manifest, the spectra, the model choices, the
batch plan against the number of train ids and tuples, the validation split.
Then the manifest goes into Ray's object store (``pipeline.load_manifest``),
every epoch's batches are planned from (seed, epoch), and the trainer runs
``msreid.train.loop.train_loop_per_worker`` on ``cfg.run.num_workers``
workers (0 = in-process local mode).

The run lives in ``<storage_path>/<name>``; the name carries no timestamp, so
calling ``fit`` again with the same pair resumes from the last checkpoint
(and returns at once when the run had finished).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import ray

from msreid.config import TrainConfig, check_against_manifest, config_to_dict
from msreid.data.schema import manifest_info, resolve_filesystem, verify_manifest
from msreid.data.transforms import AugmentParams
from msreid.errors import UserError
from msreid.train import checkpoint as ck
from msreid.train import loop
from msreid.train.pipeline import DecodeSpec, RowMeta, eval_dataset, load_manifest, train_dataset
from msreid.train.sampling import SplitRows, epoch_plan, split_rows

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of its checkpoints


@dataclass(frozen=True)
class TrainOutcome:
    """What a finished run hands back (read from its final checkpoint)."""

    metrics: dict[str, float]  # final: test/* (best-by-val model), final_test/* (last epoch), ...
    history: list[dict]  # one dict per epoch as reported, then the final metrics
    checkpoint_path: str  # final checkpoint dir: best_model.pt (selected), model.pt (last)
    artifacts_dir: str  # where cmc.csv, missing_modality.csv, per_challenge.csv, ranking.json are


@dataclass(frozen=True)
class Plan:
    """Every batch of every epoch: manifest rows, labels, epoch and step of each batch."""

    rows: np.ndarray  # [R, B]
    labels: np.ndarray  # [R, B]
    epochs: np.ndarray  # [R]
    steps: np.ndarray  # [R]
    steps_per_worker: list[int]  # per epoch


def resolve_spectra_and_size(cfg: TrainConfig) -> tuple[tuple[str, ...], tuple[int, int]]:
    """The spectra to train on and the (H, W) input size; checks the model choices."""
    from msreid.models import EMBED_AT, EMBEDDINGS, NECKS, resolve_backbone

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


def plan_epochs(cfg: TrainConfig, rows: SplitRows, world: int) -> Plan:
    """Batches of all epochs from (seed, epoch); UserError when an epoch would be empty."""
    d = cfg.data
    if d.batch_mode == "pk" and d.P > rows.num_classes:
        raise UserError(f"data.P={d.P} but only {rows.num_classes} train ids remain after "
                        f"data.val_ids={d.val_ids}: lower data.P or data.val_ids")
    parts, epochs, steps, per_worker = [], [], [], []
    for e in range(cfg.optim.epochs):
        pos = epoch_plan(rows.train_labels, mode=d.batch_mode, batch_size=d.batch_size, p=d.P,
                         k=d.K, seed=cfg.run.seed, epoch=e, world_size=world)
        if pos.shape[0] == 0:
            raise UserError(f"epoch {e} has no full batch for {world} worker(s): "
                            f"{rows.train.size} train tuples, data.batch_size={d.batch_size}; "
                            "lower the batch size or the number of workers")
        parts.append(pos)
        epochs.append(np.full(len(pos), e))
        steps.append(np.arange(len(pos)))
        per_worker.append(len(pos) // world)
    pos = np.concatenate(parts)
    return Plan(rows=rows.train[pos], labels=rows.train_labels[pos],
                epochs=np.concatenate(epochs), steps=np.concatenate(steps),
                steps_per_worker=per_worker)


def _has_valid_query(meta: RowMeta, query: np.ndarray, gallery: np.ndarray) -> bool:
    key = meta.scene if meta.has_scenes else meta.camera
    for q in query:
        same = meta.pid[gallery] == meta.pid[q]
        if (same & (key[gallery] != key[q])).any():
            return True
    return False


def check_validation(cfg: TrainConfig, meta: RowMeta, rows: SplitRows) -> bool:
    """True when validation runs; UserError when it cannot (no query has a match)."""
    if cfg.data.val_ids <= 0:
        return False
    if not _has_valid_query(meta, rows.val_query, rows.val_gallery):
        raise UserError(f"data.val_ids={cfg.data.val_ids}: no validation query has a match in "
                        "another camera; hold out more ids or set data.val_ids=0")
    return True


def ensure_ray(cfg: TrainConfig, ray_address: str | None = None) -> None:
    """Connect to ``ray_address`` / ``RAY_ADDRESS``, or start a local Ray sized for this run.

    Locally the logical CPU count is oversubscribed: Ray Train reserves its
    workers' CPUs and Ray Data needs whole CPUs of its own, which deadlocks on
    small machines otherwise (../shared/RAY_NOTES.md).
    """
    if ray.is_initialized():
        return
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    cpus = (os.cpu_count() or 1) + math.ceil(cfg.run.num_workers * cfg.run.cpus_per_worker) + 1
    ray.init(num_cpus=cpus, include_dashboard=False)


def resume_epoch(run_dir: str) -> int:
    """First epoch still to train in ``run_dir``: 1 + the epoch of Ray's latest checkpoint.

    Reads Ray Train's checkpoint-manager snapshot (the record Ray itself
    restores from) and our meta.json inside that checkpoint; 0 when absent.
    Only used to avoid decoding batches a resumed run skips: the worker
    restores from ``ray.train.get_checkpoint()`` either way.
    """
    fs, path = resolve_filesystem(run_dir)
    try:
        with fs.open_input_stream(f"{path}/{SNAPSHOT_FILE}") as f:
            snapshot = json.loads(f.read())
        name = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
        with fs.open_input_stream(f"{path}/{name}/{ck.META_FILE}") as f:
            return int(json.loads(f.read())["epoch"]) + 1
    except (OSError, KeyError, TypeError, ValueError):
        return 0


def local_resume_epoch(run_dir: str) -> int:
    """As ``resume_epoch`` for local mode, whose checkpoints the loop writes itself."""
    found = ck.local_checkpoints(run_dir)
    if not found:
        return 0
    return int(ck.load_json(found[-1], ck.META_FILE)["epoch"]) + 1


def _train_factory(spec: DecodeSpec, plan: Plan, run_dir: str, workers: int,
                   cfg: TrainConfig) -> Callable[[], ray.data.Dataset]:
    """Ray Train calls this at every worker-group start: after a restart the plan resumes."""

    def make() -> ray.data.Dataset:
        start = resume_epoch(run_dir) if workers > 0 else local_resume_epoch(run_dir)
        keep = plan.epochs >= start
        return train_dataset(spec, plan.rows[keep], plan.labels[keep], plan.epochs[keep],
                             plan.steps[keep], batches_per_task=cfg.data.batches_per_task,
                             num_decode_workers=cfg.data.num_decode_workers)

    return make


def _job(cfg, spectra, size, meta: RowMeta, rows: SplitRows, validate: bool, plan: Plan,
         run_dir: str) -> dict[str, Any]:
    job = {
        "spectra": list(spectra), "size": list(size), "num_classes": rows.num_classes,
        "steps_per_worker": plan.steps_per_worker, "run_dir": run_dir,
        "labels": {"pid": meta.pid, "camera": meta.camera, "scene": meta.scene,
                   "challenge": list(meta.challenge)},
        "val": ({"query": rows.val_query, "gallery": rows.val_gallery} if validate else None),
        "test": {"query": rows.test_query, "gallery": rows.test_gallery},
    }
    if os.environ.get("MSREID_FAIL_AT_EPOCH"):  # fault injection (tests): die once there
        job["fail"] = {"epoch": int(os.environ["MSREID_FAIL_AT_EPOCH"]),
                       "marker": os.environ["MSREID_FAIL_MARKER"]}
    return job


def _augment(cfg: TrainConfig) -> AugmentParams:
    d = cfg.data
    fill = tuple(int(round(m * 255)) for m in d.mean)
    return AugmentParams(flip_prob=d.flip_prob, pad=d.pad, erase_prob=d.erase_prob,
                         erase_fill=fill)


def _trainer(cfg: TrainConfig, job: dict, datasets: dict, storage_path: str, name: str,
             callbacks: Sequence | None, max_failures: int):
    from ray.train import (CheckpointConfig, DataConfig, FailureConfig, RunConfig,
                           ScalingConfig)
    from ray.train.torch import TorchConfig, TorchTrainer

    r = cfg.run
    resources = {"CPU": r.cpus_per_worker, **({"GPU": 1} if r.use_gpu else {})}
    scaling = ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                            resources_per_worker=resources if r.num_workers else None)
    run_config = RunConfig(
        storage_path=storage_path, name=name, callbacks=list(callbacks or []),
        failure_config=FailureConfig(max_failures=max_failures,
                                     controller_failure_limit=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2))
    return TorchTrainer(
        loop.train_loop_per_worker,
        train_loop_config={"cfg": config_to_dict(cfg), "job": job},
        scaling_config=scaling, run_config=run_config,
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=["train"],
                                                     execution_options=_ordered_ingest()))


def _ordered_ingest():
    """Train's default ingest options plus preserve_order (Train would drop the datasets' own)."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True  # batches in plan order: reproducible runs and resumes
    return options


def _outcome(result) -> TrainOutcome:
    if result.checkpoint is None:
        raise RuntimeError(f"the run {result.path} ended without a checkpoint")
    with result.checkpoint.as_directory() as d:
        metrics = ck.load_json(d, ck.FINAL_METRICS_FILE)
        history = ck.load_json(d, ck.HISTORY_FILE, [])
    if metrics is None:
        raise RuntimeError(f"checkpoint {result.checkpoint.path} is not a final checkpoint")
    if not history or history[-1] != metrics:
        history = [*history, metrics]
    path = str(result.checkpoint.path)
    return TrainOutcome(metrics=metrics, history=history, checkpoint_path=path,
                        artifacts_dir=path)


def fit(cfg: TrainConfig, *, storage_path: str, name: str, callbacks: list | None = None,
        max_failures: int = 0, ray_address: str | None = None) -> TrainOutcome:
    """Train ``cfg`` to the end (or resume it) and evaluate the test set once.

    storage_path: local directory (or URI with num_workers >= 1; shared storage
    on a cluster); name: the run's stable directory name. callbacks: Ray Train
    ``UserCallback``s (e.g. Tune's ``TuneReportCallback``); in local mode
    (num_workers=0) they are called by hand with the same arguments.
    """
    spectra, size = resolve_spectra_and_size(cfg)
    verify_manifest(cfg.data.manifest)  # every part byte as ingested, before Ray reads it
    ensure_ray(cfg, ray_address)
    index, meta = load_manifest(cfg.data.manifest)
    d = cfg.data
    rows = split_rows(meta.split, meta.pid, meta.camera, val_ids=d.val_ids,
                      per_camera=d.val_query_per_camera, seed=cfg.run.seed)
    validate = check_validation(cfg, meta, rows)
    if rows.test_query.size == 0 or rows.test_gallery.size == 0:
        raise UserError(f"manifest {d.manifest} has no query or gallery rows to test on")
    plan = plan_epochs(cfg, rows, max(1, cfg.run.num_workers))
    if cfg.run.num_workers == 0 and "://" in storage_path:
        raise UserError(f"storage_path={storage_path}: local mode (run.num_workers=0) "
                        "writes checkpoints itself and needs a local directory")
    run_dir = f"{storage_path.rstrip('/')}/{name}" if "://" in storage_path \
        else str(Path(storage_path).absolute() / name)
    job = _job(cfg, spectra, size, meta, rows, validate, plan, run_dir)
    train_spec = DecodeSpec(index, spectra, size, _augment(cfg), cfg.run.seed)
    eval_spec = DecodeSpec(index, spectra, size, None, cfg.run.seed)
    evals = {"test": np.concatenate([rows.test_query, rows.test_gallery])}
    if validate:
        evals["val"] = np.concatenate([rows.val_query, rows.val_gallery])
    datasets: dict[str, Any] = {
        "train": _train_factory(train_spec, plan, run_dir, cfg.run.num_workers, cfg),
        **{k: eval_dataset(eval_spec, v, batch_size=d.eval_batch_size,
                           num_decode_workers=d.num_decode_workers) for k, v in evals.items()}}
    loop.LOCAL_CALLBACKS[:] = list(callbacks or []) if cfg.run.num_workers == 0 else []
    trainer = _trainer(cfg, job, datasets, str(Path(storage_path).absolute())
                       if "://" not in storage_path else storage_path, name, callbacks,
                       max_failures)
    try:
        return _outcome(trainer.fit())
    finally:
        loop.LOCAL_CALLBACKS.clear()
