"""The Ray Train loop: what every worker runs (``train_loop_per_worker``).

Stages, top to bottom: context and seeds, model (DDP through
``ray.train.torch.prepare_model``), optimiser + warm-up / multi-step schedule,
restore from the last checkpoint, then per epoch: train on this worker's
shard, reduce the loss terms across ranks, validate (rank 0), checkpoint
(rank 0) and ``ray.train.report``. At the end rank 0 evaluates the test set
once with the best-by-validation model (``test/*``) and once with the last
epoch's (``final_test/*``) and writes the artifacts into the final checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from msreid.config import OptimConfig, TrainConfig, config_from_dict, config_to_dict, loss_kwargs
from msreid.data.transforms import normalize
from msreid.losses import compute_losses
from msreid.models import build_model
from msreid.train import artifacts as art
from msreid.train import checkpoint as ck

log = logging.getLogger(__name__)

LOSS_TERMS = ("loss", "id", "hsc", "caid", "triplet")
LOCAL_CALLBACKS: list = []  # user callbacks, called by hand in local mode (num_workers=0)


def lr_at(epoch: int, o: OptimConfig) -> float:
    """Learning rate of ``epoch`` (0-based): linear warm-up, then x gamma at each milestone."""
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
class Worker:
    """This worker's place in the run."""

    rank: int
    world: int
    device: torch.device
    local_mode: bool

    @property
    def distributed(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()


@dataclass
class RunState:
    """What survives a restart (restored from the checkpoint)."""

    start_epoch: int = 0
    best_metric: float = float("-inf")
    best_epoch: int = -1
    best_state: dict | None = None
    history: list = field(default_factory=list)
    final_metrics: dict | None = None


def _worker(cfg: TrainConfig) -> Worker:
    ctx = ray.train.get_context()
    local = cfg.run.num_workers == 0
    device = ray.train.torch.get_device() if cfg.run.use_gpu else torch.device("cpu")
    return Worker(ctx.get_world_rank(), ctx.get_world_size(), device, local)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _build(cfg: TrainConfig, job: dict, w: Worker) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(model as trained (DDP-wrapped when world > 1), the bare MultiStreamNet)."""
    m = cfg.model
    raw = build_model(m.backbone, job["spectra"], job["num_classes"], pretrained=m.pretrained,
                      pretrained_file=m.pretrained_file or None, last_stride_1=m.last_stride_1,
                      neck=m.neck, embedding=m.embedding, embed_at=m.embed_at,
                      input_size=tuple(job["size"]))
    if cfg.run.channels_last and w.device.type == "cuda":
        raw = raw.to(memory_format=torch.channels_last)
    if w.local_mode:
        return raw.to(w.device), raw
    model = ray.train.torch.prepare_model(raw, parallel_strategy_kwargs={
        "find_unused_parameters": False})
    return model, raw


def _restore(checkpoint, raw, opt, sched, scaler) -> RunState:
    """Load the latest checkpoint into the model/optimiser/RNGs; RunState to continue from."""
    if checkpoint is None:
        return RunState()
    with checkpoint.as_directory() as d:
        meta = ck.load_json(d, ck.META_FILE)
        raw.load_state_dict(ck.load_pt(d, ck.MODEL_FILE))
        state = ck.load_pt(d, ck.STATE_FILE)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        ck.set_rng_state(state["rng"])
        best = ck.load_pt(d, ck.BEST_MODEL_FILE)
        history = ck.load_json(d, ck.HISTORY_FILE, [])
        final = ck.load_json(d, ck.FINAL_METRICS_FILE)
    log.info("resuming after epoch %d", meta["epoch"])
    return RunState(start_epoch=meta["epoch"] + 1, best_metric=state["best_metric"],
                    best_epoch=state["best_epoch"], best_state=best, history=history,
                    final_metrics=final)


def _autocast(cfg: TrainConfig, w: Worker):
    if cfg.run.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.run.precision == "bf16" else torch.float16
    return torch.autocast(device_type=w.device.type, dtype=dtype)


def _batch_images(batch: dict, cfg: TrainConfig, spectra, w: Worker) -> dict[str, torch.Tensor]:
    """uint8 [1, B, 3, H, W] per spectrum from the shard -> normalised float [B, 3, H, W]."""
    fmt = (torch.channels_last if cfg.run.channels_last and w.device.type == "cuda"
           else torch.contiguous_format)
    return {s: normalize(batch[s][0].to(w.device, non_blocking=True), cfg.data.mean,
                         cfg.data.std).contiguous(memory_format=fmt) for s in spectra}


def train_epoch(model, opt, scaler, batches: Iterator[dict], steps: int, epoch: int,
                cfg: TrainConfig, job: dict, w: Worker) -> dict[str, float]:
    """``steps`` optimiser steps on this worker; returns loss sums, tuples and seconds."""
    model.train()
    kwargs = loss_kwargs(cfg.loss)
    sums = {t: 0.0 for t in LOSS_TERMS}
    seen, start = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        if int(batch["epoch"][0]) != epoch:
            log.warning("batch of epoch %d consumed in epoch %d", int(batch["epoch"][0]), epoch)
        images = _batch_images(batch, cfg, job["spectra"], w)
        if cfg.data.batch_mode == "pk":
            check_pk(batch["labels"][0], cfg.data.P, cfg.data.K)
        labels = batch["labels"][0].to(w.device, non_blocking=True)
        with _autocast(cfg, w):
            out = model(images, return_cams=bool(kwargs.get("caid")))
            terms = compute_losses(out, labels, **kwargs)
        opt.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()
        scaler.step(opt)
        scaler.update()
        n = labels.numel()
        for t, v in terms.items():
            sums[t] += float(v.detach()) * n
        seen += n
    present = [t for t in LOSS_TERMS if t == "loss" or t in terms or t in _expected(kwargs)]
    return {"tuples": float(seen), "seconds": time.perf_counter() - start,
            **{t: sums[t] for t in present}}


def check_pk(labels: torch.Tensor, p: int, k: int) -> None:
    """Raise unless ``labels [P*K]`` is P distinct ids in blocks of K (cheap, every batch)."""
    ids = labels.view(p, k)
    if not bool((ids == ids[:, :1]).all()) or ids[:, 0].unique().numel() != p:
        raise RuntimeError(f"batch is not {p} ids x {k} tuples: {labels.tolist()}")


def _expected(kwargs: dict) -> set[str]:
    out = {"id"}
    if kwargs.get("hsc_alpha") is not None:
        out.add("hsc")
    if kwargs.get("caid"):
        out.add("caid")
    if kwargs.get("triplet_margin") is not None:
        out.add("triplet")
    return out


def reduce_epoch(stats: dict[str, float], w: Worker) -> dict[str, float]:
    """Sums over ranks (tuples, loss sums) and the slowest rank's seconds -> epoch metrics."""
    keys = sorted(k for k in stats if k != "seconds")
    t = torch.tensor([stats[k] for k in keys], dtype=torch.float64)
    sec = torch.tensor([stats["seconds"]], dtype=torch.float64)
    if w.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        dist.all_reduce(sec, op=dist.ReduceOp.MAX)
    total = dict(zip(keys, t.tolist()))
    n = max(total.pop("tuples"), 1.0)
    out = {f"train/{k}": v / n for k, v in total.items()}
    out["tuples_per_s"] = n / max(float(sec), 1e-9)
    return out


def _labels(job: dict) -> art.Labels:
    m = job["labels"]
    return art.Labels(pid=np.asarray(m["pid"]), camera=np.asarray(m["camera"]),
                      scene=np.asarray(m["scene"]), challenge=np.asarray(m["challenge"],
                                                                         dtype=object))


def _features(raw, name: str, cfg: TrainConfig, job: dict, w: Worker, subsets=None):
    """(rows, {subset: feats}) of the unsplit eval dataset ``name`` ("val" or "test")."""
    it = ray.train.get_dataset_shard(name).iter_torch_batches(
        batch_size=cfg.data.eval_batch_size, device="cpu", pin_memory=w.device.type == "cuda")
    subsets = subsets or [tuple(job["spectra"])]
    with _autocast(cfg, w):
        rows, feats = art.extract_features(raw, it, job["spectra"], subsets, cfg.data.mean,
                                           cfg.data.std, w.device,
                                           cfg.run.channels_last and w.device.type == "cuda")
    return rows, feats


def evaluate(raw, name: str, prefix: str, cfg: TrainConfig, job: dict, w: Worker) -> dict:
    """``{prefix + "mAP", ...}`` of the current weights on eval set ``name`` (rank 0)."""
    rows, feats = _features(raw, name, cfg, job, w)
    q, g = (np.asarray(job[name][k]) for k in ("query", "gallery"))
    res = art.rank_features(feats[art.subset_name(job["spectra"])], rows, q, g, _labels(job))
    return res.as_dict(prefix)


def _state_dict(raw) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in raw.state_dict().items()}


def _checkpoint_files(cfg, job, raw, opt, sched, scaler, epoch, st: RunState) -> dict:
    last = _state_dict(raw)
    return {
        ck.MODEL_FILE: last,
        ck.BEST_MODEL_FILE: st.best_state if st.best_state is not None else last,
        ck.STATE_FILE: {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "scaler": scaler.state_dict(), "rng": ck.rng_state(),
                        "best_metric": st.best_metric, "best_epoch": st.best_epoch,
                        "epoch": epoch},
        ck.CONFIG_FILE: config_to_dict(cfg),
        ck.META_FILE: {"epoch": epoch, "spectra": list(job["spectra"]),
                       "num_classes": job["num_classes"], "image_size": list(job["size"]),
                       "best_epoch": st.best_epoch, "best_val_mAP": st.best_metric},
        ck.HISTORY_FILE: st.history,
    }


def _checkpoint_dir(job: dict, w: Worker, epoch: int | str) -> Path:
    """Local mode: straight into the run directory (Ray does not persist it); else a temp dir."""
    if w.local_mode:
        return Path(job["run_dir"]) / f"checkpoint_epoch_{epoch}"
    return Path(tempfile.mkdtemp(prefix="msreid-ckpt-")) / f"checkpoint_epoch_{epoch}"


def report(metrics: dict, directory: Path | None, w: Worker) -> None:
    """ray.train.report (+ the user callbacks by hand in local mode, where Ray skips them)."""
    ckpt = ray.train.Checkpoint.from_directory(str(directory)) if directory else None
    ray.train.report(metrics, checkpoint=ckpt)  # synchronous upload to the run's storage
    if w.local_mode:
        for cb in LOCAL_CALLBACKS:
            cb.after_report(run_context=None, metrics=[dict(metrics)], checkpoint=ckpt)
        if directory is not None:
            ck.prune_local_checkpoints(directory.parent)
    elif directory is not None:
        shutil.rmtree(directory.parent, ignore_errors=True)  # our temp copy, now persisted


def _maybe_fail(job: dict, epoch: int, w: Worker) -> None:
    """Fault injection for the resume test: die once at the start of ``fail_at_epoch``."""
    fail = job.get("fail")
    if fail and w.rank == fail.get("rank", 0) and epoch == fail["epoch"]:
        marker = Path(fail["marker"])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)


def _due(epoch: int, every: int, last: int) -> bool:
    return (epoch + 1) % every == 0 or epoch == last


def _validate(raw, cfg, job, w, epoch: int, st: RunState, metrics: dict) -> bool:
    """Rank 0: validation (and the optional test curve); True when it ran."""
    last = cfg.optim.epochs - 1
    ran = False
    if job["val"] is None:  # no validation: the selected model is the last epoch's
        st.best_epoch, st.best_state = epoch, None
    elif _due(epoch, cfg.run.eval_every, last):
        metrics.update(evaluate(raw, "val", "val/", cfg, job, w))
        ran = True
        if metrics["val/mAP"] > st.best_metric:
            st.best_metric, st.best_epoch, st.best_state = metrics["val/mAP"], epoch, _state_dict(raw)
    if cfg.run.test_curve_every and _due(epoch, cfg.run.test_curve_every, last):
        metrics.update(evaluate(raw, "test", "test_curve/", cfg, job, w))
    return ran


def run_epochs(model, raw, opt, sched, scaler, cfg: TrainConfig, job: dict, w: Worker,
               st: RunState) -> None:
    """Epochs ``st.start_epoch .. epochs-1``: train, reduce, validate, checkpoint, report."""
    shard = ray.train.get_dataset_shard("train")
    batches = iter(shard.iter_torch_batches(
        batch_size=1, prefetch_batches=cfg.data.prefetch_batches, device="cpu",
        pin_memory=w.device.type == "cuda"))
    last = cfg.optim.epochs - 1
    for epoch in range(st.start_epoch, cfg.optim.epochs):
        _maybe_fail(job, epoch, w)
        lr = opt.param_groups[0]["lr"]
        stats = train_epoch(model, opt, scaler, batches, job["steps_per_worker"][epoch], epoch,
                            cfg, job, w)
        sched.step()
        metrics = {"epoch": epoch, "lr": lr, **reduce_epoch(stats, w)}
        directory = None
        if w.rank == 0:
            validated = _validate(raw, cfg, job, w, epoch, st, metrics)
            st.history.append(metrics)
            if validated or _due(epoch, cfg.run.checkpoint_every, last):
                files = _checkpoint_files(cfg, job, raw, opt, sched, scaler, epoch, st)
                directory = ck.write_checkpoint(_checkpoint_dir(job, w, epoch), files)
        report(metrics, directory, w)


def finish(raw, opt, sched, scaler, cfg: TrainConfig, job: dict, w: Worker,
           st: RunState) -> None:
    """Rank 0: test once with the best model (and the last, for the gap); artifacts; report."""
    if w.rank != 0:
        report({}, None, w)
        return
    last_epoch = cfg.optim.epochs - 1
    final = evaluate(raw, "test", "final_test/", cfg, job, w)  # the last epoch's weights
    files = _checkpoint_files(cfg, job, raw, opt, sched, scaler, last_epoch, st)
    if st.best_state is not None:
        raw.load_state_dict(st.best_state)
    spectra = tuple(job["spectra"])
    subsets = (art.spectrum_subsets(spectra) if cfg.run.missing_modality and len(spectra) > 1
               else [spectra])
    rows, feats = _features(raw, "test", cfg, job, w, subsets)
    q, g = (np.asarray(job["test"][k]) for k in ("query", "gallery"))
    labels = _labels(job)
    full = feats[art.subset_name(spectra)]
    test = art.rank_features(full, rows, q, g, labels)
    metrics = {"epoch": last_epoch, "best_epoch": st.best_epoch, **test.as_dict("test/"), **final}
    if job["val"] is not None:
        metrics["best_val/mAP"] = st.best_metric
    files[ck.FINAL_METRICS_FILE] = metrics
    by_subset = ({art.subset_name(s): art.rank_features(feats[art.subset_name(s)], rows, q, g,
                                                        labels) for s in subsets}
                 if len(subsets) > 1 else None)
    challenges = art.per_challenge(full, rows, q, g, labels) if cfg.run.per_challenge else None
    ranking = art.ranking_lists(full, rows, q, g, labels, cfg.run.ranking_queries)
    directory = ck.write_checkpoint(
        _checkpoint_dir(job, w, "final"), files,
        extra=lambda d: art.write_artifacts(d, test, by_subset, challenges, ranking))
    st.history.append(metrics)
    report(metrics, directory, w)


def _latest_checkpoint(job: dict, w: Worker):
    """Ray's checkpoint to resume from; in local mode (no Ray restore) the run dir's newest."""
    if not w.local_mode:
        return ray.train.get_checkpoint()
    found = ck.local_checkpoints(job["run_dir"])
    return ray.train.Checkpoint.from_directory(str(found[-1])) if found else None


def train_loop_per_worker(config: dict) -> None:
    """Entry point of every Ray Train worker; ``config = {"cfg": flat config, "job": ...}``.

    ``job`` (built by ``msreid.train.run``): spectra, size (H, W), num_classes,
    steps_per_worker per epoch, labels of every manifest row, the val/test
    query and gallery rows, run_dir, and optionally "fail" (fault injection).
    """
    cfg = config_from_dict(config["cfg"])
    job = config["job"]
    w = _worker(cfg)
    _seed_everything(cfg.run.seed)
    model, raw = _build(cfg, job, w)
    opt, sched = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(w.device.type, enabled=(
        cfg.run.precision == "fp16" and w.device.type == "cuda"))
    latest = _latest_checkpoint(job, w)
    st = _restore(latest, raw, opt, sched, scaler)
    if st.final_metrics is not None:  # re-run of a finished run: nothing left to do
        # local mode: hand the final checkpoint back (Ray's Result holds it otherwise)
        ray.train.report(st.final_metrics, checkpoint=latest if w.local_mode else None)
        return
    run_epochs(model, raw, opt, sched, scaler, cfg, job, w, st)
    finish(raw, opt, sched, scaler, cfg, job, w, st)
