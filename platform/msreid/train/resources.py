"""GPUs a run asks for, checked before anything starts (one ``UserError`` naming what is missing).

Without this check Ray waits for a GPU that never comes and ends in "worker group startup
timed out". A Ray worker takes one whole GPU (``msreid.train.trainer``); local mode uses this
process's GPU.
"""

from __future__ import annotations

from typing import Sequence

import ray
import torch

from msreid.config import TrainConfig
from msreid.errors import UserError
from msreid.train.ray_runtime import autoscaler_max_gpus


def missing_gpus(use_gpu: bool, num_workers: int, node_gpus: Sequence[float], joined: bool,
                 autoscaler_gpus: int | None, cuda_here: bool, *, local: bool = False) -> str | None:
    """What a run asking for GPUs lacks (None: nothing), or None when autoscaling may add it.

    local: the run trains in this process (the mode ``fit`` chose; default: on
    ``num_workers`` Ray workers). node_gpus: GPUs of each live node; autoscaler_gpus: the most GPUs the
    cluster's autoscaler may provide (None: no autoscaler config).
    """
    if not use_gpu:
        return None
    if local:
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


def check_resources(cfg: TrainConfig, *, local: bool, joined: bool) -> None:
    """UserError naming what the run asks for and the cluster lacks (before anything starts)."""
    if not cfg.run.use_gpu:
        return
    nodes = [n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")]
    joined = joined or len(nodes) > 1
    problem = missing_gpus(True, cfg.run.num_workers, nodes, joined,
                           autoscaler_max_gpus() if joined else None, torch.cuda.is_available(),
                           local=local)
    if problem:
        raise UserError(f"{problem}: set run.use_gpu=false, or run where GPUs are")
