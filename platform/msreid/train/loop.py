"""The training loop: what every Ray Train worker (or the local session) runs.

Stages, top to bottom (``train_func``): session and seeds, model (DDP through
the session), optimiser + warm-up / multi-step schedule, restore from the
last checkpoint, then per epoch: train on this worker's shard, reduce the loss
terms across ranks, validate (rank 0), checkpoint (rank 0) and report. At the
end rank 0 evaluates the test set once with the selected model (``test/*``:
the validated epoch ``run.selection_rule`` keeps, or the last epoch's under
``run.selection=final``) and records how sure that selection is
(``selection/*``: margin, resolution, within-noise flag), with
the last epoch's too (``final_test/*``) only when ``run.log_final_test`` asks,
and writes the artifacts into the final checkpoint.

The loop never tests which mode it runs in: ``msreid.train.session`` hides it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from msreid.config import OptimConfig, TrainConfig, config_to_dict, loss_kwargs
from msreid.data.transforms import normalize
from msreid.evaluation import names, selection
from msreid.losses import active_terms, compute_losses, needs_cams
from msreid.models import MultiStreamNet
from msreid.models.sync_batchnorm import convert_sync_batchnorm
from msreid.train import checkpoint as ck
from msreid.train import evaluate as ev
from msreid.train.distributed import gather_labels, gather_outputs, sync_bn_wanted
from msreid.train.sampling import RowMeta
from msreid.train.session import RaySession, Session, intra_op_threads, worker_threads

log = logging.getLogger(__name__)

VAL_MAP = names.VAL + names.MAP  # what selection ranks epochs by
VAL_QUERIES = names.VAL + names.QUERIES


@dataclass(frozen=True)
class QueryGallery:
    """Manifest rows of one evaluation set."""

    query: np.ndarray
    gallery: np.ndarray


@dataclass(frozen=True)
class TrainJob:
    """What ``fit`` hands every worker besides the config (pickled by Ray to each)."""

    spectra: tuple[str, ...]
    size: tuple[int, int]  # (H, W)
    num_classes: int
    steps_per_epoch: tuple[int, ...]  # global batches per epoch (every worker takes a share)
    run_dir: str
    labels: RowMeta  # of every manifest row
    val: QueryGallery | None  # None: validation off
    test: QueryGallery
    # hook(epoch, rank) at the start of every epoch in every worker; tests inject faults with it
    epoch_hooks: tuple[Callable[[int, int], None], ...] = ()


def lr_at(epoch: int, o: OptimConfig) -> float:
    """Learning rate of ``epoch`` (0-based): linear warm-up, then x gamma at each milestone.

    ``o.schedule_offset`` shifts the schedule: epoch e trains at the rate of e + offset.
    """
    epoch = epoch + o.schedule_offset
    if epoch < o.warmup_epochs:
        return o.warmup_lr + (o.lr - o.warmup_lr) * epoch / o.warmup_epochs
    return o.lr * o.gamma ** sum(epoch >= m for m in o.milestones)


def build_optimizer(model: torch.nn.Module, o: OptimConfig):
    """(optimizer, LambdaLR stepped once per epoch) for ``o``."""
    if o.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum,
                              weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_at(e, o) / o.lr)
    return opt, sched


@dataclass
class Progress:
    """What survives a restart (restored from the checkpoint)."""

    start_epoch: int = 0
    best_metric: float = float("-inf")
    best_epoch: int = -1
    best_state: dict | None = None
    history: list = field(default_factory=list)
    final_metrics: dict | None = None


@dataclass
class Training:
    """One worker's training: what it was given and what it trains."""

    cfg: TrainConfig
    job: TrainJob
    session: Session
    model: torch.nn.Module  # as trained (DDP-wrapped when world > 1)
    raw: MultiStreamNet  # the bare network: evaluated and checkpointed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    progress: Progress = field(default_factory=Progress)

    @property
    def device(self) -> torch.device:
        return self.session.device

    @property
    def channels_last(self) -> bool:
        return self.cfg.run.channels_last and self.device.type == "cuda"


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _deterministic(device: torch.device) -> None:
    """GPU: deterministic cuDNN / cuBLAS kernels (CPU kernels are, at a fixed thread count).

    Costs little for the convolutions used here; ops without a deterministic
    CUDA kernel warn instead of failing (docs/TRAINING.md, "Determinism").
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def _build(cfg: TrainConfig, job: TrainJob, session: Session) -> Training:
    """Model, optimiser, schedule and grad scaler, in the order the seeds expect."""
    raw = ck.model_from_config(cfg.model, job.spectra, job.num_classes, job.size,
                               pretrained=True)
    if cfg.run.channels_last and session.device.type == "cuda":
        raw = raw.to(memory_format=torch.channels_last)
    if sync_bn_wanted(cfg.model.sync_bn, session.world):  # before DDP and the optimiser
        raw = convert_sync_batchnorm(raw, session.device.type)
    model = session.prepare_model(raw)
    opt, sched = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(session.device.type, enabled=(
        cfg.run.precision == "fp16" and session.device.type == "cuda"))
    return Training(cfg, job, session, model, raw, opt, sched, scaler)


def _restore(checkpoint, t: Training) -> Progress:
    """Load the latest checkpoint into the model/optimiser/RNGs; Progress to continue from."""
    if checkpoint is None:
        return Progress()
    with checkpoint.as_directory() as d:
        meta = ck.load_json(d, ck.META_FILE)
        t.raw.load_state_dict(ck.load_pt(d, ck.MODEL_FILE))
        state = ck.load_pt(d, ck.STATE_FILE)
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        t.scaler.load_state_dict(state["scaler"])
        ck.set_rng_state(state["rng"])
        best = ck.load_pt(d, ck.BEST_MODEL_FILE)
        history = ck.load_json(d, ck.HISTORY_FILE, [])
        final = ck.load_json(d, ck.FINAL_METRICS_FILE)
    log.info("resuming after epoch %d", meta["epoch"])
    return Progress(start_epoch=meta["epoch"] + 1, best_metric=state["best_metric"],
                    best_epoch=state["best_epoch"], best_state=best, history=history,
                    final_metrics=final)


def _autocast(t: Training):
    if t.cfg.run.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if t.cfg.run.precision == "bf16" else torch.float16
    return torch.autocast(device_type=t.device.type, dtype=dtype)


def _batch_images(batch: dict, t: Training) -> dict[str, torch.Tensor]:
    """uint8 [1, B, 3, H, W] per spectrum from the shard -> normalised float [B, 3, H, W]."""
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    return {s: normalize(batch[s][0].to(t.device, non_blocking=True), t.cfg.data.mean,
                         t.cfg.data.std).contiguous(memory_format=fmt) for s in t.job.spectra}


def _check_order(batch: dict, epoch: int, step: int, rank: int) -> None:
    """Raise unless this worker's next share is the one of (epoch, step): no order may leak."""
    got = (int(batch["epoch"][0]), int(batch["step"][0]))
    if got != (epoch, step):
        raise RuntimeError(f"worker {rank} got the share of (epoch, step) {got} where "
                           f"{(epoch, step)} was due: the input order is not the plan's")


def train_epoch(t: Training, batches: Iterator[dict], epoch: int) -> dict[str, float]:
    """This worker's share of every step of ``epoch``; returns loss sums, tuples and seconds.

    The model's outputs and the labels are gathered over the workers before
    the losses (``msreid.train.distributed``): every worker evaluates the loss
    of the whole global batch, as one worker would.
    """
    t.model.train()
    cfg = t.cfg
    kwargs = loss_kwargs(cfg.loss)
    sums = dict.fromkeys(("loss", *active_terms(kwargs)), 0.0)  # what compute_losses returns
    seen, start = 0, time.perf_counter()
    for step in range(t.job.steps_per_epoch[epoch]):
        batch = next(batches)
        _check_order(batch, epoch, step, t.session.rank)
        images = _batch_images(batch, t)
        labels = batch["labels"][0].to(t.device, non_blocking=True)
        keep = _kept(batch, t)
        with _autocast(t):
            out = t.model(images, return_cams=needs_cams(kwargs))
            out_all, labels_all = gather_outputs(out, labels)  # the global batch
            if cfg.data.batch_mode == "pk":
                check_pk(labels_all, cfg.data.P, cfg.data.K)
            terms = compute_losses(out_all, labels_all, keep=keep, **kwargs)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(terms["loss"]).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
        n = labels.numel()  # this worker's share: every worker holds the global loss
        for term, v in terms.items():
            sums[term] += float(v.detach()) * n
        seen += n
    return {"tuples": float(seen), "seconds": time.perf_counter() - start, **sums}


def _kept(batch: dict, t: Training) -> torch.Tensor | None:
    """The global batch's modality-dropout mask ``[B, S]`` bool (None: dropout off)."""
    if t.cfg.data.modality_dropout <= 0:
        return None
    keep = batch["keep"][0].to(t.device, non_blocking=True).to(torch.uint8)
    return gather_labels(keep).bool()  # every worker's share, in rank order, as the outputs


def check_pk(labels: torch.Tensor, p: int, k: int) -> None:
    """Raise unless ``labels [P*K]`` is P distinct ids in blocks of K (cheap, every batch)."""
    ids = labels.view(p, k)
    if not bool((ids == ids[:, :1]).all()) or ids[:, 0].unique().numel() != p:
        raise RuntimeError(f"batch is not {p} ids x {k} tuples: {labels.tolist()}")


def reduce_epoch(stats: dict[str, float], session: Session) -> dict[str, float]:
    """Sums over ranks (tuples, loss sums) and the slowest rank's seconds -> epoch metrics."""
    keys = sorted(k for k in stats if k != "seconds")
    totals = torch.tensor([stats[k] for k in keys], dtype=torch.float64)
    sec = torch.tensor([stats["seconds"]], dtype=torch.float64)
    if session.distributed:
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        dist.all_reduce(sec, op=dist.ReduceOp.MAX)
    total = dict(zip(keys, totals.tolist()))
    n = max(total.pop("tuples"), 1.0)
    out = {f"train/{k}": v / n for k, v in total.items()}
    out["tuples_per_s"] = n / max(float(sec), 1e-9)
    return out


def _features(t: Training, name: str, subsets=None):
    """(rows, {subset: feats}) of the unsplit eval dataset ``name`` ("val" or "test")."""
    it = t.session.dataset_shard(name).iter_torch_batches(
        batch_size=t.cfg.data.eval_batch_size, device="cpu",
        pin_memory=t.device.type == "cuda")
    subsets = subsets or [tuple(t.job.spectra)]
    with _autocast(t):
        rows, feats = ev.extract_features(t.raw, it, t.job.spectra, subsets, t.cfg.data.mean,
                                          t.cfg.data.std, t.device, t.channels_last)
    return rows, feats


def evaluate(t: Training, name: str, prefix: str) -> dict:
    """``{prefix + "mAP", ...}`` of the current weights on eval set ``name`` (rank 0), and
    ``prefix + "queries"``: the queries with a match, over which mAP is the mean."""
    rows, feats = _features(t, name)
    rows_of: QueryGallery = getattr(t.job, name)
    res = ev.rank_features(feats[ev.subset_name(t.job.spectra)], rows, rows_of.query,
                           rows_of.gallery, t.job.labels)
    return {**res.as_dict(prefix), prefix + names.QUERIES: float(res.num_valid)}


def _state_dict(raw) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in raw.state_dict().items()}


def _checkpoint_files(t: Training, epoch: int) -> dict:
    last = _state_dict(t.raw)
    p = t.progress
    return {
        ck.MODEL_FILE: last,
        ck.BEST_MODEL_FILE: p.best_state if p.best_state is not None else last,
        ck.STATE_FILE: {"optimizer": t.optimizer.state_dict(),
                        "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict(),
                        "rng": ck.rng_state(), "best_metric": p.best_metric,
                        "best_epoch": p.best_epoch, "epoch": epoch},
        ck.CONFIG_FILE: config_to_dict(t.cfg),
        ck.META_FILE: {"epoch": epoch, "spectra": list(t.job.spectra),
                       "num_classes": t.job.num_classes, "image_size": list(t.job.size),
                       "best_epoch": p.best_epoch, "best_val_mAP": p.best_metric},
        ck.HISTORY_FILE: p.history,
    }


def _due(epoch: int, every: int, last: int) -> bool:
    return (epoch + 1) % every == 0 or epoch == last


def _validate(t: Training, epoch: int, metrics: dict) -> bool:
    """Rank 0: validation (and the optional test curve); True when it ran."""
    last = t.cfg.optim.epochs - 1
    p = t.progress
    ran = False
    if t.job.val is None:  # no validation: the selected model is the last epoch's
        p.best_epoch, p.best_state = epoch, None
    elif _due(epoch, t.cfg.run.eval_every, last):
        metrics.update(evaluate(t, "val", names.VAL))
        ran = True
        _, scores = validation_scores(p.history)
        scores.append(metrics[VAL_MAP])
        rule, tolerance = t.cfg.run.selection_rule, selection.resolution(int(metrics[VAL_QUERIES]))
        if selection.select(scores, rule, tolerance) == len(scores) - 1:  # rules move only here
            p.best_metric, p.best_epoch, p.best_state = metrics[VAL_MAP], epoch, _state_dict(t.raw)
    if t.cfg.run.test_curve_every and _due(epoch, t.cfg.run.test_curve_every, last):
        metrics.update(evaluate(t, "test", names.TEST_CURVE))
    return ran


def validation_scores(history: list[dict]) -> tuple[list[int], list[float]]:
    """(epochs, val mAPs) of the validations in ``history``, in order."""
    done = [h for h in history if VAL_MAP in h]
    return [int(h["epoch"]) for h in done], [float(h[VAL_MAP]) for h in done]


def selection_metrics(history: list[dict], queries: int) -> dict[str, float]:
    """How sure the selection is (``selection/*``), from the validations in ``history``.

    margin: best minus runner-up val mAP; resolution: one query's worth (1 / the queries
    with a match, ``val/queries``); within_noise: 1.0 when the margin is below the
    resolution (the validation split cannot tell the two apart), else 0.0. margin and
    runner_up_epoch need two validations. queries: the count when no validation in
    ``history`` recorded it (validated before ``val/queries`` existed, then resumed).
    """
    epochs, scores = validation_scores(history)
    num_queries = int(next((h[VAL_QUERIES] for h in history if VAL_QUERIES in h), queries))
    out = {"selection/resolution": selection.resolution(num_queries),
           "selection/val_queries": float(num_queries),
           "selection/within_noise": float(selection.within_noise(scores, num_queries))}
    if len(scores) > 1:
        out["selection/margin"] = selection.margin(scores)
        out["selection/runner_up_epoch"] = float(epochs[selection.runner_up(scores)])
    return out


def run_epochs(t: Training) -> None:
    """Epochs ``progress.start_epoch .. epochs-1``: train, reduce, validate, checkpoint, report."""
    cfg, session = t.cfg, t.session
    shard = session.dataset_shard(f"train_{session.rank}")  # this rank's shares, plan order
    batches = iter(shard.iter_torch_batches(
        batch_size=1, prefetch_batches=cfg.data.prefetch_batches, device="cpu",
        pin_memory=t.device.type == "cuda"))
    last = cfg.optim.epochs - 1
    for epoch in range(t.progress.start_epoch, cfg.optim.epochs):
        for hook in t.job.epoch_hooks:
            hook(epoch, session.rank)
        lr = t.optimizer.param_groups[0]["lr"]
        stats = train_epoch(t, batches, epoch)
        t.scheduler.step()
        metrics = {"epoch": epoch, "lr": lr, **reduce_epoch(stats, session)}
        directory = None
        if session.rank == 0:
            validated = _validate(t, epoch, metrics)
            t.progress.history.append(metrics)
            if validated or _due(epoch, cfg.run.checkpoint_every, last):
                directory = ck.write_checkpoint(session.checkpoint_dir(epoch),
                                                _checkpoint_files(t, epoch))
        session.report(metrics, directory)


def final_test(t: Training) -> None:
    """Rank 0: test once with the best model (and the last, for the gap); artifacts; report."""
    if t.session.rank != 0:
        t.session.report({}, None)
        return
    cfg, job, p = t.cfg, t.job, t.progress
    last_epoch = cfg.optim.epochs - 1
    final = {}  # the last epoch's weights beside the selected ones only when asked (run.log_final_test)
    if cfg.run.log_final_test and p.best_state is not None:
        final = evaluate(t, "test", names.FINAL_TEST)
    files = _checkpoint_files(t, last_epoch)
    if p.best_state is not None:
        t.raw.load_state_dict(p.best_state)
    spectra = tuple(job.spectra)
    subsets = (ev.spectrum_subsets(spectra) if cfg.run.missing_modality and len(spectra) > 1
               else [spectra])
    rows, feats = _features(t, "test", subsets)
    q, g, labels = job.test.query, job.test.gallery, job.labels
    full = feats[ev.subset_name(spectra)]
    test = ev.rank_features(full, rows, q, g, labels)
    metrics = {"epoch": last_epoch, "best_epoch": p.best_epoch, **test.as_dict(names.TEST),
               **final}
    if job.val is not None:
        metrics[names.BEST_VAL + names.MAP] = p.best_metric
        metrics.update(selection_metrics(p.history, job.val.query.size))
    files[ck.FINAL_METRICS_FILE] = metrics
    # the query x gallery spectrum matrix; its diagonal is the missing-modality table
    matrix = ev.spectrum_matrix(feats, spectra, rows, q, g, labels) if len(subsets) > 1 else None
    by_subset = {a: res for (a, b), res in matrix.items() if a == b} if matrix else None
    challenges = ev.per_challenge(full, rows, q, g, labels) if cfg.run.per_challenge else None
    ranking = ev.ranking_lists(full, rows, q, g, labels, cfg.run.ranking_queries)
    directory = ck.write_checkpoint(
        t.session.checkpoint_dir("final"), files,
        extra=lambda d: ev.write_artifacts(d, test, by_subset, challenges, ranking, matrix))
    p.history.append(metrics)
    t.session.report(metrics, directory)


def train(cfg: TrainConfig, job: TrainJob, session: Session) -> None:
    """Train ``cfg`` (or resume it) in ``session`` and test once at the end.

    With the intra-op thread count of a Ray worker reserving ``run.cpus_per_worker``
    CPUs, in either mode: in-process and 1-worker runs are then bit-identical on CPU.
    """
    with intra_op_threads(worker_threads(cfg.run.cpus_per_worker)):
        _train(cfg, job, session)


def _train(cfg: TrainConfig, job: TrainJob, session: Session) -> None:
    _seed_everything(cfg.run.seed)
    _deterministic(session.device)
    t = _build(cfg, job, session)
    t.progress = _restore(session.latest_checkpoint(), t)
    if t.progress.final_metrics is not None:  # re-run of a finished run: nothing left to do
        session.report(t.progress.final_metrics, None)
        return
    run_epochs(t)
    final_test(t)


def train_func(config: dict) -> None:
    """Entry point of every Ray Train worker: ``config = {"cfg": TrainConfig, "job": TrainJob}``."""
    cfg, job = config["cfg"], config["job"]
    train(cfg, job, RaySession(cfg.run.use_gpu))
