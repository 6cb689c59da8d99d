"""experiments/selection_rules.py run as docs/TRAINING.md shows, on a hand-made MLflow store."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from msreid.tracking import runs

ROOT = Path(__file__).resolve().parents[1]
CELL = ["table3", "RGB", "R50"]
# per seed: val/mAP (%) and test_curve/mAP (fraction) at epochs 0..3; 10 validation queries
TRIALS = {0: ([50, 60, 55, 40], [0.20, 0.30, 0.25, 0.10]),
          1: ([50, 52, 70, 65], [0.10, 0.20, 0.30, 0.32]),
          2: ([10, 20, 30, 80], [0.10, 0.10, 0.10, 0.40])}


def _store(path: Path) -> str:
    uri = f"sqlite:///{path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("msreid-benchmark")
    parent, _ = runs.get_or_create_parent(client, exp, "bench")
    for seed, (val, test) in TRIALS.items():
        rid, _ = runs.get_or_create_child(client, exp, parent, f"k{seed}", f"s{seed}", tags={
            runs.TAG_CELLS: json.dumps([CELL]), runs.TAG_SEED: str(seed),
            runs.TAG_UNITS: "percent"})
        for epoch, (v, t) in enumerate(zip(val, test)):
            runs.log_metrics(client, rid, {"val/mAP": v, "test_curve/mAP": t}, step=epoch)
        runs.log_metrics(client, rid, {"selection/val_queries": 10})
        client.set_terminated(rid, "FINISHED")
    return uri


def _run(uri: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    return subprocess.run([sys.executable, "experiments/selection_rules.py", "bench",
                           "--tracking-uri", uri], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.timeout(120)
def test_both_rules_on_the_same_trials(tmp_path):
    uri = _store(tmp_path)
    out = _run(uri)
    # best: epochs 1, 2, 3 -> test 30, 30, 40: mean 33.3, std sqrt((2 x 3.33^2 + 6.67^2) / 2) = 5.8
    # latest_near_best (within 10 points): epochs 2, 3, 3 -> 25, 32, 40: 32.3 ± 7.5
    # within noise: seed 0 (60 vs 55) and seed 1 (70 vs 65) are 5 < 10 points apart; seed 2 not
    assert "| table3 / RGB / R50 | best | 33.3 ± 5.8 | 1, 2, 3 | 2/3 |" in out
    assert "| table3 / RGB / R50 | latest_near_best | 32.3 ± 7.5 | 2, 3, 3 | 2/3 |" in out
    assert "best: mean seed std over 1 cells 5.77 points" in out
    assert "latest_near_best: mean seed std over 1 cells 7.51 points" in out
    # run.eval_every=2 validates epochs 1 and 3 only: both rules pick 1, 3, 3 -> 30, 32, 40
    # (in this process: a second interpreter would import torch and MLflow again)
    spec = importlib.util.spec_from_file_location("selection_rules",
                                                  ROOT / "experiments" / "selection_rules.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    every2 = script.report(script.load_trials(uri, "msreid-benchmark", "bench"), every=2)
    for rule in ("best", "latest_near_best"):
        assert f"| table3 / RGB / R50 | {rule} | 34.0 ± 5.3 | 1, 3, 3 | 0/3 |" in every2
