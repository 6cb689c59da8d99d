"""Tuples/s of one HAMNet training step against its floor: m x the bare timm backbone (issue 5).

Prints, from one run, at the same batch size, image size and thread count:
  * floor: one bare ``timm.create_model(backbone, num_classes=0)`` forward +
    backward + Adam step, times m (the number of spectra): what m independent
    backbones cost with nothing else;
  * msreid: ``MultiStreamNet`` (m streams, classifiers, CAMs) + ``compute_losses``
    with the HAMNet terms (L_msid + alpha L_hsc + L_caid) + backward + Adam step;
  * official structure: the same model run twice per step (once for the ID /
    HSC scores, once more for the CAMs), as the official code does;
and the overhead of each over the floor. Goal: msreid <= floor + 10%.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python perf/train_step.py   # resnet50
    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python perf/train_step.py \
        --backbone test_resnet --size 64 128

On a machine shared with other jobs, wall times are noisy: the script
interleaves the variants (A B C A B C ...) and reports medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import timm
import torch

from msreid.losses import ABLATIONS, compute_losses
from msreid.models import build_model, resolve_backbone

SPECTRA = ("rgb", "nir", "tir")


def bare_backbone_step(backbone: str, batch: int, size: tuple[int, int]) -> Callable[[], None]:
    """One timm backbone: forward + backward of mean(features^2) + Adam step."""
    model = timm.create_model(resolve_backbone(backbone).timm_name, num_classes=0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, *size)

    def step() -> None:
        loss = model(x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def hamnet_step(backbone: str, batch: int, size: tuple[int, int], num_classes: int,
                twice: bool = False) -> Callable[[], None]:
    """msreid's training step (``twice``: the official code's two passes per step)."""
    model = build_model(backbone, SPECTRA, num_classes, input_size=size)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = {s: torch.randn(batch, 3, *size) for s in SPECTRA}
    labels = torch.arange(batch) % num_classes
    kwargs = ABLATIONS["hamnet"]

    def step() -> None:
        if twice:
            scores = model(images)
            cams = model(images, return_cams=True)
            out = scores._replace(cams=cams.cams)
        else:
            out = model(images, return_cams=True)
        loss = compute_losses(out, labels, **kwargs)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(steps: dict[str, Callable[[], None]], repeats: int,
            warmup: int = 1) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per call of each step, interleaved so load changes hit all alike.

    CPU time (``time.process_time``: all threads of this process) is what the
    step costs; wall time also counts waiting for cores taken by other jobs.
    """
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch", type=int, default=16, help="tuples per step (paper: 16)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input size (default: the backbone's, 128 256 for resnet50)")
    p.add_argument("--classes", type=int, default=50, help="train ids (RGBNT100: 50)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(args.size or resolve_backbone(args.backbone).input_size)
    m, b = len(SPECTRA), args.batch
    steps = {"bare backbone": bare_backbone_step(args.backbone, b, size),
             "msreid hamnet": hamnet_step(args.backbone, b, size, args.classes),
             "official (2 passes)": hamnet_step(args.backbone, b, size, args.classes, True)}
    sec = measure(steps, args.repeats)
    print(f"{args.backbone} {size[0]}x{size[1]}, batch {b}, m={m} spectra, "
          f"{args.threads} threads, median of {args.repeats}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'variant':<28}{'wall s':>8}{'tuples/s':>10}{'vs floor':>10}"
          f"{'CPU s':>8}{'vs floor':>10}")
    floor = tuple(m * t for t in sec["bare backbone"])
    print(f"{'floor: m x bare backbone':<28}{floor[0]:>8.3f}{b / floor[0]:>10.2f}{'':>10}"
          f"{floor[1]:>8.3f}")
    for name in ("msreid hamnet", "official (2 passes)"):
        w, c = sec[name]
        print(f"{name:<28}{w:>8.3f}{b / w:>10.2f}{(w / floor[0] - 1) * 100:>+9.1f}%"
              f"{c:>8.3f}{(c / floor[1] - 1) * 100:>+9.1f}%")


if __name__ == "__main__":
    main()
