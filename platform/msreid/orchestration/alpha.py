"""Tune alpha, the weight of L_hsc (eq. 6), on VALIDATION mAP with a search algorithm + ASHA.

alpha is sampled log-uniformly over [low, high] by Tune's BasicVariantGenerator
(built in; the paper's 0.001 is evaluated first through ``points_to_evaluate``);
ASHA stops trials whose validation mAP lags at each rung. Every trial is an
MLflow child run of one parent; the best alpha is chosen on validation mAP
only, and its test metrics (checkpoint selected on validation) are reported
beside it, never used to choose.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from msreid import cli_options
from msreid.config import config_from_dict, config_to_dict, load_config, parse_overrides
from msreid.errors import UserError
from msreid.losses import ABLATIONS, PAPER_ALPHA
from msreid.orchestration import interrupts
from msreid.orchestration.benchmark import BenchmarkOptions, resolve_manifests
from msreid.orchestration.paths import default_storage_path, find_experiment_file
from msreid.orchestration.trainable import DEFAULT_FIT, TrialContext, run_trial, trial_context
from msreid.tracking import runs
from msreid.tracking.store import check_reachable, ensure_experiment, resolve_tracking_uri
from msreid.train.fit import init_ray


@dataclass(frozen=True)
class AlphaOptions:
    """What ``experiments/tune_alpha.py`` passes to ``run_alpha_search``."""

    data: tuple[str, ...] = field(default=(), metadata={"help": "one manifest; default synthetic"})
    config: str = field(default="smoke", metadata={"help": "training preset"})
    ablation: str = field(default="hamnet", metadata={"help": "loss.ablation with L_hsc"})
    overrides: tuple[str, ...] = field(default=(), metadata={"help": "key=value for every trial"})
    num_samples: int = field(default=6, metadata={"help": "trials, alpha=0.001 included"})
    low: float = field(default=1e-4, metadata={"help": "lower bound of alpha"})
    high: float = field(default=1e-1, metadata={"help": "upper bound of alpha"})
    seed: int = field(default=0, metadata={"help": "training seed and search seed"})
    grace_period: int = field(default=1, metadata={"help": "ASHA: epochs before stopping"})
    reduction_factor: int = field(default=2, metadata={"help": "ASHA: keep 1/rf per rung"})
    max_concurrent_trials: int = field(default=2, metadata={"help": "trials at once"})
    trial_resources: tuple = field(default=({"CPU": 1.0}, {"CPU": 1.0}),
                                   metadata={"help": "placement-group bundles per trial"})
    experiment: str = field(default="msreid-tune-alpha", metadata={"help": "MLflow experiment"})
    tracking_uri: str | None = None
    storage_path: str | None = None
    name: str | None = None
    ray_address: str | None = None
    synth: dict = field(default_factory=dict)
    fit: Any = DEFAULT_FIT
    verbose: int = 1
    command: tuple[str, ...] = ()  # the command line that started the search (to run it again)


@dataclass
class AlphaOutcome:
    """The search's table (one row per trial), the best row and where it is logged."""

    table: pd.DataFrame
    best: dict
    markdown: str
    parent_run_id: str
    tracking_uri: str


def base_config(opts: AlphaOptions) -> tuple[dict, dict]:
    """(flat base config, forced keys); validation every epoch so ASHA compares rungs."""
    preset = find_experiment_file(opts.config, "presets")
    forced = {**parse_overrides(list(opts.overrides)), "run.eval_every": 1,
              "loss.ablation": opts.ablation}
    base = config_to_dict(load_config(preset, list(opts.overrides)))
    cfg = config_from_dict({**base, **forced, "data.manifest": "x"})
    if cfg.run.selection != "validation" or cfg.data.val_ids <= 0:
        raise UserError("tune_alpha selects alpha on validation mAP: run.selection must be "
                        f"validation and data.val_ids > 0 (the preset {preset} has "
                        f"{cfg.run.selection}, {cfg.data.val_ids})")
    if "hsc_alpha" not in ABLATIONS.get(opts.ablation, {}):
        raise UserError(f"--ablation {opts.ablation} has no L_hsc term, so alpha does nothing: "
                        "use hamnet, msn+hsc or hamnet_official")
    if not 0 < opts.low < opts.high:
        raise UserError(f"alpha range [{opts.low}, {opts.high}]: need 0 < low < high")
    return base, forced


def _tuner(opts: AlphaOptions, ctx: TrialContext, dataset: str, storage: str, name: str, epochs: int):
    points = [{"loss.alpha": PAPER_ALPHA}] if opts.low <= PAPER_ALPHA <= opts.high else []
    space = {"trial": {"prefix": "alpha", "dataset": dataset, "seed": opts.seed, "overrides": {},
                       "cells": []},
             "loss.alpha": tune.loguniform(opts.low, opts.high)}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                    tune.PlacementGroupFactory([dict(b) for b in opts.trial_resources]))
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            metric="val/mAP", mode="max", num_samples=opts.num_samples,
            search_alg=BasicVariantGenerator(points_to_evaluate=points, random_state=opts.seed,
                                             max_concurrent=opts.max_concurrent_trials),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs + 1,
                                    grace_period=opts.grace_period,
                                    reduction_factor=opts.reduction_factor),
            reuse_actors=False),  # an ASHA stop ends the trial's process (and its training)
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=opts.verbose,
            progress_reporter=tune.CLIReporter(
                metric_columns={"epoch": "epoch", "val/mAP": "val mAP", "test/mAP": "test mAP"},
                parameter_columns={"loss.alpha": "alpha"}, max_report_frequency=30)))


def run_alpha_search(opts: AlphaOptions) -> AlphaOutcome:
    """Search alpha, log every trial and the summary to MLflow, return the table."""
    uri = resolve_tracking_uri(opts.tracking_uri)
    check_reachable(uri)
    base, forced = base_config(opts)
    if len(opts.data) > 1:
        raise UserError("tune_alpha tunes on one dataset: give one --data manifest")
    experiment_id = ensure_experiment(uri, opts.experiment)
    manifests, prints = resolve_manifests(_as_benchmark(opts))
    dataset = next(iter(manifests))
    client = runs.client_for(uri)
    name = opts.name or f"tune-alpha-{time.strftime('%Y%m%d-%H%M%S')}"
    parent, _ = runs.get_or_create_parent(client, experiment_id, name, kind="tune_alpha",
                                          tags=runs.context_tags())
    runs.log_params(client, parent, {"alpha.low": opts.low, "alpha.high": opts.high,
                                  "num_samples": opts.num_samples, "loss.ablation": opts.ablation,
                                  "config": opts.config, "data": manifests[dataset],
                                  "asha.grace_period": opts.grace_period,
                                  "asha.reduction_factor": opts.reduction_factor})
    with interrupts.stop_signals() as stop:
        try:
            results = _fit(opts, base, forced, manifests, prints, dataset, parent, name, stop)
        except interrupts.Interrupted as exc:
            again = cli_options.shell_command(opts.command or ("python", "experiments/tune_alpha.py"))
            hint = f"the search has no --resume; run it again:\n  {again}"
            note = f"Interrupted by {exc.signal_name}; no summary was written; {hint}"
            done = interrupts.close_interrupted(client, experiment_id, parent, exc.signal_name, note)
            raise interrupts.Interrupted(exc.signal_name, f"interrupted by {exc.signal_name} after "
                                         f"{done} finished trial(s); parent run {parent} marked "
                                         f"KILLED, no summary written; {hint}") from None
        except Exception:  # the parent must not stay RUNNING
            client.set_terminated(parent, "FAILED")
            raise
    table = alpha_table(results)
    close_children(client, experiment_id, parent,
                   set(table.loc[table["status"] == "stopped (ASHA)", "trial_id"]))
    best = pick_best(table)
    markdown = to_markdown(table, best)
    log_summary(client, parent, table, best, markdown)
    client.set_terminated(parent, "FINISHED")
    return AlphaOutcome(table=table, best=best, markdown=markdown, parent_run_id=parent,
                        tracking_uri=uri)


def _fit(opts: AlphaOptions, base: dict, forced: dict, manifests: dict, prints: dict, dataset: str,
         parent: str, name: str, stop: interrupts.StopState):
    """Run the search (Tune); raises ``Interrupted`` when a stop signal arrived."""
    storage = opts.storage_path or default_storage_path()
    uri = resolve_tracking_uri(opts.tracking_uri)
    experiment_id = ensure_experiment(uri, opts.experiment)
    ctx = trial_context(base_config=base, force=forced, manifests=manifests, fingerprints=prints,
                        tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent,
                        name=name, storage=storage, fit=opts.fit, figures={"cam_queries": 0})
    init_ray(opts.ray_address, quiet=True)
    stop.install()  # ray.init replaced the SIGTERM handler with a plain sys.exit
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # fit's last report (test metrics) carries best_val/mAP, not val/mAP; ASHA ignores it.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    epochs = int(base.get("optim.epochs", 1))
    with stop.tune_loop():
        results = _tuner(opts, ctx, dataset, storage, name, epochs).fit()
    stop.check()
    return results


def _as_benchmark(opts: AlphaOptions):
    return BenchmarkOptions(data=opts.data, synth=opts.synth)


def alpha_table(results) -> pd.DataFrame:
    """One row per trial: alpha, how far it trained, best val mAP, test metrics when it finished."""
    rows = []
    for res in results:
        m = res.metrics or {}
        finished = "test/mAP" in m and res.error is None
        epochs, best_val = _curve(res)
        row = {"alpha": float(res.config["loss.alpha"]),
               "status": "finished" if finished else ("error" if res.error else "stopped (ASHA)"),
               "epochs": epochs,
               "val/mAP": float(m.get("best_val/mAP", best_val)),
               "trial_id": m.get("trial_id", "")}
        for k in ("test/mAP", "test/R1", "test/R5", "test/R10"):
            row[k] = float(m[k]) if finished and k in m else math.nan
        rows.append(row)
    return pd.DataFrame(rows).sort_values("alpha").reset_index(drop=True)


def _curve(res) -> tuple[int, float]:
    """(epochs trained, best validation mAP reported) from a trial's reported results."""
    df = getattr(res, "metrics_dataframe", None)
    if df is None or "epoch" not in df:
        return 0, math.nan
    epochs = int(df["epoch"].max()) + 1 if df["epoch"].notna().any() else 0
    best = float(df["val/mAP"].max()) if "val/mAP" in df and df["val/mAP"].notna().any() else math.nan
    return epochs, best


def pick_best(table: pd.DataFrame) -> dict:
    """The finished trial with the highest validation mAP (test metrics never choose)."""
    done = table[table["status"] == "finished"]
    if done.empty:
        raise UserError("no alpha trial finished; see the Tune errors above")
    return done.loc[done["val/mAP"].idxmax()].to_dict()


def to_markdown(table: pd.DataFrame, best: dict) -> str:
    """The search as a markdown table (in %), best row marked."""
    lines = ["**alpha of L_hsc: validation-selected (test = test set at the validation-selected "
             "checkpoint, in %)**", "",
             "| alpha | status | epochs | val mAP | test mAP | test R1 | test R5 | test R10 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table.to_dict("records"):
        mark = " **(best)**" if row["alpha"] == best["alpha"] else ""
        mark += " (paper)" if math.isclose(row["alpha"], PAPER_ALPHA) else ""
        cells = [f"{100 * row[k]:.1f}" if not math.isnan(row[k]) else "n/a"
                 for k in ("val/mAP", "test/mAP", "test/R1", "test/R5", "test/R10")]
        lines.append(f"| {row['alpha']:.2e}{mark} | {row['status']} | {row['epochs']} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"best alpha = {best['alpha']:.3g}: val mAP {100 * best['val/mAP']:.1f}, "
                 f"test mAP {100 * best['test/mAP']:.1f}, test R1 {100 * best['test/R1']:.1f}")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, best: dict, out: Path) -> Path:
    """mAP (val for every trial, test for finished ones) against alpha, log x axis."""
    from msreid.tracking.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=100)
    ax.semilogx(table["alpha"], 100 * table["val/mAP"], "o", label="val mAP (selects)")
    done = table[table["status"] == "finished"]
    ax.semilogx(done["alpha"], 100 * done["test/mAP"], "s", mfc="none", label="test mAP")
    ax.axvline(PAPER_ALPHA, color="grey", ls=":", label="paper (0.001)")
    ax.axvline(best["alpha"], color="green", ls="--", label=f"best {best['alpha']:.2g}")
    ax.set(xlabel="alpha (weight of L_hsc)", ylabel="mAP (%)", title="mAP against alpha")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def close_children(client, experiment_id: str, parent: str, stopped: set[str]) -> None:
    """Runs of trials ASHA stopped (Tune trial ids ``stopped``) end KILLED, tagged stopped_early.

    Stopping interrupts the trial inside ``fit``, which leaves its run RUNNING or FAILED.
    """
    for run in runs.children(client, experiment_id, parent):
        if run.data.tags.get("msreid.tune_trial_id") in stopped:
            runs.set_tags(client, run.info.run_id, {"msreid.stopped_early": "ASHA"})
            client.set_terminated(run.info.run_id, "KILLED")


def log_summary(client, parent: str, table: pd.DataFrame, best: dict, markdown: str) -> None:
    """Best alpha (param + metrics), the table (md/csv) and the plot on the parent run."""
    runs.log_params(client, parent, {"best_alpha": best["alpha"]})
    runs.log_metrics(client, parent, {"best_alpha": best["alpha"], "best/val/mAP": best["val/mAP"],
                                   **{f"best/{k}": best[k] for k in
                                      ("test/mAP", "test/R1", "test/R5", "test/R10")}})
    runs.log_text(client, parent, markdown, "alpha/alpha_search.md")
    runs.log_text(client, parent, table.to_csv(index=False), "alpha/alpha_search.csv")
    with tempfile.TemporaryDirectory() as tmp:
        path = plot(table, best, Path(tmp) / "map_vs_alpha.png")
        client.log_artifact(parent, str(path), "alpha")
