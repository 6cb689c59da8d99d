"""Tune alpha, the weight of L_hsc, on validation mAP (Ray Tune search + ASHA), tracked in MLflow.

  python experiments/tune_alpha.py                       # synthetic data, smoke preset, a few minutes
  python experiments/tune_alpha.py --data /data/rgbnt100_manifest --config paper --num-samples 12

First it measures whether alpha can matter over [--low, --high] (the gradient
of alpha * L_hsc against the other terms', at both ends, on the first batches
of the data) and stops with a message when it cannot (--allow-inert searches
anyway). Then alpha is drawn log-uniformly (the paper's 0.001 first); ASHA
stops trials whose validation mAP lags by more than one validation query's
worth; the best alphas and the paper's are trained again with --repeat-seeds
more seeds, and the answer is the best alpha with mean +- std of validation
mAP against the paper's, saying when the difference is not significant.
Test metrics (checkpoint chosen on validation) are printed beside, never used
to choose. The default form of L_hsc is the authors' (--hsc-variant official
--hsc-reduction sum): eq. 5 with the batch mean is inert over this range.
Like full_benchmark.py it imports only the installed msreid package.
See docs/TRAINING.md ("Tuning alpha") and docs/BENCHMARK.md.
"""

from __future__ import annotations

import argparse
import sys

# The argparse form the options' types cannot say: flag names, a metavar. The help (and the
# choices) of every flag is the field's (msreid.orchestration.alpha).
FLAGS = {
    "data": {"metavar": "[DATASET=]MANIFEST"},
    "overrides": {"flag": "--set", "metavar": "KEY=VALUE"},
    "synth": {"type": str, "default": "{}"},  # checked by synth_spec_from_json in main()
}


def build_parser() -> argparse.ArgumentParser:
    from msreid.cli_options import add_dataclass_arguments
    from msreid.orchestration.alpha import AlphaOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_dataclass_arguments(p, AlphaOptions,
                            skip=("trial_resources", "name", "fit", "verbose", "command"),
                            overrides=FLAGS)
    p.add_argument("--quiet", action="store_true", help="no progress table")
    return p


def main(argv: list[str] | None = None) -> int:
    from msreid.train.ray_runtime import local_ray_environment

    local_ray_environment()  # before anything imports Ray: a local Ray stays on loopback
    from msreid.cli_options import script_command
    from msreid.orchestration.alpha import AlphaOptions, run_alpha_search
    from msreid.orchestration.script import run_script

    parser = build_parser()
    args = parser.parse_args(argv)
    done = run_script("tune_alpha", args, AlphaOptions, run_alpha_search,
                      command=script_command(__file__, parser, args))
    if done.exit_code:
        return done.exit_code
    out, opts = done.outcome, done.options
    print("\n" + out.markdown)
    print(f"wall time {done.seconds:.0f} s; MLflow {out.tracking_uri}, experiment "
          f"{opts.experiment!r}, parent run {out.parent_run_id} (alpha/map_vs_alpha.png)")
    served = "" if out.tracking_uri.startswith(("http://", "https://")) else " (after `make ui`)"
    print(f"loss.alpha against validation mAP in the MLflow UI{served}: {out.link}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
