"""Cost of the global-batch step on 2 CPU workers: synced BatchNorm and gathered losses (issue 12).

Two gloo processes with DDP (torch.multiprocessing, 127.0.0.1), each holding
half of a P x K global batch, run interleaved rounds of four variants of one
training step (forward, losses, backward, Adam):

  * local: BatchNorm per worker, losses on the worker's share (the baseline:
    what a DDP step costs without the global-batch guarantees);
  * syncbn: BatchNorm statistics all-reduced (``CpuSyncBatchNorm``);
  * gathered: outputs and labels all-gathered, losses on the global batch;
  * syncbn+gathered: both, the step ``msreid train`` runs on >1 worker.

The losses are the official preset's (L_msid + official L_hsc + L_caid +
batch-hard triplet): the gather then carries the CAMs too (its worst case).
Rank 0 reports median wall and CPU seconds per step and the ratio vs local.

    OMP_NUM_THREADS=1 .venv/bin/python perf/sync_step.py
    OMP_NUM_THREADS=1 .venv/bin/python perf/sync_step.py --backbone resnet50 --size 128 256 --P 4 --K 4
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from msreid.losses import ABLATIONS, compute_losses
from msreid.models import build_model
from msreid.models.sync_batchnorm import convert_sync_batchnorm
from msreid.train.distributed import gather_outputs

SPECTRA = ("rgb", "nir", "tir")
VARIANTS = ("local", "syncbn", "gathered", "syncbn+gathered")


def make_step(variant: str, args, rank: int):
    """One variant's step function on this rank's share of a fixed global batch."""
    torch.manual_seed(0)
    num_classes = 2 * args.P
    model = build_model(args.backbone, SPECTRA, num_classes, input_size=tuple(args.size))
    if "syncbn" in variant:
        model = convert_sync_batchnorm(model, "cpu")
    ddp = DistributedDataParallel(model.train())
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-4)
    share = args.P * args.K // 2
    g = torch.Generator().manual_seed(rank)
    images = {s: torch.randn(share, 3, *args.size, generator=g) for s in SPECTRA}
    labels = torch.arange(args.P).repeat_interleave(args.K)[rank * share:(rank + 1) * share]
    kwargs = {**ABLATIONS["hamnet_official"], "triplet_margin": 0.3}
    gather = "gathered" in variant

    def step() -> None:
        out = ddp(images, return_cams=True)
        out_all, labels_all = gather_outputs(out, labels) if gather else (out, labels)
        loss = compute_losses(out_all, labels_all, **kwargs)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def worker(rank: int, port: int, args, out: dict) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        steps = {v: make_step(v, args, rank) for v in VARIANTS}
        wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for v in VARIANTS:  # warm-up
            steps[v]()
        for _ in range(args.repeats):
            for v in VARIANTS:  # interleaved: load changes hit every variant alike
                dist.barrier()
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    steps[v]()
                dist.barrier()
                wall[v].append((time.perf_counter() - t0) / args.steps)
                cpu[v].append((time.process_time() - c0) / args.steps)
        if rank == 0:
            out.update({v: (statistics.median(wall[v]), statistics.median(cpu[v]))
                        for v in VARIANTS})
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--size", type=int, nargs=2, default=[64, 128])
    parser.add_argument("--P", type=int, default=4)
    parser.add_argument("--K", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(worker, args=(port, args, out), nprocs=2, join=True)
        res = dict(out)
    base_wall, base_cpu = res["local"]
    print(f"| {args.backbone}, {args.size[0]} x {args.size[1]}, global batch "
          f"{args.P} x {args.K} on 2 workers, load average {os.getloadavg()[0]:.1f} "
          "| wall s/step | vs local | CPU s/step (rank 0) | vs local |")
    print("|---|---:|---:|---:|---:|")
    for v in VARIANTS:
        w, c = res[v]
        print(f"| {v} | {w:.4f} | {w / base_wall - 1:+.1%} | {c:.4f} | {c / base_cpu - 1:+.1%} |")


if __name__ == "__main__":
    main()
