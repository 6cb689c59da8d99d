"""What a smoke benchmark trial pays besides training: Ray worker processes and their imports.

Two measurements in one run, each against a baseline measured beside it:

1. The import a fresh Ray Data decode worker pays before its first task
   (``msreid.train.pipeline`` and ``ray.data``), with and without torch, in
   fresh processes (median CPU seconds of 3). msreid's decode path imports torch
   only when a piece must be resized (``msreid.data.transforms``).
2. Two one-stream smoke trials at once, through ``experiments/full_benchmark.py``
   on the cached synthetic data, with Ray's default number of idle workers kept
   (``RAY_num_workers_soft_limit=-1``, Ray's own default value, which msreid leaves
   alone) and with msreid's (8, set by ``msreid.train.ray_runtime.start_local_ray``),
   alternating: wall seconds and the worker processes Ray started (one log file
   each in the session directory).

    .venv/bin/python perf/trial_overheads.py            # ~5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = {"decode worker imports": "import ray.data, msreid.train.pipeline",
           "the same + torch": "import torch, ray.data, msreid.train.pipeline"}

GRID = """name: table3
title: "two one-stream smoke trials"
paper_table: table3
dataset: rgbnt100
metrics: [mAP, R1, R5, R10]
row_label: Modality
column_label: Backbone
columns:
  - {name: test_resnet, paper_backbone: ResNet50, set: {model.backbone: test_resnet}}
rows:
  - {name: RGB one-stream, paper_row: RGB one-stream, set: {data.spectra: [rgb], loss.ablation: one_stream}}
  - {name: NIR one-stream, paper_row: NIR one-stream, set: {data.spectra: [nir], loss.ablation: one_stream}}
"""
SUITE = """name: overheads
preset: smoke
seeds: [0]
tables: [{{grid: {grid}}}]
set: {{model.backbone: test_resnet}}
trial_resources: [{{CPU: 0.5}}, {{CPU: 0.5}}]
max_concurrent_trials: 2
"""


def import_cpu(code: str) -> float:
    """CPU seconds (user + system) of a fresh interpreter running ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def two_trials(work: Path, soft_limit: str | None) -> tuple[float, int]:
    """(wall seconds, Ray worker processes started) of the two-trial suite."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths
    run = work / f"run-{time.monotonic_ns()}"
    run.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "MSREID_CACHE": str(work / "cache")}
    env.pop("RAY_ADDRESS", None)
    if soft_limit is None:
        env.pop("RAY_num_workers_soft_limit", None)
    else:
        env["RAY_num_workers_soft_limit"] = soft_limit
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "experiments" / "full_benchmark.py"),
                    "--preset", str(work / "suite.yaml"), "--quiet"], cwd=run, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    workers = len(list(ray_tmp.glob("ray/session_2*/logs/worker-*.out")))
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return wall, workers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"{cores} cores, load average {os.getloadavg()[0]:.1f} at start")

    cpu = {name: statistics.median(import_cpu(code) for _ in range(3))
           for name, code in IMPORTS.items()}
    base = cpu["the same + torch"]
    print("1. imports of a fresh decode worker, median CPU s of 3:")
    for name, sec in cpu.items():
        print(f"   {name:24s} {sec:5.2f} s   {sec / base:4.2f}x of the import with torch")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "grid.yaml").write_text(GRID)
        (work / "suite.yaml").write_text(SUITE.format(grid=work / "grid.yaml"))
        two_trials(work, None)  # warm-up: generates the synthetic data into the cache
        results: dict[str, list[tuple[float, int]]] = {"Ray default": [], "msreid": []}
        for _ in range(args.repeats):
            results["Ray default"].append(two_trials(work, "-1"))
            results["msreid"].append(two_trials(work, None))
    print(f"2. two one-stream smoke trials at once (full_benchmark.py), median of {args.repeats}:")
    base_wall = statistics.median(w for w, _ in results["Ray default"])
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        workers = statistics.median(n for _, n in runs)
        label = f"idle workers kept: {name}" + (" (-1)" if name == "Ray default" else " (8)")
        print(f"   {label:34s} {wall:6.1f} s wall  {workers:4.0f} worker processes  "
              f"{wall / base_wall:4.2f}x")


if __name__ == "__main__":
    main()
