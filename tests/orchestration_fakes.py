"""A stand-in for msreid.train.fit.fit, for orchestration tests only (Tune, MLflow, resume).

It trains nothing: the test metrics are a formula of the config that a test
can compute by hand, per-epoch reports go through the Train callbacks exactly
as fit's local mode calls them, and every call leaves a marker file so a test
can count how often each trial really trained. The end-to-end tests with the
real fit are in tests/test_orchestration_e2e.py.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

from msreid.train.fit import TrainOutcome

BONUS = {"one_stream": 0.0, "msn": 0.0, "msn+hsc": 0.01, "msn+caid": 0.02, "hamnet": 0.03}


def expected_map(n_spectra: int, ablation: str, seed: int) -> float:
    """The fake's test mAP (a fraction): 0.2 + 0.1 per spectrum + loss bonus + 0.002 per seed."""
    return 0.2 + 0.1 * n_spectra + BONUS[ablation] + 0.002 * seed


def alpha_penalty(alpha: float) -> float:
    """0.05 per decade away from alpha = 0.001."""
    import math

    return 0.05 * abs(math.log10(alpha) + 3)


def fit(cfg, *, storage_path, name, callbacks=None, max_failures=0, ray_address=None):
    calls = Path(storage_path) / "calls"
    calls.mkdir(parents=True, exist_ok=True)
    (calls / f"{name}.{uuid.uuid4().hex}").write_text("")
    hang = Path(storage_path).parent / "hang_trials"  # <storage>/<benchmark>/hang_trials
    first_call = len(list(calls.glob(f"{name}.*"))) == 1
    while first_call and hang.exists() and name in hang.read_text().split():
        time.sleep(0.5)  # the first attempt hangs until the test kills the driver
    n_spectra = len(cfg.data.spectra) or 3  # empty = all of the (RGBNT100-shaped) manifest
    score = expected_map(n_spectra, cfg.loss.ablation, cfg.run.seed)
    if cfg.loss.alpha is not None:  # alpha searches: best at the paper's 0.001
        score -= alpha_penalty(cfg.loss.alpha)
    history = []
    for epoch in range(cfg.optim.epochs):
        entry = {"epoch": epoch, "lr": 0.001, "train/loss": 1.0 / (epoch + 1),
                 "val/mAP": score * (epoch + 1) / cfg.optim.epochs}
        history.append(entry)
        for cb in callbacks or []:
            cb.after_report(run_context=None, metrics=[dict(entry)], checkpoint=None)
    metrics = {"test/mAP": score, "test/R1": score + 0.1, "test/R5": score + 0.15,
               "test/R10": score + 0.2, "test/mINP": score / 2, "best_val/mAP": score,
               "best_epoch": cfg.optim.epochs - 1}
    return TrainOutcome(metrics=metrics, history=history, checkpoint_path="", artifacts_dir="")


def fit_with_checkpoint(cfg, *, storage_path, name, callbacks=None, max_failures=0, ray_address=None):
    """``fit`` plus what the real fit leaves on disk for tracking: a checkpoint directory (a
    placeholder file, never loaded) and a missing-modality table of fractions: the full set of
    spectra scores the test mAP, each single spectrum half of it."""
    out = fit(cfg, storage_path=storage_path, name=name, callbacks=callbacks,
              max_failures=max_failures, ray_address=ray_address)
    run_dir = Path(storage_path) / name
    checkpoint, artifacts = run_dir / "checkpoint_final", run_dir / "artifacts"
    checkpoint.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    (checkpoint / "best_model.pt").write_text("placeholder")
    score = out.metrics["test/mAP"]
    rows = ["subset,spectra,mAP,R1,num_valid", f"all,all,{score},{score + 0.1},4",
            f"half,one,{score / 2},{score / 2 + 0.1},4"]
    (artifacts / "missing_modality.csv").write_text("\n".join(rows) + "\n")
    return dataclasses.replace(out, checkpoint_path=str(checkpoint), artifacts_dir=str(artifacts))
