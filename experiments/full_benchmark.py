"""Run the paper's tables as Ray Tune experiments, tracked in MLflow, and print them.

  python experiments/full_benchmark.py                      # smoke: synthetic data, ~4 min on 2 cores
  python experiments/full_benchmark.py --preset paper \
      --data /data/rgbn300_manifest --data /data/rgbnt100_manifest
  python experiments/full_benchmark.py --resume             # continue the latest interrupted run
  ray submit cluster.yaml experiments/full_benchmark.py -- --preset paper --data s3://bucket/rgbnt100

Self-contained on purpose: `ray submit` copies only this file to the head
node, so it imports the installed `msreid` package and nothing else from the
repository; suites and presets are found as msreid.orchestration.paths says
(a path, $MSREID_PROJECT_DIR, the checkout of an editable install, ./experiments).
See docs/BENCHMARK.md.
"""

from __future__ import annotations

import argparse
import sys

# The argparse form the options' types cannot say: flag names, repeat forms, a metavar, defaults
# taken from the data. The help of every flag is the field's (msreid.orchestration.benchmark).
FLAGS = {
    "preset": {"default": None},  # main() picks smoke or paper from --data
    "data": {"metavar": "[DATASET=]MANIFEST"},
    "overrides": {"flag": "--set", "metavar": "KEY=VALUE"},
    "seeds": {"action": None, "nargs": "+"},
    "resume": {"nargs": "?", "const": "", "metavar": "NAME"},
    "synth": {"type": str, "default": "{}"},  # checked by synth_spec_from_json in main()
}


def build_parser() -> argparse.ArgumentParser:
    from msreid.cli_options import add_dataclass_arguments
    from msreid.orchestration.benchmark import BenchmarkOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_dataclass_arguments(p, BenchmarkOptions, skip=("fit", "figures", "verbose", "command"),
                            overrides=FLAGS)
    p.add_argument("--quiet", action="store_true", help="no progress table")
    return p


def main(argv: list[str] | None = None) -> int:
    from msreid.train.ray_runtime import local_ray_environment

    local_ray_environment()  # before anything imports Ray: a local Ray stays on loopback
    from msreid.cli_options import script_command
    from msreid.orchestration.benchmark import BenchmarkOptions, run_benchmark
    from msreid.orchestration.script import run_script

    parser = build_parser()
    args = parser.parse_args(argv)
    done = run_script("full_benchmark", args, BenchmarkOptions, run_benchmark,
                      preset=args.preset or ("paper" if args.data else "smoke"),
                      command=script_command(__file__, parser, args, drop=("resume",)))
    if done.exit_code:
        return done.exit_code
    out, opts = done.outcome, done.options
    print("\n" + out.markdown)
    for ok, message in out.checks:
        print(("check: " if ok else "CHECK FAILED: ") + message)
    for error in out.errors:
        print(f"trial failed: {error}", file=sys.stderr)
    print(f"\nwall time {done.seconds:.0f} s; MLflow: {out.tracking_uri}, experiment "
          f"{opts.experiment!r}, parent run {out.parent_run_id}; rebuild the tables with\n"
          f"  msreid report --experiment {opts.experiment} --run {out.parent_run_id}"
          + (f" --tracking-uri {out.tracking_uri}" if args.tracking_uri else ""))
    served = "" if out.tracking_uri.startswith(("http://", "https://")) else " (after `make ui`)"
    print(f"Compare the cells in the MLflow UI{served}: {out.landing_url}")
    for title, link in out.links.items():
        print(f"  {title}: {link}")
    return 1 if out.errors or not all(ok for ok, _ in out.checks) else 0


if __name__ == "__main__":
    sys.exit(main())
