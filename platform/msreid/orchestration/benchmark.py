"""The benchmark driver: a suite of tables -> Tune trials -> MLflow runs -> printed tables.

Order of work (nothing expensive before the cheap checks):
1. read the suite and the training preset, build and check every trial's config;
2. resolve the tracking URI and check it is reachable, create the store and
   experiment (SQLite migrations must not race in the trials);
3. resolve manifests (``--data``, or generate + ingest the synthetic one);
4. find or create the parent run (on ``--resume``: the previous invocation's);
5. run (or restore) the Tune experiment: one function trial per (cell, seed);
6. assemble the tables from the trial results, print them, log them on the parent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ray import tune

from msreid import cli_options, grid, storage
from msreid.config import config_to_dict, load_config, parse_overrides
from msreid.data.schema import manifest_info, verify_manifest
from msreid.errors import DiskFullError, UserError, disk_full_report
from msreid.orchestration import interrupts
from msreid.orchestration.datasets import SMOKE_LAYOUT, resolve_data_args, synth_spec, synthetic_manifest
from msreid.orchestration.paths import cache_dir, default_storage_path, find_experiment_file
from msreid.orchestration.trainable import (
    TrialContext,
    effective_config,
    run_trial,
    trial_context,
    trial_spec,
)
from msreid.tracking import comparison, cross_spectral, runs, tables, ui
from msreid.tracking.store import check_reachable, ensure_experiment, resolve_tracking_uri
from msreid.train.fit import fit as train_fit
from msreid.train.ray_runtime import init_ray

log = logging.getLogger(__name__)

TAG_SUITE = "msreid.suite"
SETTINGS_FILE = "settings.json"  # on the parent: what --resume must match


@dataclass(frozen=True)
class BenchmarkOptions:
    """Everything ``experiments/full_benchmark.py`` passes to ``run_benchmark``."""

    preset: str = field(default="smoke", metadata={
        "help": "benchmark suite: smoke (default without --data), paper (default with --data), or "
                "a suite YAML path (experiments/grids/)"})
    data: tuple[str, ...] = field(default=(), metadata={
        "help": "a manifest (local path or s3://...) written by `msreid ingest`; the dataset is "
                "read from its metadata unless given; repeat per dataset"})
    config: str | None = field(default=None, metadata={
        "help": "training preset (experiments/presets/) instead of the suite's"})
    overrides: tuple[str, ...] = field(default=(), metadata={
        "help": "config override for every trial, e.g. --set optim.epochs=2"})
    seeds: tuple[int, ...] | None = field(default=None, metadata={"help": "seeds (suite's default)"})
    experiment: str = field(default="msreid-benchmark", metadata={"help": "MLflow experiment"})
    tracking_uri: str | None = field(default=None, metadata={
        "help": "MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db "
                "(served by `make ui`)"})
    storage_path: str | None = field(default=None, metadata={
        "help": "Ray results dir, shared on clusters (default $MSREID_STORAGE_PATH or "
                "./ray_results)"})
    name: str | None = field(default=None, metadata={
        "help": "benchmark name (default <suite>-<timestamp>)"})
    resume: str | None = field(default=None, metadata={
        "help": "continue an interrupted benchmark (default: the latest of this suite)"})
    max_concurrent_trials: int | None = field(default=None, metadata={
        "help": "trials at once (default: the suite's)"})
    ray_address: str | None = field(default=None, metadata={
        "help": "Ray cluster (default $RAY_ADDRESS or local)"})
    synth: dict = field(default_factory=dict, metadata={
        "help": 'JSON SynthSpec overrides for the synthetic data, e.g. \'{"ids": 20}\''})
    fit: Callable = field(default=train_fit,
                          metadata={"help": "the training function (tests pass a stand-in)"})
    figures: dict = field(default_factory=dict, metadata={"help": "figure options per trial"})
    register: bool = field(default=False, metadata={
        "help": "register each cell's best seed (by validation mAP) in the MLflow model registry"})
    system_metrics: bool = field(default=False, metadata={
        "help": "log CPU/memory/disk/network (and GPU) as system/* metrics of each trial run"})
    verbose: int = field(default=1, metadata={"help": "0 = quiet, 1 = progress table"})
    command: tuple[str, ...] = field(default=(), metadata={
        "help": "the command line that started the run, without --resume (for the resume hint)"})


@dataclass
class BenchmarkOutcome:
    """What ``run_benchmark`` produced."""

    name: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    frames: dict
    markdown: str
    checks: list[tuple[bool, str]]
    errors: list[str]
    suite: grid.Suite
    landing_url: str = ""  # opens the cells in the MLflow UI (msreid.tracking.ui)
    links: dict = field(default_factory=dict)  # table title -> its saved view in the MLflow UI
    registered: dict = field(default_factory=dict)  # cell key -> registered model (--register)


def prepare_trials(opts: BenchmarkOptions, suite: grid.Suite, datasets: set[str] | None):
    """Base config (flat dict), forced overrides and trials; every trial's config is checked here.

    A trial's key hashes its whole effective config (preset + cell + ``--set`` + seed), not only
    the cell's overrides: a changed preset or ``--set`` gives new keys, never a stale result.
    Cells whose effective configs are equal share one trial.
    """
    preset = find_experiment_file(opts.config or suite.preset, "presets")
    base = config_to_dict(load_config(preset, list(opts.overrides)))
    trials = grid.expand_trials(suite, datasets)
    if not trials:
        raise UserError(f"suite {suite.source}: no cell runs on the given data "
                        f"({sorted(datasets or [])}); pass --data for one of its datasets")
    forced = parse_overrides(list(opts.overrides))
    merged: dict[str, grid.TrialSpec] = {}
    for t in trials:
        try:  # no data yet: "x" stands for the manifest, which the key leaves out
            effective = config_to_dict(effective_config(base, t, "x", forced))
        except UserError as exc:
            raise UserError(f"suite {suite.source}, cell {' / '.join(t.cells[0])}: {exc}") from None
        effective.pop("data.manifest")  # the data is named by the dataset and its fingerprint
        key = grid.trial_key(t.dataset, effective, t.seed)
        first = merged.get(key, replace(t, cells=()))  # the first cell names a merged trial
        merged[key] = replace(t, key=key, cells=first.cells + t.cells, label=first.label)
    return base, forced, list(merged.values())


def load_benchmark_suite(opts: BenchmarkOptions) -> grid.Suite:
    """The suite file named by ``opts.preset``, with ``opts.seeds`` applied."""
    suite = grid.load_suite(find_experiment_file(opts.preset, "grids"))
    if opts.seeds is not None:
        suite = grid.Suite(**{**suite.__dict__, "seeds": tuple(opts.seeds)})
    return suite


def resolve_manifests(opts: BenchmarkOptions, suite_synth: dict | None = None
                      ) -> tuple[dict[str, str], dict[str, str]]:
    """``({dataset: manifest}, {dataset: fingerprint})`` from --data or the synthetic default.

    The synthetic data is the suite's ``synth`` spec with ``opts.synth`` on top.
    """
    if opts.data:
        manifests = resolve_data_args(list(opts.data))
    else:
        manifests = {SMOKE_LAYOUT: synthetic_manifest({**(suite_synth or {}), **opts.synth})}
    prints = {ds: manifest_info(uri).fingerprint for ds, uri in manifests.items()}
    for uri in manifests.values():
        if storage.is_uri(uri):  # every byte as ingested, once here: before any trial starts
            verify_manifest(uri)
    return manifests, prints


def check_stores(opts: BenchmarkOptions) -> None:
    """UserError, within seconds, when the object storage the run writes to is unusable."""
    storage.check_store(opts.storage_path or default_storage_path(),
                        "Ray Train/Tune storage (--storage-path, $MSREID_STORAGE_PATH)")
    if not opts.data:
        storage.check_store(cache_dir(), "the synthetic data's cache ($MSREID_CACHE)")


def benchmark_name(opts: BenchmarkOptions, suite: grid.Suite, client, experiment_id: str) -> str:
    """A fresh ``<suite>-<timestamp>`` name, or the one to resume (UserError: no such benchmark)."""
    if opts.resume is None:
        return opts.name or f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parents = runs.find_runs(client, experiment_id, {runs.TAG_KIND: "benchmark"})
    if opts.resume:
        if any(p.data.tags.get(runs.TAG_BENCHMARK) == opts.resume for p in parents):
            return opts.resume
        names = [f"{p.data.tags.get(runs.TAG_BENCHMARK)} ({p.info.status})" for p in parents
                 if p.info.status != "FINISHED"]
        raise UserError(f"--resume {opts.resume}: no benchmark of that name in this MLflow "
                        f"experiment; resumable: {', '.join(names) or 'none'} (or run without --resume)")
    previous = [p for p in parents if p.data.tags.get(TAG_SUITE) == suite.name]
    if not previous:
        raise UserError(f"--resume: no earlier `{suite.name}` benchmark in MLflow experiment "
                        "(run without --resume first, or pass --resume NAME)")
    return previous[0].data.tags[runs.TAG_BENCHMARK]


def parent_description(suite: grid.Suite) -> str:
    """The parent run's description (``mlflow.note.content``)."""
    return (f"Benchmark `{suite.name}` ({suite.source}): tables "
            f"{', '.join(t.name for t in suite.tables)}, seeds {list(suite.seeds)}. Each table cell "
            "is a metric `<table>/<row>/<column>/<metric>` (mean over seeds, in %; `_std` beside "
            "it); the tables are under Artifacts `tables/`. The child runs are the trials (one per "
            "cell and seed).")


def benchmark_settings(opts: BenchmarkOptions, suite: grid.Suite, base: dict, forced: dict,
                       prints: dict[str, str]) -> dict[str, Any]:
    """Everything that decides a benchmark's results, flat and JSON-normalised (SETTINGS_FILE)."""
    packing = ("source", "seeds", "trial_resources", "max_concurrent_trials", "max_failures", "checks",
               "matrix_checks")
    definition = {k: v for k, v in grid.suite_to_dict(suite).items() if k not in packing}
    digest = hashlib.sha1(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()
    settings = {"suite": suite.name, "suite.definition_sha1": digest, "seeds": list(suite.seeds),
                "set": forced, **{f"data.{k}": v for k, v in sorted(prints.items())},
                **{f"preset.{k}": v for k, v in base.items() if k != "data.manifest"}}  # with --set
    return json.loads(json.dumps(settings, default=str))


def check_resume_settings(client, experiment_id: str, name: str, settings: dict) -> None:
    """UserError listing each setting (old -> new) that differs from the resumed run's record."""
    (parent, *_) = runs.find_runs(client, experiment_id, {runs.TAG_KIND: "benchmark",
                                                          runs.TAG_BENCHMARK: name})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            old = json.loads(Path(client.download_artifacts(parent.info.run_id, SETTINGS_FILE,
                                                            tmp)).read_text())
    except Exception:  # noqa: BLE001 (MLflow raises several types for a missing artifact)
        raise UserError(f"--resume {name}: the parent run {parent.info.run_id} has no recorded "
                        f"{SETTINGS_FILE} (made by an older msreid), so its settings cannot be "
                        "checked; start a new benchmark") from None
    diff = [f"{k}: {json.dumps(old.get(k, '(unset)'))} -> {json.dumps(settings.get(k, '(unset)'))}"
            for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if diff:
        raise UserError(f"--resume {name}: these settings differ from the run being resumed "
                        f"(recorded -> now): {'; '.join(diff)}. Resume with the recorded settings "
                        f"({SETTINGS_FILE} of parent run {parent.info.run_id}), or start a new "
                        "benchmark without --resume")


def start_parent(opts, suite, client, experiment_id, name, manifests, prints, settings) -> str:
    """Find (resume) or create the parent run; log the suite description and settings on it."""
    context = runs.context_tags()
    parent, created = runs.get_or_create_parent(
        client, experiment_id, name,
        tags={TAG_SUITE: suite.name, **context, runs.TAG_NOTE: parent_description(suite)})
    runs.log_params(client, parent, {"suite": suite.source, "seeds": list(suite.seeds),
                                  "overrides": list(opts.overrides), **{
                                      f"data.{k}": v for k, v in manifests.items()}})
    tags = {f"msreid.manifest_fingerprint.{k}": v for k, v in prints.items()}
    runs.set_tags(client, parent, {**tags, **context, runs.TAG_NOTE: parent_description(suite)})
    if not created and interrupts.TAG_INTERRUPTED in client.get_run(parent).data.tags:
        client.delete_tag(parent, interrupts.TAG_INTERRUPTED)  # resumed: no longer interrupted
    if created:
        runs.log_text(client, parent, json.dumps(grid.suite_to_dict(suite), indent=1), "suite.json")
        runs.log_text(client, parent, json.dumps(settings, indent=1), SETTINGS_FILE)
    return parent


def run_benchmark(opts: BenchmarkOptions) -> BenchmarkOutcome:
    """Run (or resume) a benchmark suite end to end; see the module docstring."""
    uri = resolve_tracking_uri(opts.tracking_uri)
    check_reachable(uri)
    datasets = set(resolve_data_args(list(opts.data))) if opts.data else {SMOKE_LAYOUT}
    suite, notes = grid.restrict_suite(load_benchmark_suite(opts), datasets)
    for note in notes:
        print(f"note: {note}", flush=True)
    base, forced, trials = prepare_trials(opts, suite, datasets)  # config errors: before compute
    if not opts.data:
        synth_spec({**suite.synth, **opts.synth})  # bad synthetic data options: before compute too
    check_stores(opts)  # object storage: bucket, permission, endpoint; before any run is created
    experiment_id = ensure_experiment(uri, opts.experiment)
    client = runs.client_for(uri)
    ui.install_landing_view(client, experiment_id)
    name = benchmark_name(opts, suite, client, experiment_id)
    with interrupts.stop_signals() as stop:
        manifests, prints = resolve_manifests(opts, suite.synth)  # synthetic data: generated on first use
        settings = benchmark_settings(opts, suite, base, forced, prints)
        if opts.resume is not None:  # exactly the recorded settings, or refuse (nothing changed yet)
            check_resume_settings(client, experiment_id, name, settings)
        init_ray(opts.ray_address, quiet=True)  # before the parent run: no RUNNING run if Ray fails
        stop.install()  # ray.init replaced the SIGTERM handler with a plain sys.exit
        parent = start_parent(opts, suite, client, experiment_id, name, manifests, prints, settings)
        ui.install_table_views(client, experiment_id, name, suite, ui.ui_base(uri))  # while it runs
        try:
            storage = opts.storage_path or default_storage_path()
            ctx = trial_context(base_config=base, force=forced, manifests=manifests,
                                fingerprints=prints, tracking_uri=uri, experiment_id=experiment_id,
                                parent_run_id=parent, name=name, storage=storage, fit=opts.fit,
                                figures=opts.figures, system_metrics=opts.system_metrics)
            print(f"Benchmark {name}: {len(trials)} trials ({len(suite.seeds)} seed(s)), MLflow {uri} "
                  f"experiment {opts.experiment!r}, parent run {parent}", flush=True)
            with stop.tune_loop():
                results, errors = run_tune(suite, trials, ctx, storage, name, opts)
            stop.check()
            _raise_disk_full(errors, len(trials), resume_command(opts, name))
            if len(results) + len(errors) < len(trials):  # stopped by Tune (e.g. SIGUSR1)
                raise interrupts.Interrupted("SIGUSR1")
        except interrupts.Interrupted as exc:
            raise _interrupted(client, experiment_id, parent, name, len(trials), exc,
                               resume_command(opts, name)) from None
        except Exception:  # the parent must not stay RUNNING; --resume re-runs what failed
            client.set_terminated(parent, "FAILED")
            raise
        return publish_tables(suite, results, errors, client, parent, experiment_id, uri, name,
                              register=opts.register)


def resume_command(opts: BenchmarkOptions, name: str) -> str:
    """The shell command that resumes benchmark ``name``: the run's own options plus ``--resume``."""
    start = opts.command or ("python", "experiments/full_benchmark.py")  # a caller without argv
    return cli_options.shell_command([*start, "--resume", name])


def _raise_disk_full(errors: list[str], n_trials: int, command: str) -> None:
    """One ``DiskFullError`` when trials stopped on a full disk: no tables from a partial grid;
    finished trials are kept and the printed command resumes once there is room."""
    full = [m for m in (disk_full_report(Exception(e)) for e in errors) if m]
    if full:
        raise DiskFullError(f"{len(full)} of {n_trials} trials stopped on a full disk, the first: "
                            f"{full[0]}. Finished trials are kept; once there is room, resume "
                            f"with:\n  {command}")


def _interrupted(client, experiment_id: str, parent: str, name: str, n_trials: int,
                 exc: interrupts.Interrupted, command: str) -> interrupts.Interrupted:
    """Close the runs of an interrupted benchmark (see msreid.orchestration.interrupts)."""
    hint = f"resume with the same options plus --resume {name}:\n  {command}"
    note = (f"Interrupted by {exc.signal_name}; no tables were written. Finished trials are kept; "
            f"{hint}")
    finished = interrupts.close_interrupted(client, experiment_id, parent, exc.signal_name, note)
    message = (f"interrupted by {exc.signal_name} after {finished} of {n_trials} trials; parent run "
               f"{parent} marked KILLED, no tables written; {hint}")
    return interrupts.Interrupted(exc.signal_name, message)


def publish_tables(suite, results, errors, client, parent, experiment_id, uri, name,
                   register: bool = False) -> BenchmarkOutcome:
    """Assemble, log and return the tables (every cell also a parent metric); register each
    cell's best model when asked; close the parent run."""
    frames = tables.assemble_suite(suite, results)
    per_cell = cross_spectral.log_parent_matrices(client, experiment_id, parent)
    markdown = tables.suite_markdown(suite, frames)
    if per_cell:  # the query x gallery spectrum matrix of every cell, after the tables
        markdown += "\n" + cross_spectral.all_markdown(cross_spectral.summarize(per_cell))
    checks = tables.run_checks(suite, frames) + cross_spectral.run_matrix_checks(suite, per_cell)
    log_tables(client, parent, suite, frames, checks)
    comparison.log_parent_results(client, parent, suite, frames)
    comparison.log_cell_references(client, experiment_id, parent, suite, frames)
    links = ui.install_table_views(client, experiment_id, name, suite, ui.ui_base(uri), parent)
    registered = comparison.register_best_models(client, experiment_id, parent) if register else {}
    client.set_terminated(parent, "FINISHED" if not errors else "FAILED")
    return BenchmarkOutcome(name=name, parent_run_id=parent, experiment_id=experiment_id,
                            tracking_uri=uri, frames=frames, markdown=markdown, checks=checks,
                            errors=errors, suite=suite, registered=registered,
                            landing_url=ui.landing_url(ui.ui_base(uri), experiment_id),
                            links=links)


def log_tables(client, parent: str, suite: grid.Suite, frames: dict, checks) -> None:
    """Each table as markdown, CSV and HTML under ``tables/`` of the parent run, plus metrics."""
    for table_name, frame in frames.items():
        table = suite.table(table_name)
        runs.log_text(client, parent, tables.to_markdown(table, frame), f"tables/{table_name}.md")
        runs.log_text(client, parent, tables.to_csv(frame), f"tables/{table_name}.csv")
        runs.log_text(client, parent, tables.to_html(table, frame), f"tables/{table_name}.html")
    runs.log_text(client, parent, tables.suite_markdown(suite, frames), "tables/all.md")
    if checks:
        runs.log_text(client, parent, "\n".join(m for _, m in checks) + "\n", "tables/checks.txt")
        runs.set_tags(client, parent, {"msreid.checks": "PASS" if all(ok for ok, _ in checks) else "FAIL"})


def _trainable(ctx: TrialContext, suite: grid.Suite):
    bundles = [dict(b) for b in suite.trial_resources]
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                               tune.PlacementGroupFactory(bundles))


def run_tune(suite: grid.Suite, trials: list[grid.TrialSpec], ctx: TrialContext, storage: str,
             name: str, opts: BenchmarkOptions) -> tuple[list[tables.TrialResult], list[str]]:
    """Fit (or restore and finish) the Tune experiment; return results and error messages."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # use the CLIReporter below (done/running/pending + metrics)
    trainable = _trainable(ctx, suite)
    path = f"{storage.rstrip('/')}/{name}"
    if opts.resume is not None and tune.Tuner.can_restore(path):
        print(f"Resuming {path}: finished trials are kept, errored ones re-run", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space(trials),
                           tune_config=tune.TuneConfig(
                               max_concurrent_trials=(opts.max_concurrent_trials
                                                      or suite.max_concurrent_trials or None),
                               trial_dirname_creator=lambda t: trial_spec(t.config).key,
                               reuse_actors=True),  # keep torch/MLflow imported between trials
                           run_config=run_config(suite, storage, name, opts.verbose))
    return collect_results(tuner.fit(), ctx)


def collect_results(grid_results, ctx: TrialContext) -> tuple[list[tables.TrialResult], list[str]]:
    """Tune's results as table rows, and one message per trial that errored or never started.

    A trial that never started (the driver was stopped first) has no config; it is reported, not
    skipped, so a grid it belongs to is never taken as complete.
    """
    results, errors = [], []
    for res in grid_results:
        if not res.config:
            errors.append("a trial never started (the run was stopped before it was placed)")
            continue
        spec = trial_spec(res.config)
        if res.error is not None:  # a full disk: its one-line message, not Ray's traceback
            full = disk_full_report(res.error)
            text = f"{DiskFullError.__name__}: {full}" if full else \
                f"{type(res.error).__name__}: {res.error}"
            errors.append(f"{spec.label}: {text}"[:2000])
        if res.metrics and "test/mAP" in res.metrics:
            cfg = effective_config(ctx.base_config, spec, ctx.manifests[spec.dataset], ctx.force)
            results.append(tables.TrialResult(cells=spec.cells, seed=spec.seed,
                                              metrics=runs.in_percent(res.metrics),
                                              config=tables.trained_as(config_to_dict(cfg))))
    return results, errors


def param_space(trials: list[grid.TrialSpec]) -> dict[str, Any]:
    """One grid point per trial (JSON-able dicts: Tune stores them for --resume)."""
    return {"trial": tune.grid_search([t.to_dict() for t in trials])}


def run_config(suite: grid.Suite, storage: str, name: str, verbose: int):
    """Tune RunConfig: stable name, retries, a progress table with the latest metrics."""
    reporter = tune.CLIReporter(
        metric_columns={"epoch": "epoch", "train/loss": "loss", "val/mAP": "val mAP",
                        "test/mAP": "test mAP"},
        parameter_columns={"trial/label": "cell"}, max_report_frequency=30,
        max_column_length=60, sort_by_metric=False)
    return tune.RunConfig(name=name, storage_path=storage,
                          failure_config=tune.FailureConfig(max_failures=suite.max_failures),
                          progress_reporter=reporter, verbose=verbose)
