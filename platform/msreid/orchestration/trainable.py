"""The Tune function trainable: one trial = one ``msreid.train.run.fit`` + one MLflow child run.

With Ray Train V2, ``Tuner(TorchTrainer)`` is gone; a Tune *function* builds
and fits the TorchTrainer (inside ``fit``) and
``ray.tune.integration.ray_train.TuneReportCallback`` forwards the training
workers' per-epoch reports to Tune (progress, ASHA). A second Train callback
logs the same per-epoch metrics to the trial's MLflow child run as they come
(``step`` = epoch), so early-stopped trials keep their curves.

A trial's ``config`` is ``{"trial": {key, dataset, seed, overrides, cells}}``
plus, for searches, dotted config keys at the top level (``"loss.alpha"``)
sampled by Tune. ``ctx`` (passed with ``tune.with_parameters``) holds what
all trials share: the base config, manifests, tracking URI, parent run.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
from typing import Any, Callable

from ray import tune
from ray.train.v2.api.callback import UserCallback

from msreid.tracking import runs as R

log = logging.getLogger(__name__)

FINAL_KEYS = ("test/mAP", "test/R1", "test/R5", "test/R10", "test/mINP")


class MlflowEpochCallback(UserCallback):
    """Ray Train callback (runs in the Train controller): log each report to an MLflow run."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        """Log rank 0's metrics (already reduced across ranks by the loop) at step = epoch."""
        if not metrics:
            return
        first = metrics[0]
        step = int(first.get("epoch", first.get("training_iteration", 0)) or 0)
        try:
            R.log_metrics(R.client_for(self.tracking_uri), self.run_id, first, step=step)
        except Exception as exc:  # tracking must never kill a training run
            log.warning("MLflow per-epoch logging failed: %s", exc)


@contextlib.contextmanager
def local_mode_under_tune(local: bool):
    """Let a local-mode (num_workers=0) training report while inside a Tune trial.

    Ray 2.60's ``ray.train.report`` / ``get_checkpoint`` raise DeprecationWarning
    whenever they run in a Tune session, which is where a local-mode training
    runs (in the trial's own process). Local mode keeps the last report in
    process and never calls Train callbacks; ``fit`` calls them by hand
    (``TuneReportCallback`` included, which is how Tune still gets the epochs).
    So for the duration of ``fit`` the session check answers False. Worker mode
    (num_workers >= 1) reports from separate processes and is left alone.
    """
    if not local:
        yield
        return
    from ray.tune.trainable import trainable_fn_utils

    original = trainable_fn_utils._in_tune_session
    trainable_fn_utils._in_tune_session = lambda: False
    try:
        yield
    finally:
        trainable_fn_utils._in_tune_session = original


def import_callable(path: str | Callable) -> Callable:
    """``"package.module:function"`` (or a callable, returned as is) -> the function."""
    if callable(path):
        return path
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def trial_config(ctx: dict, config: dict):
    """The TrainConfig of a trial: base preset + cell overrides + searched keys + data + seed."""
    from msreid.config import config_from_dict

    trial = config["trial"]
    flat = dict(ctx["base_config"])
    flat.update(trial["overrides"])
    flat.update({k: v for k, v in config.items() if k != "trial"})  # Tune-sampled keys
    flat["data.manifest"] = ctx["manifests"][trial["dataset"]]
    flat["run.seed"] = int(trial["seed"])
    flat.update(ctx.get("force", {}))
    return config_from_dict(flat)


def _trial_key(config: dict) -> str:
    key = config["trial"].get("key")
    if key:
        return key
    return f"{config['trial'].get('prefix', 'trial')}-{tune.get_context().get_trial_id()}"


def _trial_tags(ctx: dict, config: dict, key: str) -> dict[str, str]:
    trial = config["trial"]
    searched = {k: v for k, v in config.items() if k != "trial"}
    tags = {R.TAG_BENCHMARK: ctx["benchmark"], R.TAG_CELLS: json.dumps(trial.get("cells", [])),
            R.TAG_SEED: str(trial["seed"]), "msreid.dataset": trial["dataset"],
            "msreid.tune_trial_id": tune.get_context().get_trial_id() or "",
            "msreid.selection": "test/* = test set, checkpoint selected by best val/mAP"}
    if searched:
        tags["msreid.searched"] = json.dumps(searched, sort_keys=True)
    if ctx.get("git_commit"):
        tags["mlflow.source.git.commit"] = ctx["git_commit"]
    fingerprint = ctx.get("fingerprints", {}).get(trial["dataset"])
    if fingerprint:
        tags["msreid.manifest_fingerprint"] = fingerprint
    return tags


def _reuse_finished(client, run_id: str) -> dict | None:
    """Final metrics of a child run that already FINISHED (driver died after it), else None."""
    run = client.get_run(run_id)
    if run.info.status == "FINISHED" and "test/mAP" in run.data.metrics:
        return dict(run.data.metrics)
    return None


def run_trial(config: dict, ctx: dict) -> None:
    """Tune function trainable (see the module docstring)."""
    key = _trial_key(config)
    trial = config["trial"]
    client = R.client_for(ctx["tracking_uri"])
    searched = {k: v for k, v in config.items() if k != "trial"}
    label = trial.get("label") or ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in searched.items()) or key
    run_id, _ = R.get_or_create_child(client, ctx["experiment_id"], ctx["parent_run_id"], key,
                                      run_name=label, tags=_trial_tags(ctx, config, key))
    done = _reuse_finished(client, run_id)
    if done is not None:  # finished in MLflow but not in Tune's state: do not train again
        tune.report({**done, "mlflow_run_id": run_id, "reused": 1})
        return
    from msreid.config import config_to_dict
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(ctx, config)
    R.log_params(client, run_id, config_to_dict(cfg))
    fit = import_callable(ctx.get("fit", "msreid.train.run:fit"))
    callbacks = [TuneReportCallback(), MlflowEpochCallback(ctx["tracking_uri"], run_id)]
    try:
        with local_mode_under_tune(cfg.run.num_workers == 0):
            outcome = fit(cfg, storage_path=ctx["train_storage"], name=key, callbacks=callbacks,
                          max_failures=ctx.get("train_max_failures", 0))
    except BaseException as exc:
        R.set_tags(client, run_id, {"msreid.error": repr(exc)[:5000]})
        client.set_terminated(run_id, "FAILED")
        raise
    final = log_outcome(client, run_id, cfg, outcome, ctx)
    client.set_terminated(run_id, "FINISHED")
    tune.report({**final, "mlflow_run_id": run_id})


def final_metrics(outcome) -> dict[str, float]:
    """The numeric final metrics of a TrainOutcome (test set from the selected checkpoint, best val)."""
    return {k: float(v) for k, v in outcome.metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def log_outcome(client, run_id: str, cfg, outcome, ctx: dict) -> dict[str, float]:
    """Log a finished trial: history (epochs not logged live), final metrics, artifacts, figures."""
    from msreid.tracking.trial_logging import log_history, log_trial_artifacts

    log_history(client, run_id, outcome.history)
    final = final_metrics(outcome)
    R.log_metrics(client, run_id, final, step=int(final.get("best_epoch", 0)))
    R.set_tags(client, run_id, {"msreid.best_epoch": final.get("best_epoch", ""),
                                "msreid.checkpoint": str(outcome.checkpoint_path or "")})
    try:
        log_trial_artifacts(client, run_id, cfg, outcome, ctx.get("figures", {}))
    except Exception as exc:  # a figure must not turn a finished training into a failed trial
        log.warning("artifact logging failed for run %s: %s", run_id, exc)
        R.set_tags(client, run_id, {"msreid.artifact_error": repr(exc)[:5000]})
    return final
