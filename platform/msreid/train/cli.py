"""Train one model on Ray (local Ray, or the cluster when RAY_ADDRESS is set).

Reads a YAML preset (experiments/presets/*.yaml), applies section.key=value
overrides, checks everything before Ray starts, trains on run.num_workers DDP
workers, prints one line per epoch, then the final metrics: test/* is the
selected model (best validation mAP, or the final one with run.selection=final),
final_test/* the last epoch's model when run.log_final_test=true.

  msreid train --config experiments/presets/smoke.yaml data.manifest=runs/synth/manifest

The run directory is <storage>/<name>; re-running the same command resumes it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from ray.train import UserCallback

from msreid.config import batch_params, config_to_dict, load_config
from msreid.errors import disk_full_is_user_error


class ProgressPrinter(UserCallback):
    """One line per ray.train.report: epoch, lr, loss terms, throughput, validation."""

    def after_report(self, run_context, metrics, checkpoint) -> None:
        m = metrics[0] if metrics else {}
        if "train/loss" not in m:
            return
        keys = [k for k in m if k.startswith(("train/", "val/", "test_curve/"))]
        parts = [f"epoch {m['epoch']:>3}", f"lr {m['lr']:.2e}"]
        parts += [f"{k} {m[k]:.4f}" for k in keys]
        parts.append(f"{m['tuples_per_s']:.1f} tuples/s")
        print("  ".join(parts), file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="YAML preset, e.g. experiments/presets/paper.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides parsed as YAML, e.g. loss.alpha=0.01 "
                             "data.spectra=[rgb,nir]")
    parser.add_argument("--storage", default="runs", metavar="DIR_OR_URI",
                        help="where runs live (shared storage on a cluster); default ./runs")
    parser.add_argument("--name", default=None,
                        help="run name (default: preset name + hash of the config, so the same "
                             "command resumes the same run)")
    parser.add_argument("--max-failures", type=int, default=0,
                        help="worker failures to recover from (restart from the last checkpoint)")


def default_name(config_path: str, flat: dict) -> str:
    """``<preset stem>-<8 hex of the config>``: stable, so re-running resumes."""
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:8]
    return f"{Path(config_path).stem}-{digest}"


def format_metrics(metrics: dict, selection: str = "validation") -> str:
    """The final table: one row per metric, the selected model (test/) and, when logged, the last
    epoch's (final_test/)."""
    names = ("mAP", "R1", "R5", "R10", "mINP")
    last = "final_test/mAP" in metrics
    head = "test (best val)" if selection == "validation" else "test (final)"
    lines = [f"{'metric':<8}{head:>18}" + (f"{'final_test (last)':>20}" if last else "")]
    for n in names:
        lines.append(f"{n:<8}{metrics.get('test/' + n, float('nan')):>18.4f}" + (
            f"{metrics.get('final_test/' + n, float('nan')):>20.4f}" if last else ""))
    extra = {k: v for k, v in metrics.items() if not k.startswith(("test/", "final_test/"))}
    lines += [f"{k}: {v}" for k, v in extra.items()]
    if metrics.get("selection/within_noise"):
        lines.append(noise_warning(metrics))
    return "\n".join(lines)


def noise_warning(metrics: dict) -> str:
    """The line that marks a selection the validation split could not make (fractions in)."""
    return (f"selection within noise: the highest val mAP and the runner-up (epoch "
            f"{int(metrics['selection/runner_up_epoch'])}) differ by "
            f"{100 * metrics['selection/margin']:.2f} points, less than one of the "
            f"{int(metrics['selection/val_queries'])} validation queries "
            f"({100 * metrics['selection/resolution']:.2f} points): a float-level change may "
            "select the other epoch (docs/TRAINING.md, run.selection_rule)")


def main(args: argparse.Namespace) -> int:
    from msreid.train.fit import fit  # lazy: torch + Ray Train only once the CLI really trains

    cfg = load_config(args.config, args.overrides)
    name = args.name or default_name(args.config, config_to_dict(cfg))
    batch = batch_params(cfg)
    print(f"msreid train: run {name} in {args.storage}; global batch {batch['global_batch']}, "
          f"{batch['worker_batch']} per worker", file=sys.stderr, flush=True)
    run_dir = f"{args.storage.rstrip('/')}/{name}"
    advice = ("free space there or give --storage on a disk with room, then run the same command "
              "again to resume from the last whole checkpoint")
    # Ray Train copies worker checkpoints into the storage itself; its error holds only text.
    with disk_full_is_user_error(run_dir, "the run's checkpoints", advice):
        out = fit(cfg, storage_path=args.storage, name=name, callbacks=[ProgressPrinter()],
                  max_failures=args.max_failures)
    print(format_metrics(out.metrics, cfg.run.selection))
    print(f"checkpoint and artifacts: {out.stored_at}")
    out.release()
    return 0
