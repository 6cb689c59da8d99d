"""The interrupt message prints the exact command that resumes: the run's own options plus
``--resume NAME`` (issue 23). Copied as printed, it is accepted by the resume checks.

No Ray: Tune's loop is a stand-in that sends the driver SIGTERM (as in
test_orchestration_interrupts.py); the driver is experiments/full_benchmark.py's ``main``.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import full_benchmark  # noqa: E402
import tune_alpha  # noqa: E402


class ReachedTune(Exception):
    """The resumed driver passed every check (name, recorded settings) and got to Tune."""


def printed_command(stderr: str, script: str) -> list[str]:
    """The command on the line after "resume ...:" / "run it again:" of the interrupt message."""
    lines = stderr.splitlines()
    (index,) = [i for i, line in enumerate(lines) if line.rstrip().endswith(":")
                and ("--resume" in line or "again" in line)]
    argv = shlex.split(lines[index + 1])
    assert argv[:2] == ["python", f"experiments/{script}"], argv
    return argv[2:]


@pytest.mark.timeout(180)
def test_the_printed_resume_command_is_accepted_and_the_bare_one_refused(
        tmp_path, monkeypatch, capsys):
    from msreid.orchestration import benchmark
    from msreid.orchestration.datasets import synthetic_manifest
    from test_orchestration_benchmark import write_suite

    manifest = synthetic_manifest({"ids": 4, "cameras": 2, "tuples_per_id": 3, "height": 16,
                                   "width": 32}, root=tmp_path / "cache")
    monkeypatch.chdir(ROOT)  # as the docs run it: python experiments/full_benchmark.py ...
    where = ["--preset", str(write_suite(tmp_path)), "--data", f"rgbnt100={manifest}",
             "--experiment", "t", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
             "--storage-path", str(tmp_path / "results")]
    argv = [*where, "--set", "optim.epochs=1", "--set", "optim.lr=0.0005", "--seeds", "0", "1",
            "--name", "cut", "--quiet"]

    def tune_hit_by_sigterm(suite, trials, ctx, storage, name, opts):
        os.kill(os.getpid(), signal.SIGTERM)  # Tune's handler (below) ends its loop
        return [], []

    def tune_reached(*args, **kwargs):
        raise ReachedTune

    previous = signal.signal(signal.SIGUSR1, lambda *a: None)  # stands for Tune's handler
    monkeypatch.setattr(benchmark, "init_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr(benchmark, "run_tune", tune_hit_by_sigterm)
    try:
        assert full_benchmark.main(argv) == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGUSR1, previous)
    err = capsys.readouterr().err
    resume = printed_command(err, "full_benchmark.py")
    assert resume[-2:] == ["--resume", "cut"], resume
    # every option the run had, in a form that parses back to the same values
    parser = full_benchmark.build_parser()
    assert vars(parser.parse_args(resume)) == {**vars(parser.parse_args(argv)), "resume": "cut"}

    monkeypatch.setattr(benchmark, "run_tune", tune_reached)
    with pytest.raises(ReachedTune):  # copied as printed: accepted
        full_benchmark.main(resume)
    assert full_benchmark.main([*where, "--resume", "cut"]) == 2  # the old hint: no --set
    assert "these settings differ from the run being resumed" in capsys.readouterr().err


def test_command_line_inverts_the_parser_for_every_flag_form():
    """Repeated flags, nargs="+", an optional value, a switch, JSON and defaults left out."""
    from msreid.cli_options import command_line

    parser = full_benchmark.build_parser()
    argv = ["--data", "a=/m 1", "--data", "/m2", "--set", "optim.epochs=2", "--seeds", "3", "4",
            "--synth", '{"ids": 20}', "--resume", "--max-concurrent-trials", "2", "--quiet"]
    args = parser.parse_args(argv)
    flags = command_line(parser, args)
    assert flags == ["--data", "a=/m 1", "--data", "/m2", "--set", "optim.epochs=2",
                     "--seeds", "3", "4", "--resume", "--max-concurrent-trials", "2",
                     "--synth", '{"ids": 20}', "--quiet"]
    assert vars(parser.parse_args(flags)) == vars(args)
    assert command_line(parser, parser.parse_args([])) == []  # defaults are not repeated
    assert "--resume" not in command_line(parser, args, drop=("resume",))


def test_tune_alpha_prints_the_command_to_run_it_again(tmp_path, monkeypatch, capsys):
    from msreid.loss_gradients import RatioPoint
    from msreid.orchestration import alpha, interrupts

    def interrupted(*args, **kwargs):
        raise interrupts.Interrupted("SIGINT")

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(alpha, "_fit", interrupted)
    monkeypatch.setattr(alpha, "resolve_manifests", lambda opts: ({"rgbnt100": "m"}, {}))
    # the probe reads the manifest: stand in a result where alpha matters (ratio 1 at both ends)
    point = RatioPoint(step=0, ratios=(1.0,))
    monkeypatch.setattr(alpha, "probe", lambda *a: alpha.ProbeResult(
        points=(point,), low=1e-4, high=1e-1, threshold=1e-4, num_val_queries=40, seconds=0.0))
    argv = ["--set", "optim.epochs=2", "--num-samples", "3", "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db", "--quiet"]
    assert tune_alpha.main(argv) == 128 + signal.SIGINT
    again = printed_command(capsys.readouterr().err, "tune_alpha.py")
    parser = tune_alpha.build_parser()
    assert vars(parser.parse_args(again)) == vars(parser.parse_args(argv))
