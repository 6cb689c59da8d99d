"""Stop signals (SIGINT, SIGTERM, SIGHUP) end a driver cleanly and leave true records.

While Tune's loop runs, the first stop signal asks Tune to stop (it saves the
experiment state for ``--resume`` and stops the trial processes); outside the
loop, or on a second signal, ``Interrupted`` is raised at once. Either way
the driver then closes the MLflow records: every child run that did not
finish ends KILLED, and the parent ends KILLED with a note saying how to
resume. A parent is FINISHED only when every trial finished.

Tune catches SIGINT itself (``TUNE_DISABLE_SIGINT_HANDLER`` turns that off
here) and listens to SIGUSR1; SIGTERM and SIGHUP (a lost SSH session) would
otherwise end the process with every run left RUNNING.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from typing import Iterator

from msreid.tracking import runs

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
TAG_INTERRUPTED = "msreid.interrupted"  # the signal's name, on the parent and the killed children


class Interrupted(BaseException):
    """A stop signal ended the driver (BaseException: ``except Exception`` must not swallow it)."""

    def __init__(self, signal_name: str, message: str = ""):
        super().__init__(message or f"interrupted by {signal_name}")
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process ended by it."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


@dataclass
class StopState:
    """Which stop signal arrived (None: none yet) and whether Tune's loop is running."""

    signal_name: str | None = None
    in_tune: bool = False

    def check(self) -> None:
        """Raise ``Interrupted`` if a stop signal arrived."""
        if self.signal_name:
            raise Interrupted(self.signal_name)

    def install(self) -> dict:
        """Point the stop signals at this state's handler; returns the previous handlers.

        Called again on entering Tune's loop: ``ray.init`` replaces the SIGTERM handler
        with one that calls ``sys.exit`` (which would skip closing the runs).
        """
        if threading.current_thread() is not threading.main_thread():
            return {}
        handler = _handler(self)
        return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}

    @contextlib.contextmanager
    def tune_loop(self) -> Iterator[None]:
        """Mark the span of ``Tuner.fit()``: a first signal then asks Tune to stop gracefully."""
        self.install()
        self.check()
        self.in_tune = True
        try:
            yield
        finally:
            self.in_tune = False


def _handler(state: StopState):
    def on_signal(signum, frame) -> None:
        first = state.signal_name is None
        if first:
            state.signal_name = signal.Signals(signum).name
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if first and state.in_tune and callable(tune_stop):
            tune_stop(signum, frame)  # Tune's own handler: end the loop, save the state
            return
        raise Interrupted(state.signal_name)

    return on_signal


@contextlib.contextmanager
def stop_signals() -> Iterator[StopState]:
    """Catch SIGINT/SIGTERM/SIGHUP for the duration (main thread only; elsewhere a no-op)."""
    state = StopState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    before_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT comes here, like SIGTERM and SIGHUP
    previous = state.install()
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if before_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before_env


def close_interrupted(client, experiment_id: str, parent: str, signal_name: str, note: str) -> int:
    """Children not FINISHED end KILLED; the parent ends KILLED with ``note``. Returns #finished."""
    finished = 0
    for child in runs.children(client, experiment_id, parent):
        if child.info.status == "FINISHED":
            finished += 1
        elif child.info.status in ("RUNNING", "SCHEDULED"):
            runs.set_tags(client, child.info.run_id, {TAG_INTERRUPTED: signal_name})
            client.set_terminated(child.info.run_id, "KILLED")
    runs.set_tags(client, parent, {TAG_INTERRUPTED: signal_name, runs.TAG_NOTE: note})
    client.set_terminated(parent, "KILLED")
    return finished
