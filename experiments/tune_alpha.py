"""Tune alpha, the weight of L_hsc, on validation mAP (Ray Tune search + ASHA), tracked in MLflow.

  python experiments/tune_alpha.py                       # synthetic data, smoke preset, a few minutes
  python experiments/tune_alpha.py --data /data/rgbnt100_manifest --config paper --num-samples 12

alpha is drawn log-uniformly over [--low, --high] (the paper's 0.001 first);
ASHA stops trials whose validation mAP lags. The best alpha is chosen on
validation mAP; its test metrics (checkpoint chosen on validation) are printed
beside it. Like full_benchmark.py it imports only the installed msreid package.
See docs/BENCHMARK.md.
"""

from __future__ import annotations

import argparse
import sys

# What the options' one-line help cannot say: flag names, repeat forms, longer help.
FLAGS = {
    "data": {"metavar": "[DATASET=]MANIFEST",
             "help": "the manifest to tune on (default: the synthetic RGBNT100-shaped one)"},
    "config": {"help": "training preset (experiments/presets/)"},
    "ablation": {"help": "loss.ablation with L_hsc: hamnet, msn+hsc or hamnet_official"},
    "overrides": {"flag": "--set", "metavar": "KEY=VALUE",
                  "help": "config override for every trial, e.g. --set optim.epochs=6"},
    "tracking_uri": {"help": "MLflow tracking URI (default $MLFLOW_TRACKING_URI, else "
                             "sqlite:///<cwd>/mlflow.db)"},
    "storage_path": {"help": "Ray results dir (default ./ray_results)"},
    "ray_address": {"help": "Ray cluster (default $RAY_ADDRESS or local)"},
    "synth": {"type": str, "default": "{}",  # checked by synth_spec_from_json in main()
              "help": "JSON SynthSpec overrides for the synthetic data"},
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
