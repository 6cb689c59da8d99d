"""``fit(cfg, ...)``: one training run, the driver side.

Everything that can be checked before Ray starts is checked here and raised
as one ``UserError``: the manifest, the spectra, the model choices, the
batch plan against the number of train ids and tuples, the validation split.
Then the manifest goes into Ray's object store (``pipeline.load_manifest``),
every epoch's batches are planned from (seed, epoch), and
``msreid.train.loop`` runs in a session chosen once here
(``msreid.train.session``): on ``cfg.run.num_workers`` workers of a Ray Train
``TorchTrainer``, or with ``num_workers=0`` in this process (local mode, no
trainer).

The run lives in ``<storage_path>/<name>``; the name carries no timestamp, so
calling ``fit`` again with the same pair resumes from the last checkpoint
(and returns at once when the run had finished).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from msreid.config import (
    TrainConfig,
    changed_settings,
    check_against_manifest,
    config_to_dict,
    effective_val_ids,
)
from msreid.data.schema import manifest_info, verify_manifest
from msreid.data.transforms import AugmentParams
from msreid.errors import UserError
from msreid.models import EMBED_AT, EMBEDDINGS, NECKS, resolve_backbone
from msreid.train import checkpoint as ck
from msreid.train import loop
from msreid.train.loop import QueryGallery, TrainJob
from msreid.train.pipeline import DecodeSpec, eval_dataset, load_manifest, train_dataset
from msreid.train.ray_runtime import autoscaler_max_gpus, init_ray
from msreid.train.sampling import RowMeta, SplitRows, epoch_plan, split_rows, worker_share
from msreid.train.session import (
    KEEP_CHECKPOINTS,
    LocalSession,
    RaySession,
    RunMirror,
    latest_run_checkpoint,
    local_scratch,
    read_json,
)


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


@dataclass(frozen=True)
class Plan:
    """Every global batch of every epoch: manifest rows, labels, epoch and step of each."""

    rows: np.ndarray  # [R, B] (B = the global batch)
    labels: np.ndarray  # [R, B]
    epochs: np.ndarray  # [R]
    steps: np.ndarray  # [R]
    steps_per_epoch: list[int]

    def share(self, rank: int, world: int, first_epoch: int = 0) -> dict[str, np.ndarray]:
        """Worker ``rank``'s contiguous share of every batch from ``first_epoch`` on.

        "rows", "labels" ``[R', B/world]``, "epochs", "steps" ``[R']`` and
        "starts": the position of each share's first tuple in its epoch's plan.
        """
        keep = self.epochs >= first_epoch
        b = self.rows.shape[1] // world
        return {"rows": worker_share(self.rows[keep], rank, world),
                "labels": worker_share(self.labels[keep], rank, world),
                "epochs": self.epochs[keep], "steps": self.steps[keep],
                "starts": self.steps[keep] * self.rows.shape[1] + rank * b}


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


def plan_epochs(cfg: TrainConfig, rows: SplitRows) -> Plan:
    """Global batches of all epochs from (seed, epoch); UserError when an epoch would be empty.

    Independent of the number of workers: each worker trains its share of every batch.
    """
    d = cfg.data
    if d.batch_mode == "pk" and d.P > rows.num_classes:
        raise UserError(f"data.P={d.P} but only {rows.num_classes} train ids remain after "
                        f"data.val_ids={effective_val_ids(cfg)}: lower data.P or data.val_ids")
    parts, epochs, steps = [], [], []
    for e in range(cfg.optim.epochs):
        pos = epoch_plan(rows.train_labels, mode=d.batch_mode, batch_size=d.batch_size, p=d.P,
                         k=d.K, seed=cfg.run.seed, epoch=e)
        if pos.shape[0] == 0:
            raise UserError(f"epoch {e} has no full batch: {rows.train.size} train tuples, "
                            f"global batch {pos.shape[1]} (data.batch_size, or P x K); lower "
                            "the batch size")
        parts.append(pos)
        epochs.append(np.full(len(pos), e))
        steps.append(np.arange(len(pos)))
    pos = np.concatenate(parts)
    return Plan(rows=rows.train[pos], labels=rows.train_labels[pos],
                epochs=np.concatenate(epochs), steps=np.concatenate(steps),
                steps_per_epoch=[len(p) for p in parts])


def _has_valid_query(meta: RowMeta, query: np.ndarray, gallery: np.ndarray) -> bool:
    key = meta.scene if meta.has_scenes else meta.camera
    for q in query:
        same = meta.pid[gallery] == meta.pid[q]
        if (same & (key[gallery] != key[q])).any():
            return True
    return False


def check_validation(cfg: TrainConfig, meta: RowMeta, rows: SplitRows) -> bool:
    """True when validation runs; UserError when it cannot (no query has a match)."""
    if effective_val_ids(cfg) <= 0:  # selection=final, or validation switched off
        return False
    if not _has_valid_query(meta, rows.val_query, rows.val_gallery):
        raise UserError(f"data.val_ids={cfg.data.val_ids}: no validation query has a match in "
                        "another camera; hold out more ids or set data.val_ids=0")
    return True


def missing_gpus(use_gpu: bool, num_workers: int, node_gpus: Sequence[float], joined: bool,
                 autoscaler_gpus: int | None, cuda_here: bool) -> str | None:
    """What a run asking for GPUs lacks (None: nothing), or None when autoscaling may add it.

    A Ray worker takes one whole GPU (``_trainer``); local mode uses this process's GPU.
    node_gpus: GPUs of each live node; autoscaler_gpus: the most GPUs the cluster's autoscaler
    may provide (None: no autoscaler config). Without this check Ray waits for a GPU that
    never comes and ends in "worker group startup timed out".
    """
    if not use_gpu:
        return None
    if num_workers == 0:
        return None if cuda_here else (
            "run.use_gpu=true with run.num_workers=0 trains in this process, and torch sees no GPU "
            "here (torch.cuda.is_available() is False)")
    have = sum(int(g) for g in node_gpus)
    if have >= num_workers:
        return None
    if not joined:
        return (f"run.use_gpu=true needs {num_workers} GPU(s) (one per worker), and this machine "
                f"has {have} visible to Ray (no GPU, or a driver/CUDA problem)")
    if autoscaler_gpus is not None and autoscaler_gpus >= num_workers:
        return None  # the autoscaler may start GPU nodes: the run waits for them
    scale = ("the cluster has no autoscaler config" if autoscaler_gpus is None else
             f"its autoscaler can provide at most {autoscaler_gpus} GPU(s)")
    return (f"run.use_gpu=true needs {num_workers} GPU(s) (one per worker), and the cluster's "
            f"live nodes offer {have} ({len(node_gpus)} node(s)); {scale}, so none will be added")


def check_resources(cfg: TrainConfig, joined: bool) -> None:
    """UserError naming what the run asks for and the cluster lacks (before anything starts)."""
    if not cfg.run.use_gpu:
        return
    nodes = [n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")]
    joined = joined or len(nodes) > 1
    problem = missing_gpus(True, cfg.run.num_workers, nodes, joined,
                           autoscaler_max_gpus() if joined else None, torch.cuda.is_available())
    if problem:
        raise UserError(f"{problem}: set run.use_gpu=false, or run where GPUs are")


def _train_factory(spec: DecodeSpec, plan: Plan, rank: int, world: int, run_dir: str,
                   resume_epoch: Callable[[str], int],
                   cfg: TrainConfig) -> Callable[[], ray.data.Dataset]:
    """Worker ``rank``'s training dataset: its share of every batch, in plan order.

    Called at every (worker-group) start: a resumed run skips the epochs
    already trained. One unsplit dataset per rank, not a streaming split of
    one dataset: which rows a worker trains never depends on Ray Data's block
    order or on which worker asked first.
    """

    def make() -> ray.data.Dataset:
        share = plan.share(rank, world, resume_epoch(run_dir))
        return train_dataset(spec, share["rows"], share["labels"], share["epochs"],
                             share["steps"], share["starts"],
                             batches_per_task=cfg.data.batches_per_task,
                             num_decode_workers=cfg.data.num_decode_workers,
                             num_cpus=cfg.data.decode_cpus)

    return make


def _job(spectra, size, meta: RowMeta, rows: SplitRows, validate: bool, plan: Plan,
         run_dir: str, epoch_hooks: Sequence[Callable[[int, int], None]]) -> TrainJob:
    return TrainJob(
        spectra=tuple(spectra), size=tuple(size), num_classes=rows.num_classes,
        steps_per_epoch=tuple(plan.steps_per_epoch), run_dir=run_dir, labels=meta,
        val=QueryGallery(rows.val_query, rows.val_gallery) if validate else None,
        test=QueryGallery(rows.test_query, rows.test_gallery), epoch_hooks=tuple(epoch_hooks))


def _augment(cfg: TrainConfig) -> AugmentParams:
    d = cfg.data
    fill = tuple(int(round(m * 255)) for m in d.mean)
    return AugmentParams(flip_prob=d.flip_prob, pad=d.pad, erase_prob=d.erase_prob,
                         erase_fill=fill)


def _trainer(cfg: TrainConfig, job: TrainJob, datasets: dict, storage_path: str, name: str,
             callbacks: Sequence, max_failures: int) -> TorchTrainer:
    r = cfg.run
    resources = {"CPU": r.cpus_per_worker, **({"GPU": 1} if r.use_gpu else {})}
    run_config = RunConfig(
        storage_path=storage_path, name=name, callbacks=list(callbacks),
        failure_config=FailureConfig(max_failures=max_failures,
                                     controller_failure_limit=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS))
    return TorchTrainer(
        loop.train_func, train_loop_config={"cfg": cfg, "job": job},
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                     resources_per_worker=resources),
        run_config=run_config, torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=[],
                                                     execution_options=_ordered_ingest()))


def _ordered_ingest():
    """Train's default ingest options plus preserve_order (Train would drop the datasets' own)."""
    options = DataConfig.default_ingest_options()
    options.preserve_order = True  # batches in plan order: reproducible runs and resumes
    return options


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


def _datasets(cfg: TrainConfig, index, spectra, size, rows: SplitRows, validate: bool,
              plan: Plan, run_dir: str, resume_epoch: Callable[[str], int]) -> dict[str, Any]:
    """"train_<rank>" per worker (factories: see _train_factory), "test" and maybe "val"."""
    d = cfg.data
    train_spec = DecodeSpec(index, spectra, size, _augment(cfg), cfg.run.seed,
                            cfg.data.modality_dropout)
    eval_spec = DecodeSpec(index, spectra, size, None, cfg.run.seed)
    evals = {"test": np.concatenate([rows.test_query, rows.test_gallery])}
    if validate:
        evals["val"] = np.concatenate([rows.val_query, rows.val_gallery])
    world = max(1, cfg.run.num_workers)
    return {**{f"train_{r}": _train_factory(train_spec, plan, r, world, run_dir, resume_epoch, cfg)
               for r in range(world)},
            **{k: eval_dataset(eval_spec, v, batch_size=d.eval_batch_size,
                               num_decode_workers=d.num_decode_workers, num_cpus=d.decode_cpus)
               for k, v in evals.items()}}


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
    init_ray(ray_address, train_cpus=cfg.run.num_workers * cfg.run.cpus_per_worker)
    check_resources(cfg, joined=bool(ray_address or os.environ.get("RAY_ADDRESS")))
    index, meta = load_manifest(cfg.data.manifest, num_cpus=cfg.data.decode_cpus)
    d = cfg.data
    rows = split_rows(meta.split, meta.pid, meta.camera, val_ids=effective_val_ids(cfg),
                      per_camera=d.val_query_per_camera, seed=cfg.run.seed)
    validate = check_validation(cfg, meta, rows)
    if rows.test_query.size == 0 or rows.test_gallery.size == 0:
        raise UserError(f"manifest {d.manifest} has no query or gallery rows to test on")
    plan = plan_epochs(cfg, rows)
    run_dir = _run_dir(storage_path, name)
    if local:
        return _fit_local(cfg, callbacks, run_dir, lambda work_dir: (
            _job(spectra, size, meta, rows, validate, plan, run_dir, epoch_hooks),
            _datasets(cfg, index, spectra, size, rows, validate, plan, work_dir,
                      LocalSession.resume_epoch)))
    check_reuse(cfg, run_dir)
    job = _job(spectra, size, meta, rows, validate, plan, run_dir, epoch_hooks)
    datasets = _datasets(cfg, index, spectra, size, rows, validate, plan, run_dir,
                         RaySession.resume_epoch)
    storage = storage_path if "://" in storage_path else str(Path(storage_path).absolute())
    result = _trainer(cfg, job, datasets, storage, name, callbacks, max_failures).fit()
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
