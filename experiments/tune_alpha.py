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
import time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", action="append", default=[], metavar="[DATASET=]MANIFEST",
                   help="the manifest to tune on (default: the synthetic RGBNT100-shaped one)")
    p.add_argument("--config", default="smoke", help="training preset (experiments/presets/)")
    p.add_argument("--ablation", default="hamnet", help="loss.ablation with L_hsc: hamnet or msn+hsc")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every trial, e.g. --set optim.epochs=6")
    p.add_argument("--num-samples", type=int, default=6, help="trials (alpha=0.001 included)")
    p.add_argument("--low", type=float, default=1e-4, help="smallest alpha")
    p.add_argument("--high", type=float, default=1e-1, help="largest alpha")
    p.add_argument("--seed", type=int, default=0, help="training and search seed")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a stop")
    p.add_argument("--reduction-factor", type=int, default=2, help="ASHA: keep 1/N per rung")
    p.add_argument("--max-concurrent-trials", type=int, default=2, help="trials at once")
    p.add_argument("--experiment", default="msreid-tune-alpha", help="MLflow experiment name")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--storage-path", default=None, help="Ray results dir (default ./ray_results)")
    p.add_argument("--ray-address", default=None, help="Ray cluster (default $RAY_ADDRESS or local)")
    p.add_argument("--synth", default="{}", help="JSON SynthSpec overrides for the synthetic data")
    p.add_argument("--quiet", action="store_true", help="no progress table")
    return p


def main(argv: list[str] | None = None) -> int:
    from msreid.data.synth import synth_spec_from_json
    from msreid.errors import UserError
    from msreid.orchestration.alpha import AlphaOptions, run_alpha_search

    a = build_parser().parse_args(argv)
    try:  # --synth is checked before anything is created (mlflow.db included)
        synth_overrides = synth_spec_from_json(a.synth)
    except UserError as exc:
        print(f"tune_alpha: error: {exc}", file=sys.stderr)
        return 2
    opts = AlphaOptions(data=tuple(a.data), config=a.config, ablation=a.ablation,
                        overrides=tuple(a.overrides), num_samples=a.num_samples, low=a.low,
                        high=a.high, seed=a.seed, grace_period=a.grace_period,
                        reduction_factor=a.reduction_factor,
                        max_concurrent_trials=a.max_concurrent_trials, experiment=a.experiment,
                        tracking_uri=a.tracking_uri, storage_path=a.storage_path,
                        ray_address=a.ray_address, synth=synth_overrides,
                        verbose=0 if a.quiet else 1)
    start = time.time()
    try:
        out = run_alpha_search(opts)
    except UserError as exc:
        print(f"tune_alpha: error: {exc}", file=sys.stderr)
        return 2
    print("\n" + out.markdown)
    print(f"wall time {time.time() - start:.0f} s; MLflow {out.tracking_uri}, experiment "
          f"{opts.experiment!r}, parent run {out.parent_run_id} (alpha/map_vs_alpha.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
