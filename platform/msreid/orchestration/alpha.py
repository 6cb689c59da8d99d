"""Tune alpha, the weight of L_hsc (eq. 6), on VALIDATION mAP, and say when the answer is noise.

Four stages, cheap checks first (docs/TRAINING.md, "Tuning alpha"):

1. **Can alpha matter?** The driver measures |grad(alpha L_hsc)| / |grad(other
   terms)| at both ends of [low, high] on the first batches of the real data
   (``alpha_probe``) and stops with a message naming what would make the term
   matter when it is below ``inert_below`` everywhere (``--allow-inert``
   searches anyway). The default form of L_hsc is the authors' cosine summed
   over the batch, where alpha acts over the whole default range; eq. 5 with
   the batch mean is inert there.
2. **Search**: alpha log-uniform over [low, high] (Tune's seeded
   ``BasicVariantGenerator``; the paper's 0.001 first, through
   ``points_to_evaluate``), ``num_samples`` trials at ``seed``, ASHA on
   validation mAP that never stops a trial on a difference below the
   validation split's resolution (``asha.ToleranceASHA``).
3. **Repeat** the best ``repeat_top`` alphas and the paper's with
   ``repeat_seeds`` more seeds (no early stopping).
4. **Answer**: mean +- std of validation mAP per alpha, the best against the
   paper's with a significance verdict (``alpha_summary``), logged on one MLflow
   parent run with a chart; every trial is a child run. Test metrics
   (validation-selected checkpoint) are reported beside, never used to choose.

Two trials run at once on 2 cores: each reserves ``data.decode_cpus`` twice
(0.5 + 0.5 CPU with the smoke preset), as the benchmark's smoke suite does.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from msreid import cli_options
from msreid.config import TrainConfig, config_to_dict, load_config, parse_overrides
from msreid.errors import UserError
from msreid.evaluation import selection
from msreid.grid import TrialSpec
from msreid.losses import ABLATIONS, HSC_REDUCTIONS, HSC_VARIANTS, PAPER_ALPHA
from msreid.orchestration import alpha_summary, interrupts
from msreid.orchestration.alpha_probe import ProbeResult, inert_message, probe_alpha_range, probe_markdown
from msreid.orchestration.asha import ToleranceASHA
from msreid.orchestration.benchmark import BenchmarkOptions, resolve_manifests
from msreid.orchestration.paths import default_storage_path, find_experiment_file
from msreid.orchestration.trainable import (
    TrialContext,
    effective_config,
    run_trial,
    trial_context,
    trial_spec,
)
from msreid.tracking import runs, ui
from msreid.tracking.store import check_reachable, ensure_experiment, resolve_tracking_uri
from msreid.train.fit import fit as train_fit
from msreid.train.ray_runtime import init_ray


@dataclass(frozen=True)
class AlphaOptions:
    """What ``experiments/tune_alpha.py`` passes to ``run_alpha_search``."""

    data: tuple[str, ...] = field(default=(), metadata={
        "help": "the manifest to tune on (default: the synthetic RGBNT100-shaped one)"})
    config: str = field(default="smoke", metadata={"help": "training preset (experiments/presets/)"})
    ablation: str = field(default="hamnet", metadata={
        "help": "loss.ablation with L_hsc: hamnet, msn+hsc or hamnet_official"})
    hsc_variant: str = field(default="official", metadata={
        "help": "form of L_hsc: official = the authors' 1 - cosine of the logits (default; alpha "
                "acts over [1e-4, 1e-1]), paper = eq. 5", "choices": HSC_VARIANTS})
    hsc_reduction: str = field(default="sum", metadata={
        "help": "how L_hsc is reduced over the batch: sum (the authors', default) or mean (eq. 5 "
                "with the mean is inert over the default range)", "choices": HSC_REDUCTIONS})
    overrides: tuple[str, ...] = field(default=(), metadata={
        "help": "config override for every trial, e.g. --set optim.epochs=6"})
    num_samples: int = field(default=4, metadata={"help": "search trials, alpha=0.001 included"})
    low: float = field(default=1e-4, metadata={"help": "lower bound of alpha"})
    high: float = field(default=1e-1, metadata={"help": "upper bound of alpha"})
    seed: int = field(default=0, metadata={"help": "training seed of the search and search seed"})
    repeat_top: int = field(default=1, metadata={
        "help": "best alphas of the search (besides the paper's 0.001, always repeated) "
                "trained again with more seeds"})
    repeat_seeds: int = field(default=2, metadata={
        "help": "extra seeds (seed+1, seed+2, ...) for each repeated alpha; 0 = no repeats"})
    grace_period: int = field(default=1, metadata={"help": "ASHA: epochs before stopping"})
    reduction_factor: int = field(default=2, metadata={"help": "ASHA: keep 1/rf per rung"})
    tolerance: float | None = field(default=None, metadata={
        "help": "ASHA stops a trial only this far (val mAP, a fraction) below a rung's cutoff; "
                "default one validation query's worth, 1 / validation queries"})
    inert_below: float = field(default=1e-4, metadata={
        "help": "alpha is inert when |grad(alpha L_hsc)| / |grad(other terms)| stays below "
                "this at both ends of the range"})
    allow_inert: bool = field(default=False, metadata={
        "help": "search even when the probe finds alpha inert over the range"})
    probe_steps: int = field(default=20, metadata={
        "help": "training steps of the probe (it measures at 0, half-way and the end)"})
    probe_batches: int = field(default=2, metadata={"help": "batches the probe measures on"})
    max_concurrent_trials: int = field(default=2, metadata={"help": "trials at once"})
    trial_resources: tuple | None = field(default=None, metadata={
        "help": "placement-group bundles per trial; None = two of data.decode_cpus CPU"})
    experiment: str = field(default="msreid-tune-alpha", metadata={"help": "MLflow experiment"})
    tracking_uri: str | None = field(default=None, metadata={
        "help": "MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"})
    storage_path: str | None = field(default=None, metadata={
        "help": "Ray results dir (default ./ray_results)"})
    name: str | None = None
    ray_address: str | None = field(default=None, metadata={
        "help": "Ray cluster (default $RAY_ADDRESS or local)"})
    synth: dict = field(default_factory=dict, metadata={
        "help": "JSON SynthSpec overrides for the synthetic data"})
    fit: Callable = train_fit  # the training function (tests pass a stand-in)
    verbose: int = 1
    command: tuple[str, ...] = ()  # the command line that started the search (to run it again)


@dataclass
class AlphaOutcome:
    """The trials (one row each), per-alpha means, the verdict and where it is logged."""

    table: pd.DataFrame
    summary: pd.DataFrame
    verdict: dict
    probe: ProbeResult
    markdown: str
    parent_run_id: str
    tracking_uri: str
    link: str = ""  # the search's saved view in the MLflow UI: loss.alpha against val mAP

    @property
    def best(self) -> dict:
        return self.verdict["best"]


LOSS_FORM_KEYS = ("loss.hsc_variant", "loss.hsc_reduction")
ALPHA_TRIAL_DEFAULTS = {"run.missing_modality": False, "run.per_challenge": False}
ALPHA_COLUMN = "trial/searched/loss.alpha"  # the sampled alpha in Tune's flattened trial config


def search_spec(opts: AlphaOptions, dataset: str, alpha: Any) -> TrialSpec:
    """The search's trial at ``opts.seed``: ``alpha`` a Tune domain in the search, a value in the
    probe (whose config is the search's at ``opts.low``)."""
    return TrialSpec(key="", dataset=dataset, seed=opts.seed, overrides={}, prefix="alpha",
                     searched={"loss.alpha": alpha})


def base_config(opts: AlphaOptions) -> tuple[dict, dict]:
    """(flat base config, forced keys); validation every epoch so ASHA compares rungs."""
    preset = find_experiment_file(opts.config, "presets")
    given = parse_overrides(list(opts.overrides))
    clash = [k for k in LOSS_FORM_KEYS if k in given]
    if clash:
        raise UserError(f"--set {clash[0]}: the tuner sets the form of L_hsc itself; use "
                        f"--{clash[0].split('.')[1].replace('_', '-')} instead")
    # The answer is validation mAP against alpha (and each trial's test mAP): the per-spectrum-
    # subset, cross-spectral and per-challenge test tables are not part of it and only cost trial
    # time (docs/PERFORMANCE.md); --set run.missing_modality=true / run.per_challenge=true brings
    # them back.
    forced = {**ALPHA_TRIAL_DEFAULTS, **given, "run.eval_every": 1, "loss.ablation": opts.ablation,
              "loss.hsc_variant": opts.hsc_variant, "loss.hsc_reduction": opts.hsc_reduction}
    base = config_to_dict(load_config(preset, list(opts.overrides)))
    # No data yet, and alpha None (the ablation's): the range is checked below, with its message.
    cfg = effective_config(base, search_spec(opts, "", None), "x", forced)
    if cfg.run.selection != "validation" or cfg.data.val_ids <= 0:
        raise UserError("tune_alpha selects alpha on validation mAP: run.selection must be "
                        f"validation and data.val_ids > 0 (the preset {preset} has "
                        f"{cfg.run.selection}, {cfg.data.val_ids})")
    if "hsc_alpha" not in ABLATIONS.get(opts.ablation, {}):
        raise UserError(f"--ablation {opts.ablation} has no L_hsc term, so alpha does nothing: "
                        "use hamnet, msn+hsc or hamnet_official")
    if not 0 < opts.low < opts.high:
        raise UserError(f"alpha range [{opts.low}, {opts.high}]: need 0 < low < high")
    if opts.num_samples < 1 or opts.repeat_top < 0 or opts.repeat_seeds < 0:
        raise UserError(f"--num-samples {opts.num_samples} must be >= 1, --repeat-top "
                        f"{opts.repeat_top} and --repeat-seeds {opts.repeat_seeds} >= 0")
    return base, forced


def trial_bundles(opts: AlphaOptions, cfg: TrainConfig) -> list[dict]:
    """The placement-group bundles of one trial: the trial process and the tasks it starts
    (manifest reading, decoding), each ``data.decode_cpus`` unless ``opts.trial_resources``."""
    if opts.trial_resources:
        return [dict(b) for b in opts.trial_resources]
    cpus = float(cfg.data.decode_cpus)
    return [{"CPU": cpus}, {"CPU": cpus}]


def setting_label(opts: AlphaOptions) -> str:
    """The loss setting in words (messages, MLflow)."""
    return (f"--ablation {opts.ablation}, --hsc-variant {opts.hsc_variant}, --hsc-reduction "
            f"{opts.hsc_reduction}")


def probe(opts: AlphaOptions, cfg: TrainConfig) -> ProbeResult:
    """Stage 1 (module docstring): measure from ``cfg``, the search's config at alpha = low;
    UserError when alpha is inert and not allowed."""
    steps = max(0, opts.probe_steps)
    result = probe_alpha_range(cfg, opts.low, opts.high, num_batches=max(1, opts.probe_batches),
                               steps=steps, every=max(1, steps // 2), threshold=opts.inert_below)
    print(f"Can alpha matter? (probe: {result.seconds:.0f} s)\n"
          + probe_markdown(result, setting_label(opts)), flush=True)
    if result.inert:
        message = inert_message(result, setting_label(opts))
        if not opts.allow_inert:
            raise UserError(message)
        print(f"warning: {message}; searching anyway (--allow-inert)", flush=True)
    return result


def _run_config(name: str, storage: str, verbose: int, columns: dict) -> tune.RunConfig:
    return tune.RunConfig(
        name=name, storage_path=storage, verbose=verbose,
        progress_reporter=tune.CLIReporter(
            metric_columns={"epoch": "epoch", "val/mAP": "val mAP", "test/mAP": "test mAP"},
            parameter_columns=columns, max_report_frequency=30))


def _trainable(ctx: TrialContext, bundles: list[dict]):
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                               tune.PlacementGroupFactory([dict(b) for b in bundles]))


def search_tuner(opts: AlphaOptions, ctx: TrialContext, dataset: str, storage: str, name: str,
                 epochs: int, tolerance: float, bundles: list[dict]) -> tune.Tuner:
    """Stage 2: the log-uniform search at ``opts.seed``, the paper's 0.001 first, ToleranceASHA."""
    space = {"trial": search_spec(opts, dataset, tune.loguniform(opts.low, opts.high)).to_dict()}
    paper = {"trial": {"searched": {"loss.alpha": PAPER_ALPHA}}}  # Tune fills in the rest
    return tune.Tuner(
        _trainable(ctx, bundles), param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=opts.num_samples,
            search_alg=BasicVariantGenerator(points_to_evaluate=[paper],
                                             random_state=opts.seed,
                                             max_concurrent=opts.max_concurrent_trials),
            scheduler=ToleranceASHA(metric="val/mAP", time_attr="training_iteration",
                                    max_t=epochs, grace_period=opts.grace_period,
                                    reduction_factor=opts.reduction_factor, tolerance=tolerance),
            reuse_actors=False),  # an ASHA stop ends the trial's process (and its training)
        run_config=_run_config(name, storage, opts.verbose, {ALPHA_COLUMN: "alpha"}))


def repeat_tuner(opts: AlphaOptions, ctx: TrialContext, dataset: str, storage: str, name: str,
                 alphas: list[float], bundles: list[dict]) -> tune.Tuner:
    """Stage 3: every alpha of ``alphas`` at seeds seed+1 .. seed+repeat_seeds, no stopping."""
    points = [TrialSpec(key="", dataset=dataset, seed=opts.seed + k, overrides={"loss.alpha": a},
                        label=f"alpha={a:.3g}, seed {opts.seed + k}", prefix="alpha-repeat")
              for a in alphas for k in range(1, opts.repeat_seeds + 1)]
    return tune.Tuner(
        _trainable(ctx, bundles),
        param_space={"trial": tune.grid_search([p.to_dict() for p in points])},
        tune_config=tune.TuneConfig(max_concurrent_trials=opts.max_concurrent_trials,
                                    reuse_actors=True),  # keep torch/MLflow imported
        run_config=_run_config(f"{name}-repeats", storage, opts.verbose,
                               {"trial/label": "trial"}))


def run_alpha_search(opts: AlphaOptions) -> AlphaOutcome:
    """Probe, search, repeat, answer; log every trial and the summary to MLflow."""
    uri = resolve_tracking_uri(opts.tracking_uri)
    check_reachable(uri)
    base, forced = base_config(opts)
    if len(opts.data) > 1:
        raise UserError("tune_alpha tunes on one dataset: give one --data manifest")
    experiment_id = ensure_experiment(uri, opts.experiment)
    manifests, prints = resolve_manifests(_as_benchmark(opts))
    dataset = next(iter(manifests))
    cfg = effective_config(base, search_spec(opts, dataset, opts.low), manifests[dataset], forced)
    probed = probe(opts, cfg)  # before any run exists
    margin = selection.resolution(probed.num_val_queries)  # one validation query's worth of mAP
    tolerance = margin if opts.tolerance is None else opts.tolerance
    client = runs.client_for(uri)
    name = opts.name or f"tune-alpha-{time.strftime('%Y%m%d-%H%M%S')}"
    parent, _ = runs.get_or_create_parent(client, experiment_id, name, kind="tune_alpha",
                                          tags=runs.context_tags())
    runs.log_params(client, parent, {
        "alpha.low": opts.low, "alpha.high": opts.high, "num_samples": opts.num_samples,
        "loss.ablation": opts.ablation, "loss.hsc_variant": opts.hsc_variant,
        "loss.hsc_reduction": opts.hsc_reduction, "config": opts.config,
        "data": manifests[dataset], "seed": opts.seed, "repeat_top": opts.repeat_top,
        "repeat_seeds": opts.repeat_seeds, "asha.grace_period": opts.grace_period,
        "asha.reduction_factor": opts.reduction_factor, "asha.tolerance": tolerance,
        "val_queries": probed.num_val_queries})
    log_probe(client, parent, probed, setting_label(opts))
    ui.install_alpha_view(client, experiment_id, name, ui.ui_base(uri))  # while it runs
    with interrupts.stop_signals() as stop:
        try:
            table = _fit(opts, base, forced, cfg, manifests, prints, dataset, parent, name, stop,
                         tolerance)
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
    close_children(client, experiment_id, parent,
                   set(table.loc[table["status"] == "stopped (ASHA)", "trial_id"]))
    summary = alpha_summary.per_alpha(table)
    if summary.empty:
        client.set_terminated(parent, "FAILED")
        raise UserError("no alpha trial finished; see the Tune errors above")
    verdict = alpha_summary.verdict(summary, margin)
    markdown = alpha_summary.to_markdown(table, summary, verdict)
    log_summary(client, parent, table, summary, verdict, markdown)
    link = ui.install_alpha_view(client, experiment_id, name, ui.ui_base(uri), parent)
    client.set_terminated(parent, "FINISHED")
    return AlphaOutcome(table=table, summary=summary, verdict=verdict, probe=probed,
                        markdown=markdown, parent_run_id=parent, tracking_uri=uri, link=link)


def _fit(opts: AlphaOptions, base: dict, forced: dict, cfg: TrainConfig, manifests: dict,
         prints: dict, dataset: str, parent: str, name: str, stop: interrupts.StopState,
         tolerance: float) -> pd.DataFrame:
    """Stages 2 and 3 (Tune); the trials' table. Raises ``Interrupted`` on a stop signal.
    ``cfg``: the search's config at alpha = low (resources, epochs)."""
    storage = opts.storage_path or default_storage_path()
    uri = resolve_tracking_uri(opts.tracking_uri)
    experiment_id = ensure_experiment(uri, opts.experiment)
    ctx = trial_context(base_config=base, force=forced, manifests=manifests, fingerprints=prints,
                        tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent,
                        name=name, storage=storage, fit=opts.fit, figures={"cam_queries": 0})
    bundles = trial_bundles(opts, cfg)
    init_ray(opts.ray_address, quiet=True)
    stop.install()  # ray.init replaced the SIGTERM handler with a plain sys.exit
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # fit's last report (test metrics) carries best_val/mAP, not val/mAP; the scheduler ignores it.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    epochs = cfg.optim.epochs
    with stop.tune_loop():
        found = alpha_table(search_tuner(opts, ctx, dataset, storage, name, epochs, tolerance,
                                         bundles).fit(), "search")
    stop.check()
    alphas = alpha_summary.candidates(found, opts.repeat_top) if opts.repeat_seeds else []
    if not alphas:
        return found
    print(f"Repeating alpha {', '.join(f'{a:.3g}' for a in alphas)} with seeds "
          f"{opts.seed + 1}..{opts.seed + opts.repeat_seeds}", flush=True)
    with stop.tune_loop():
        again = alpha_table(repeat_tuner(opts, ctx, dataset, storage, name, alphas,
                                         bundles).fit(), "repeat")
    stop.check()
    return pd.concat([found, again], ignore_index=True)


def _as_benchmark(opts: AlphaOptions):
    return BenchmarkOptions(data=opts.data, synth=opts.synth)


def alpha_table(results, phase: str) -> pd.DataFrame:
    """One row per trial: alpha, seed, how far it trained, best val mAP, test metrics when it
    finished."""
    rows = []
    for res in results:
        m = res.metrics or {}
        finished = "test/mAP" in m and res.error is None
        epochs, best_val = _curve(res)
        spec = trial_spec(res.config)
        alpha = {**spec.overrides, **spec.searched}["loss.alpha"]  # searched, or set by a repeat
        row = {"phase": phase, "alpha": float(alpha), "seed": spec.seed,
               "status": "finished" if finished else ("error" if res.error else "stopped (ASHA)"),
               "epochs": epochs,
               "val/mAP": float(m.get("best_val/mAP", best_val)),
               "trial_id": m.get("trial_id", "")}
        for k in alpha_summary.TEST_KEYS:
            row[k] = float(m[k]) if finished and k in m else math.nan
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["alpha", "seed"]).reset_index(drop=True)


def _curve(res) -> tuple[int, float]:
    """(epochs trained, best validation mAP reported) from a trial's reported results."""
    df = getattr(res, "metrics_dataframe", None)
    if df is None or "epoch" not in df:
        return 0, math.nan
    epochs = int(df["epoch"].max()) + 1 if df["epoch"].notna().any() else 0
    best = float(df["val/mAP"].max()) if "val/mAP" in df and df["val/mAP"].notna().any() else math.nan
    return epochs, best


def close_children(client, experiment_id: str, parent: str, stopped: set[str]) -> None:
    """Runs of trials ASHA stopped (Tune trial ids ``stopped``) end KILLED, tagged stopped_early.

    Stopping interrupts the trial inside ``fit``, which leaves its run RUNNING or FAILED.
    """
    for run in runs.children(client, experiment_id, parent):
        if run.data.tags.get("msreid.tune_trial_id") in stopped:
            runs.set_tags(client, run.info.run_id, {"msreid.stopped_early": "ASHA"})
            client.set_terminated(run.info.run_id, "KILLED")


def log_probe(client, parent: str, result: ProbeResult, setting: str) -> None:
    """The probe's shares at both ends of the range (metrics) and its table (alpha/probe.md)."""
    runs.log_metrics(client, parent, {"probe/share_at_low": result.low * result.peak,
                                      "probe/share_at_high": result.high * result.peak,
                                      "probe/seconds": result.seconds})
    runs.log_text(client, parent, probe_markdown(result, setting), "alpha/probe.md")


def log_summary(client, parent: str, table: pd.DataFrame, summary: pd.DataFrame, verdict: dict,
                markdown: str) -> None:
    """Best alpha with mean/std over seeds, the verdict, the tables (md/csv) and the chart."""
    best, other = verdict["best"], verdict["other"]
    runs.log_params(client, parent, {"best_alpha": best["alpha"]})
    metrics = {"best_alpha": best["alpha"], "best/val/mAP": best["val_mean"],
               "best/test/mAP": best["test_mean"], "best/seeds": best["seeds"],
               "alpha/margin": verdict["margin"], "alpha/significant": int(verdict["significant"])}
    if not math.isnan(best["val_std"]):
        metrics["best/val/mAP_std"] = best["val_std"]
    if other is not None:
        metrics.update({"reference_alpha": other["alpha"], "reference/val/mAP": other["val_mean"],
                        "alpha/gap": verdict["gap"]})
        if not math.isnan(other["val_std"]):
            metrics["reference/val/mAP_std"] = other["val_std"]
    runs.log_metrics(client, parent, metrics)
    runs.set_tags(client, parent, {"msreid.alpha_verdict": alpha_summary.verdict_sentence(verdict)})
    runs.log_text(client, parent, markdown, "alpha/alpha_search.md")
    runs.log_text(client, parent, table.to_csv(index=False), "alpha/alpha_search.csv")
    runs.log_text(client, parent, summary.to_csv(index=False), "alpha/alpha_per_value.csv")
    with tempfile.TemporaryDirectory() as tmp:
        path = alpha_summary.plot(table, summary, verdict, Path(tmp) / "map_vs_alpha.png")
        client.log_artifact(parent, str(path), "alpha")
