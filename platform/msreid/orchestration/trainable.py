"""The Tune function trainable: one trial = one ``msreid.train.fit.fit`` + one MLflow child run.

With Ray Train V2, ``Tuner(TorchTrainer)`` is gone; a Tune *function* builds
and fits the TorchTrainer (inside ``fit``) and
``TrialReport`` forwards the training workers' per-epoch reports to Tune
(progress, ASHA): through Ray's ``TuneReportCallback`` from a Train controller,
with ``tune.report`` in local mode. A second Train callback
logs the same per-epoch metrics to the trial's MLflow child run as they come
(``step`` = epoch), so early-stopped trials keep their curves.

A trial's ``config`` is ``{"trial": TrialSpec.to_dict()}`` (``msreid.grid``);
a search puts Tune domains in the spec's ``searched`` and the trial gets the
sampled values there. ``ctx``, a ``TrialContext`` built by ``trial_context`` and
passed with ``tune.with_parameters``, holds what all trials share: the base
config, manifests, tracking URI, parent run, the training function.
``effective_config`` is the one place a trial's config is merged: the trial,
the benchmark's keys and tables, and the alpha search all use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import ray
from ray import tune
from ray.train import UserCallback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from msreid.config import TrainConfig, batch_params, config_from_dict, config_to_dict
from msreid.data.schema import manifest_info
from msreid.errors import UserError
from msreid.grid import TrialSpec
from msreid.tracking import comparison, entities, runs
from msreid.tracking.trial_logging import log_history, log_trial_artifacts
from msreid.train.fit import TrainOutcome
from msreid.train.fit import fit as train_fit
from msreid.train.session import temp_files_in_scratch

log = logging.getLogger(__name__)

SPEC_OWNS = ("data.manifest", "run.seed")  # set from a TrialSpec's dataset and seed


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one Tune experiment shares (pickled to each trial's process)."""

    base_config: dict  # flat config of the preset (+ overrides)
    force: dict  # flat keys applied last, over the cell and the searched keys
    manifests: dict  # dataset -> manifest URI
    fingerprints: dict  # dataset -> manifest fingerprint
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    benchmark: str  # the experiment's name (tag of every child run)
    train_storage: str  # where the trials' training runs live
    context_tags: dict  # MLflow's user / source / git tags, resolved once in the driver
    fit: Callable[..., TrainOutcome] = train_fit  # pickled with the context (tests pass a stand-in)
    figures: dict = field(default_factory=dict)  # figure options (msreid.tracking.trial_logging)
    train_max_failures: int = 0
    system_metrics: bool = False  # MLflow's system/* metrics on each trial run


def trial_context(*, base_config: dict, force: dict, manifests: dict, fingerprints: dict,
                  tracking_uri: str, experiment_id: str, parent_run_id: str, name: str,
                  storage: str, fit: Callable[..., TrainOutcome], figures: dict,
                  system_metrics: bool = False) -> TrialContext:
    """The context of experiment ``name``: training runs go to ``<storage>/<name>/train``."""
    return TrialContext(base_config=base_config, force=force, manifests=manifests,
                        fingerprints=fingerprints, tracking_uri=tracking_uri,
                        experiment_id=experiment_id, parent_run_id=parent_run_id,
                        benchmark=name, train_storage=f"{storage.rstrip('/')}/{name}/train",
                        context_tags=runs.context_tags(), fit=fit, figures=figures,
                        system_metrics=system_metrics)


class TrialReport(UserCallback):
    """Each epoch's report to Tune, from wherever the training loop runs.

    In a Train controller (run.num_workers >= 1, another process) it forwards through Ray's
    ``TuneReportCallback`` (an inter-actor queue the trial's main thread polls). Called in the
    trial's own training thread (local mode: this process trains and calls the callbacks), it
    reports with ``tune.report`` there instead: through the queue, the trial's final
    ``tune.report`` could overtake the last epoch's item, and the main thread, forwarding that
    item into the result queue the final report already filled, waited on itself forever (seen
    in the alpha search's end-to-end test: ``_TrainSession._get_result_from_queues`` and the
    function's closing ``report`` both blocked in ``Queue.put``; Ray 2.60). Reported here, the
    results reach Tune in order. Same metrics either way: rank 0's, with the checkpoint's path
    under ``checkpoint_path`` (Train already stored the checkpoint).
    """

    def __init__(self):
        self.forward = TuneReportCallback()
        self.home = (os.getpid(), threading.get_ident())  # the trial's training thread

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if (os.getpid(), threading.get_ident()) != self.home:
            self.forward.after_report(run_context, metrics, checkpoint)
            return
        item = dict(metrics[0]) if metrics else {}
        if checkpoint:
            item[CHECKPOINT_PATH_KEY] = checkpoint.path
        tune.report(item)


class MlflowEpochCallback(UserCallback):
    """Ray Train callback (runs in the Train controller): log each report to an MLflow run."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        """Log rank 0's per-epoch metrics (already reduced across ranks by the loop) at step = epoch;
        the final report's test metrics are logged once by ``log_outcome``."""
        if not metrics:
            return
        first = metrics[0]
        step = int(first.get("epoch", first.get("training_iteration", 0)) or 0)
        try:
            runs.log_metrics(runs.client_for(self.tracking_uri), self.run_id,
                             comparison.epoch_metrics(first), step=step)
        except Exception as exc:  # tracking must never kill a training run
            log.warning("MLflow per-epoch logging failed: %s", exc)


@contextlib.contextmanager
def data_in_trial_reservation():
    """Run the Ray Data tasks this trial starts inside the trial's own placement group.

    Tune's trial placement group (``trial_resources``) holds the trial function in its first
    bundle; the further bundles are for the work the trial starts. Plain Ray tasks land there
    by themselves (Tune captures child tasks), but Ray Data schedules its tasks with its own
    strategy (SPREAD), outside the group: on a node whose CPUs are all reserved by trials they
    wait forever ("does not have any available CPUs. The Dataset job will hang", seen on a
    2-node cluster). Ray Data's context takes a placement-group strategy for its tasks; it is
    set for the duration of the trial and restored after (actors are reused between trials).
    """
    from ray.data import DataContext
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = ray.util.get_current_placement_group()
    if group is None:
        yield
        return
    ctx = DataContext.get_current()
    saved = (ctx.scheduling_strategy, ctx.scheduling_strategy_large_args)
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
    with warnings.catch_warnings():
        # Deprecated for 2027 in Ray 2.60, with no replacement yet for code running in a group.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.scheduling_strategy = ctx.scheduling_strategy_large_args = strategy
        try:
            yield
        finally:
            ctx.scheduling_strategy, ctx.scheduling_strategy_large_args = saved


def check_manifest_here(cfg: TrainConfig, node_ip: str) -> None:
    """UserError naming this node and the manifest when the trial cannot read it (cluster data)."""
    try:
        manifest_info(cfg.data.manifest)
    except UserError as exc:
        raise UserError(f"node {node_ip}: cannot read the manifest {cfg.data.manifest} ({exc}). "
                        "Every node of a cluster must see it: use shared storage (s3://, or the "
                        "cluster's shared path; generated data goes to $MSREID_CACHE, which may "
                        "be either)") from None


def _record_node(client, run_id: str, node_ip: str) -> None:
    """Tags: the node of this attempt (``msreid.node_ip``) and of every attempt (``msreid.nodes``)."""
    before = client.get_run(run_id).data.tags.get("msreid.nodes", "")
    nodes = ",".join(n for n in (before, node_ip) if n)
    runs.set_tags(client, run_id, {"msreid.node_ip": node_ip, "msreid.nodes": nodes})


def effective_config(base: Mapping[str, Any], spec: TrialSpec, manifest: str,
                     force: Mapping[str, Any]) -> TrainConfig:
    """The config a trial trains ("as trained"): the preset ``base`` < the spec's overrides < its
    searched values < its data (``manifest``) and seed < ``force`` (``--set``, the tuner's keys).

    UserError when ``force`` sets what the spec decides (its data, seed or a searched key): every
    trial would train the forced value while its key, tags and tables name the spec's.
    """
    owned = [k for k in (*SPEC_OWNS, *spec.searched) if k in force]
    if owned:
        raise UserError(f"--set {owned[0]}: each trial sets {owned[0]} itself (the data from "
                        "--data, the seed from the seeds, searched keys from the search); "
                        "drop that --set")
    return config_from_dict({**base, **spec.overrides, **spec.searched, "data.manifest": manifest,
                             "run.seed": spec.seed, **force})


def trial_spec(config: dict) -> TrialSpec:
    """The TrialSpec of a Tune trial's ``config`` (``{"trial": spec.to_dict()}``, nothing else)."""
    if set(config) != {"trial"}:
        raise UserError(f"a Tune trial's config has keys {sorted(config)}, expected only 'trial' "
                        "(searched keys belong in the spec's `searched`)")
    return TrialSpec.from_dict(config["trial"])


def _trial_key(spec: TrialSpec) -> str:
    return spec.key or f"{spec.prefix}-{tune.get_context().get_trial_id()}"


def _trial_tags(ctx: TrialContext, spec: TrialSpec) -> dict[str, str]:
    tags = {**ctx.context_tags, runs.TAG_BENCHMARK: ctx.benchmark,
            runs.TAG_CELLS: json.dumps([list(c) for c in spec.cells]),
            runs.TAG_SEED: str(spec.seed), "msreid.dataset": spec.dataset,
            runs.TAG_UNITS: "percent",
            "msreid.tune_trial_id": tune.get_context().get_trial_id() or "",
            "msreid.selection": "test/* = test set, checkpoint chosen by params.run.selection "
                                "(validation: best val/mAP; final: the last epoch)"}
    if spec.searched:
        tags["msreid.searched"] = json.dumps(spec.searched, sort_keys=True)
    fingerprint = ctx.fingerprints.get(spec.dataset)
    if fingerprint:
        tags["msreid.manifest_fingerprint"] = fingerprint
    return tags


def _reuse_finished(client, run_id: str) -> dict | None:
    """Final metrics of a child run that already FINISHED (driver died after it), else None."""
    run = client.get_run(run_id)
    if run.info.status == "FINISHED" and "test/mAP" in run.data.metrics:
        return comparison.from_percent(runs.stored_in_percent(run))
    return None


def _identity(ctx: TrialContext, spec: TrialSpec, cfg: TrainConfig,
              key: str) -> tuple[str, dict[str, str]]:
    """Run name and identity tags: the cells of a benchmark trial, or the searched values' label."""
    cells = list(spec.cells)
    if not cells or spec.searched:
        label = spec.label or ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in spec.searched.items())
        return label or key, {}
    manifest = ctx.manifests[spec.dataset]
    spectra = cfg.data.spectra
    if not spectra:  # all of the manifest's; an unreadable manifest is reported by run_trial
        try:
            spectra = manifest_info(manifest).spectra
        except Exception:  # noqa: BLE001 (only the run's name depends on it)
            spectra = ()
    return comparison.trial_identity(cells, spec.seed, spec.dataset, manifest, spectra,
                                     cfg.loss.ablation, cfg.model.backbone, cfg.optim.epochs,
                                     cfg.data.modality_dropout)


def _dataset(ctx: TrialContext, spec: TrialSpec):
    """The trial's manifest as an MLflow dataset (None without a fingerprint)."""
    name = spec.dataset
    fingerprint = ctx.fingerprints.get(name)
    if not fingerprint:
        return None
    return entities.manifest_dataset(name, ctx.manifests[name], fingerprint)


def run_trial(config: dict, ctx: TrialContext) -> None:
    """Tune function trainable (see the module docstring)."""
    spec = trial_spec(config)
    key = _trial_key(spec)
    client = runs.client_for(ctx.tracking_uri)
    cfg = effective_config(ctx.base_config, spec, ctx.manifests[spec.dataset], ctx.force)
    name, identity = _identity(ctx, spec, cfg, key)
    run_id, _ = runs.get_or_create_child(client, ctx.experiment_id, ctx.parent_run_id, key,
                                         run_name=name, tags={**_trial_tags(ctx, spec), **identity})
    done = _reuse_finished(client, run_id)
    if done is not None:  # finished in MLflow but not in Tune's state: do not train again
        tune.report({**done, "mlflow_run_id": run_id, "reused": 1})
        return
    node_ip = ray.util.get_node_ip_address()
    _record_node(client, run_id, node_ip)
    runs.log_params(client, run_id, {**config_to_dict(cfg), **batch_params(cfg)})
    callbacks = [TrialReport(), MlflowEpochCallback(ctx.tracking_uri, run_id)]
    with temp_files_in_scratch():  # copies and figures: under the node's Ray temp dir
        try:  # local mode (num_workers=0) trains in this process and calls the callbacks itself
            check_manifest_here(cfg, node_ip)
            with data_in_trial_reservation(), entities.system_metrics(
                    ctx.tracking_uri, run_id, ctx.system_metrics):
                outcome = ctx.fit(cfg, storage_path=ctx.train_storage, name=key,
                                  callbacks=callbacks, max_failures=ctx.train_max_failures)
        except BaseException as exc:
            runs.set_tags(client, run_id, {"msreid.error": repr(exc)[:5000]})
            client.set_terminated(run_id, "FAILED")
            raise
        try:
            final = log_outcome(client, run_id, cfg, outcome, ctx, name, _dataset(ctx, spec))
        finally:
            outcome.release()  # object storage: the local copy of the final checkpoint
    client.set_terminated(run_id, "FINISHED")
    tune.report({**final, "mlflow_run_id": run_id})


def final_metrics(outcome: TrainOutcome) -> dict[str, float]:
    """The numeric final metrics of a TrainOutcome (test set from the selected checkpoint, best val)."""
    return {k: float(v) for k, v in outcome.metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def log_outcome(client, run_id: str, cfg: TrainConfig, outcome: TrainOutcome, ctx: TrialContext,
                name: str = "", dataset=None) -> dict[str, float]:
    """Log a finished trial: history (epochs not logged live), final metrics (once, in %, at step
    0) with the selected checkpoint's LoggedModel and the dataset, breakdown tables, artifacts,
    figures. Returns the final metrics as the fractions Tune gets."""
    log_history(client, run_id, outcome.history)
    final = final_metrics(outcome)
    comparison.log_trial_result(client, ctx.experiment_id, run_id, name or run_id, final,
                                outcome.stored_at, outcome.artifacts_dir, dataset,
                                params=config_to_dict(cfg))
    tags = {"msreid.best_epoch": int(final.get("best_epoch", 0)),
            "msreid.checkpoint": str(outcome.stored_at or "")}
    if "selection/within_noise" in final:  # validated runs only (docs/TRAINING.md)
        tags[runs.TAG_WITHIN_NOISE] = str(bool(final["selection/within_noise"])).lower()
    runs.set_tags(client, run_id, tags)
    try:
        log_trial_artifacts(client, run_id, cfg, outcome, ctx.figures)
    except Exception as exc:  # a figure must not turn a finished training into a failed trial
        log.warning("artifact logging failed for run %s: %s", run_id, exc)
        runs.set_tags(client, run_id, {"msreid.artifact_error": repr(exc)[:5000]})
    return final
