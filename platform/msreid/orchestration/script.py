"""What the experiment scripts' ``main()`` shares: checks first, one run, errors as exit codes.

``experiments/full_benchmark.py`` and ``experiments/tune_alpha.py`` parse their
flags (generated from an options dataclass by ``msreid.cli_options``) and hand
them here. ``--synth`` is checked before anything is created (``mlflow.db``
included); a ``UserError`` is printed as one line and exits 2; a stop signal
(SIGINT/SIGTERM/SIGHUP, ``msreid.orchestration.interrupts``) exits with the
shell's 128 + signal code after the runs were closed as KILLED.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from msreid.cli_options import options_from_args
from msreid.data.synth import synth_spec_from_json
from msreid.errors import UserError, user_error_message
from msreid.orchestration.interrupts import Interrupted


@dataclass(frozen=True)
class ScriptRun:
    """The outcome of one script run: exit code, and on success the options, outcome and seconds."""

    exit_code: int
    options: Any = None
    outcome: Any = None
    seconds: float = 0.0


def run_script(prog: str, args: argparse.Namespace, options_cls: type,
               run: Callable[[Any], Any], **given: Any) -> ScriptRun:
    """Check ``--synth``, fill ``options_cls`` from ``args`` (+ ``given``), call ``run(options)``."""
    try:
        synth = synth_spec_from_json(args.synth)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return ScriptRun(2)
    opts = options_from_args(options_cls, args, synth=synth, verbose=0 if args.quiet else 1,
                             **given)
    start = time.time()
    try:
        outcome = run(opts)
    except Exception as exc:
        message = user_error_message(exc)  # a UserError or a full disk: one line, exit 2
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return ScriptRun(2)
    except Interrupted as exc:  # runs closed as KILLED; the message says how to resume
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(f"{prog}: {exc}", file=sys.stderr)
        return ScriptRun(exc.exit_code)
    return ScriptRun(0, opts, outcome, time.time() - start)
