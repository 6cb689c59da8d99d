"""The pause after idle scheduling steps (msreid.train.idle_steps): when it sleeps, that it is
on every dataset the pipeline builds, that it reads what the installed Ray really has, and
perf/idle_steps.py as docs/PERFORMANCE.md runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from msreid.train import idle_steps
from msreid.train.idle_steps import PROGRESS_METRICS, PauseIdleSteps, progress_state

ROOT = Path(__file__).resolve().parents[1]


def _executor(*ops: tuple[int, ...]) -> SimpleNamespace:
    """A stand-in executor whose operators have these metric values (PROGRESS_METRICS order)."""
    topology = [SimpleNamespace(metrics=SimpleNamespace(**dict(zip(PROGRESS_METRICS, values))))
                for values in ops]  # Ray's is a dict keyed by operator: iterated the same way
    return SimpleNamespace(_topology=topology)


def test_pauses_only_after_a_step_that_changed_nothing():
    slept = []
    cb = PauseIdleSteps(pause_s=0.01, sleep=slept.append)
    a = (1, 0, 0, 0, 0)
    b = (1, 1, 1, 0, 1)  # the task finished and emitted a block
    c = (1, 1, 1, 1, 0)  # the consumer took it
    # steps: first ever (no pause), same, same, progress, same, progress, progress, same
    states = [a, a, a, b, b, c, a, a]
    for s in states:
        cb.on_execution_step(_executor((0, 0, 0, 0, 0), s))
    assert slept == [0.01] * 4 and cb.pauses == 4  # steps 2, 3, 5 and 8


def test_does_nothing_when_this_ray_does_not_expose_the_operators():
    slept = []
    cb = PauseIdleSteps(sleep=slept.append)
    for _ in range(3):
        cb.on_execution_step(SimpleNamespace())  # no _topology
        cb.on_execution_step(SimpleNamespace(_topology=[SimpleNamespace()]))  # no metrics
    assert slept == [] and cb.pauses == 0
    assert progress_state(SimpleNamespace(_topology=None)) is None


def test_added_to_the_dataset_context_without_touching_the_shared_one():
    shared = []
    ctx = SimpleNamespace(custom_execution_callback_classes=shared)
    idle_steps.pause_idle_steps(ctx)
    idle_steps.pause_idle_steps(ctx)  # once only
    assert ctx.custom_execution_callback_classes == [PauseIdleSteps]
    assert shared == []


@pytest.mark.timeout(180)
def test_every_pipeline_dataset_pauses_and_ray_exposes_what_it_reads(ray_session, tmp_path):
    """Against the installed Ray: the executor calls the callback each step with operators whose
    PROGRESS_METRICS are integers that move; train and eval datasets carry it; the process's
    global DataContext is left alone."""
    import ray
    from ray.data import DataContext

    from msreid.train import pipeline

    seen: list[tuple | None] = []

    class Record(PauseIdleSteps):
        def on_execution_step(self, executor):
            seen.append(progress_state(executor))
            super().on_execution_step(executor)

    ds = ray.data.from_items([{"id": i} for i in range(6)], override_num_blocks=3)
    ds.context.custom_execution_callback_classes = [Record]
    ds = ds.map_batches(lambda b: {"id": b["id"] * 2}, batch_size=None)
    assert sorted(int(r["id"]) for r in ds.iter_rows()) == [0, 2, 4, 6, 8, 10]
    assert seen and all(s is not None for s in seen), (
        f"Ray {ray.__version__}: StreamingExecutor._topology / operator metrics "
        f"{PROGRESS_METRICS} are gone; msreid.train.idle_steps no longer pauses (adapt it)")
    for op_state in seen[-1]:
        assert all(isinstance(v, int) for v in op_state), seen[-1]
    assert len(set(seen)) > 1, "the metrics never changed during a whole execution"

    spec = SimpleNamespace()  # the datasets are only built here, never executed
    one = np.zeros((1, 2), dtype=np.int64)
    for ds in (pipeline.train_dataset(spec, one, one[:, 0], one[:, 0], one[:, 0], one[:, 0]),
               pipeline.eval_dataset(spec, np.arange(3))):
        assert PauseIdleSteps in ds.context.custom_execution_callback_classes
    assert PauseIdleSteps not in DataContext.get_current().custom_execution_callback_classes


@pytest.mark.timeout(240)
def test_idle_steps_script_runs_as_documented():
    """perf/idle_steps.py at the tiny size docs/PERFORMANCE.md gives: same bytes, and the pause
    cuts the scheduling steps (thousands per second without it, at most ~100 with it)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "idle_steps.py"), "--batches", "24",
         "--step-s", "0.05"],
        capture_output=True, text=True, timeout=220, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "platform")})
    text = out.stdout
    assert "same bytes in the same order: yes" in text, text
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| Ray Data as is")
            or line.startswith("| pause after idle steps")]
    assert len(rows) == 2, text
    steps = [int(r[4]) for r in rows]
    assert steps[1] < steps[0], text
