"""A pause in Ray Data's scheduling loop when a step changed nothing (issue 22).

Ray Data runs each dataset's scheduling loop in a thread of the process that
iterates it (our training loop's process). The loop blocks in ``ray.wait`` for
at most 0.1 s, but only while some task has not produced its output: when every
running task has an output ready that backpressure will not let it read (the
consumer, training, is slower than the decoding), or when no task is running,
the loop goes round again at once. Measured in smoke benchmark trials
(Ray 2.60, two trials on 2 cores): 60,000-74,000 steps per 3-stream training,
34-41 CPU-seconds of the trial's ~80, on the same core as the training it
waits for; a 9-trial smoke benchmark spent ~220 of its ~600 CPU-seconds there.

``PauseIdleSteps`` is a Ray Data execution callback (``DataContext.
custom_execution_callback_classes``): after a step in which no operator
submitted, finished or emitted anything and no block left the output queue, it
sleeps ``PAUSE_S``. That is the interval at which Ray Data's own iterator polls
the output queue while waiting for a block, so a consumer waits at most about
one more of its own polls, and only when nothing has happened for a whole step.
The data and its order do not change (the pause only delays the next step).

It reads the executor's operators (``StreamingExecutor._topology``) and their
runtime metrics, which are not public API: tests/test_ray_private_api.py checks
both against the installed Ray, and when they are missing the callback does
nothing (Ray's behaviour without it).
"""

from __future__ import annotations

import time
from typing import Any

from ray.data._internal.execution.execution_callback import ExecutionCallback

PAUSE_S = 0.01  # Ray Data's OutputSplitter/OpState.get_output_blocking polls every 10 ms

# Operator runtime metrics whose change means the step did something.
PROGRESS_METRICS = ("num_tasks_submitted", "num_tasks_finished", "num_task_outputs_generated",
                    "num_outputs_taken", "num_external_outqueue_blocks")


def progress_state(executor: Any) -> tuple | None:
    """What a step can change, per operator; ``None`` when this Ray does not expose it."""
    topology = getattr(executor, "_topology", None)
    if not topology:
        return None
    state = []
    for op in topology:
        metrics = getattr(op, "metrics", None)
        if metrics is None:
            return None
        state.append(tuple(getattr(metrics, name, None) for name in PROGRESS_METRICS))
    return tuple(state)


class PauseIdleSteps(ExecutionCallback):
    """Sleep ``PAUSE_S`` after a scheduling step that changed nothing (module docstring)."""

    def __init__(self, pause_s: float = PAUSE_S, sleep=time.sleep):
        self._pause_s = pause_s
        self._sleep = sleep
        self._last: tuple | None = None
        self.pauses = 0  # for tests and perf/: how many steps were followed by a pause

    def on_execution_step(self, executor: Any) -> None:
        state = progress_state(executor)
        if state is not None and state == self._last:
            self.pauses += 1
            self._sleep(self._pause_s)
        self._last = state


def pause_idle_steps(context: Any) -> None:
    """Add ``PauseIdleSteps`` to a dataset's ``DataContext`` (a new list: never the shared one)."""
    classes = list(context.custom_execution_callback_classes)
    if PauseIdleSteps not in classes:
        context.custom_execution_callback_classes = [*classes, PauseIdleSteps]
