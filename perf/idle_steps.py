"""CPU of Ray Data's scheduling loop while training is slower than decoding, with and without
msreid's pause after idle steps (msreid.train.idle_steps; issue 22).

    .venv/bin/python perf/idle_steps.py                 # ~1 minute on 2 cores
    .venv/bin/python perf/idle_steps.py --batches 24 --step-s 0.05   # tiny (the test's size)

The shape of a smoke benchmark trial: a local Ray of 2 CPUs, two "trials" as placement groups
of 0.5 + 0.5 CPU, one of them an actor in its first bundle that iterates a dataset whose
map_batches tasks run in its second bundle (as ``data_in_trial_reservation`` sets up). Each
batch is consumed by a ``time.sleep`` of ``--step-s`` standing for the training step, so the
consumer costs no CPU and everything the actor's process spends is the pipeline's. The same
dataset is iterated twice in each of two fresh actors, without and with the pause; the
baseline is the run without, in the same invocation. Printed: wall, CPU seconds of the
iterating process, scheduling steps (counted by a callback), the steps followed by a pause,
and that both runs yielded the same bytes in the same order.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import numpy as np

STEPS = [0]  # scheduling steps of the dataset being iterated in this process


def _make(batch: dict, *, nbytes: int) -> dict:
    """One block per row id: ``nbytes`` of pixels derived from the id (the decode stand-in)."""
    i = int(batch["id"][0])
    pixels = np.random.default_rng(i).integers(0, 255, size=(1, nbytes), dtype=np.uint8)
    return {"id": batch["id"], "pixels": pixels}


class Trial:
    """One trial's process: iterates the dataset, its tasks in the trial's placement group."""

    def iterate(self, *, pause: bool, batches: int, nbytes: int, step_s: float) -> dict:
        import ray
        from ray.data import DataContext
        from ray.data._internal.execution.execution_callback import ExecutionCallback
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from msreid.train.idle_steps import pause_idle_steps

        class CountSteps(ExecutionCallback):
            def on_execution_step(self, executor) -> None:
                STEPS[0] += 1

        group = ray.util.get_current_placement_group()
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
        ctx = DataContext.get_current()
        ctx.scheduling_strategy = ctx.scheduling_strategy_large_args = strategy
        ds = ray.data.from_items([{"id": i} for i in range(batches)], override_num_blocks=batches)
        ds.context.execution_options.preserve_order = True
        ds.context.enable_progress_bars = False
        ds.context.custom_execution_callback_classes = [CountSteps]
        if pause:
            pause_idle_steps(ds.context)
        ds = ds.map_batches(_make, batch_size=None, fn_kwargs={"nbytes": nbytes}, num_cpus=0.5)
        STEPS[0] = 0
        digest = hashlib.sha256()
        cpu, wall = time.process_time(), time.perf_counter()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            digest.update(batch["pixels"].tobytes())
            time.sleep(step_s)
        return {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall,
                "steps": STEPS[0], "digest": digest.hexdigest()}


def measure(pause: bool, args) -> dict:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    groups = [placement_group([{"CPU": 0.5}, {"CPU": 0.5}]) for _ in range(2)]
    ray.get([g.ready() for g in groups])
    try:
        actor = ray.remote(Trial).options(num_cpus=0.5, scheduling_strategy=PlacementGroupSchedulingStrategy(
            groups[0], placement_group_bundle_index=0,
            placement_group_capture_child_tasks=True)).remote()
        ray.get(actor.iterate.remote(pause=pause, batches=4, nbytes=args.nbytes, step_s=0.0))  # warm
        out = ray.get(actor.iterate.remote(pause=pause, batches=args.batches, nbytes=args.nbytes,
                                           step_s=args.step_s))
        ray.kill(actor)
        return out
    finally:
        for g in groups:
            remove_placement_group(g)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=200, help="batches (one task and block each)")
    p.add_argument("--nbytes", type=int, default=1_200_000,
                   help="bytes per batch (a smoke 3-stream batch of 16 is ~1.2 MB)")
    p.add_argument("--step-s", type=float, default=0.25, help="the stand-in training step, s")
    args = p.parse_args(argv)
    from msreid.train.ray_runtime import local_ray_environment, start_local_ray

    local_ray_environment()  # before anything imports Ray: loopback only (docs/RAY.md)
    import ray

    start_local_ray(2, log_to_driver=False, configure_logging=False)
    try:
        base = measure(False, args)
        fast = measure(True, args)
    finally:
        ray.shutdown()
    print(f"{args.batches} batches of {args.nbytes / 1e6:.1f} MB, consumer step {args.step_s} s, "
          f"Ray {ray.__version__}")
    print("| run | wall s | CPU s of the iterating process | scheduling steps | ratio (CPU) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in (("Ray Data as is (baseline)", base), ("pause after idle steps", fast)):
        print(f"| {name} | {r['wall']:.1f} | {r['cpu']:.2f} | {r['steps']} | "
              f"{r['cpu'] / base['cpu']:.2f}x |")
    same = base["digest"] == fast["digest"]
    print(f"same bytes in the same order: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
