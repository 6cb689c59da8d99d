"""What a run hands to its session: the job, the datasets and, on Ray workers, the TorchTrainer.

``train_job`` and ``run_datasets`` serve both modes (the local session iterates the same
datasets); ``build_trainer`` is Ray mode's ``TorchTrainer`` running ``msreid.train.loop``
on ``run.num_workers`` workers, with its checkpoints in ``<storage_path>/<name>``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from msreid.config import TrainConfig
from msreid.data.transforms import AugmentParams
from msreid.train import loop
from msreid.train.loop import QueryGallery, TrainJob
from msreid.train.pipeline import DecodeSpec, eval_dataset, train_dataset
from msreid.train.plan import Plan
from msreid.train.sampling import RowMeta, SplitRows
from msreid.train.session import KEEP_CHECKPOINTS


def train_job(spectra, size, meta: RowMeta, rows: SplitRows, validate: bool, plan: Plan,
              run_dir: str, epoch_hooks: Sequence[Callable[[int, int], None]]) -> TrainJob:
    return TrainJob(
        spectra=tuple(spectra), size=tuple(size), num_classes=rows.num_classes,
        steps_per_epoch=tuple(plan.steps_per_epoch), run_dir=run_dir, labels=meta,
        val=QueryGallery(rows.val_query, rows.val_gallery) if validate else None,
        test=QueryGallery(rows.test_query, rows.test_gallery), epoch_hooks=tuple(epoch_hooks))


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


def _augment(cfg: TrainConfig) -> AugmentParams:
    d = cfg.data
    fill = tuple(int(round(m * 255)) for m in d.mean)
    return AugmentParams(flip_prob=d.flip_prob, pad=d.pad, erase_prob=d.erase_prob,
                         erase_fill=fill)


def run_datasets(cfg: TrainConfig, index, spectra, size, rows: SplitRows, validate: bool,
                 plan: Plan, world: int, run_dir: str,
                 resume_epoch: Callable[[str], int]) -> dict[str, Any]:
    """"train_<rank>" for each of ``world`` workers (factories: see _train_factory), "test" and
    maybe "val"."""
    d = cfg.data
    train_spec = DecodeSpec(index, spectra, size, _augment(cfg), cfg.run.seed,
                            cfg.data.modality_dropout, decoder=d.jpeg_decoder)
    eval_spec = DecodeSpec(index, spectra, size, None, cfg.run.seed, decoder=d.jpeg_decoder)
    evals = {"test": np.concatenate([rows.test_query, rows.test_gallery])}
    if validate:
        evals["val"] = np.concatenate([rows.val_query, rows.val_gallery])
    return {**{f"train_{r}": _train_factory(train_spec, plan, r, world, run_dir, resume_epoch, cfg)
               for r in range(world)},
            **{k: eval_dataset(eval_spec, v, batch_size=d.eval_batch_size,
                               num_decode_workers=d.num_decode_workers, num_cpus=d.decode_cpus)
               for k, v in evals.items()}}


def build_trainer(cfg: TrainConfig, job: TrainJob, datasets: dict, storage_path: str, name: str,
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
