"""The spectrum matrix in MLflow: a trial's heatmap, the parent's mean +- std per cell over seeds,
and `msreid report` rebuilding it from the children alone. A local SQLite store in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from msreid.grid import load_suite, suite_to_dict
from msreid.tracking import cross_spectral, runs
from msreid.tracking.store import ensure_experiment

ROOT = Path(__file__).resolve().parents[1]
CELL = ["table3", "RGB-N-T MSN", "test_resnet"]
KEYS = ["r", "n", "rn"]


def _matrix(base: float) -> pd.DataFrame:
    """A 3 x 3 matrix whose mAP is base + 10 * query index + gallery index."""
    rows = [{"query": q, "gallery": g, "mAP": base + 10 * i + j, "R1": 50.0, "R5": 60.0,
             "R10": 70.0, "mINP": 5.0} for i, q in enumerate(KEYS) for j, g in enumerate(KEYS)]
    return pd.DataFrame(rows)


@pytest.fixture()
def benchmark(tmp_path):
    """A parent run with the smoke suite and two finished seeds of one cell (mAP base 20 and 24),
    plus a RUNNING child that must be ignored."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "t")
    client = runs.client_for(uri)
    parent, _ = runs.get_or_create_parent(client, exp, "b")
    suite = suite_to_dict(load_suite(ROOT / "experiments" / "grids" / "smoke.yaml"))
    runs.log_text(client, parent, json.dumps(suite), "suite.json")
    for seed, base, status in ((0, 20.0, "FINISHED"), (1, 24.0, "FINISHED"), (2, 90.0, "RUNNING")):
        child, _ = runs.get_or_create_child(client, exp, parent, f"k{seed}", f"s{seed}",
                                            tags={runs.TAG_CELLS: json.dumps([CELL]),
                                                  runs.TAG_SEED: str(seed)})
        csv = tmp_path / f"cross_spectral_{seed}" / "cross_spectral.csv"
        csv.parent.mkdir()
        _matrix(base).to_csv(csv, index=False)
        client.log_artifact(child, str(csv), "evaluation")
        client.log_metric(child, "test/mAP", 50.0, step=0)
        client.set_terminated(child, status)
    return uri, exp, client, parent


def test_trial_heatmap_is_a_png_of_the_matrix(tmp_path):
    csv = tmp_path / "cross_spectral.csv"
    _matrix(20.0).to_csv(csv, index=False)
    png = cross_spectral.trial_heatmap(csv, tmp_path / "h.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    assert cross_spectral.trial_heatmap(tmp_path / "absent.csv", tmp_path / "x.png") is None


def test_parent_gets_mean_and_std_over_seeds(benchmark):
    uri, exp, client, parent = benchmark
    per_seed = cross_spectral.log_parent_matrices(client, exp, parent)
    assert [len(v) for v in per_seed.values()] == [2]
    matrices = cross_spectral.summarize(per_seed)
    (cell,) = matrices
    assert cell == tuple(CELL)
    summary = matrices[cell].set_index(["query", "gallery"])
    # seeds 20 + x and 24 + x: mean 22 + x, sample std sqrt(2^2 + 2^2) = 2.83; RUNNING child ignored
    assert summary.loc[("rn", "n"), "mAP"] == 22.0 + 21 and summary.loc[("r", "r"), "mAP"] == 22.0
    assert set(summary["mAP_std"]) == {2.83} and set(summary["seeds"]) == {2}
    assert set(summary["R1_std"]) == {0.0}
    slug = "table3__RGB-N-T_MSN__test_resnet"
    arts = {a.path for a in client.list_artifacts(parent, "cross_spectral")}
    assert arts == {f"cross_spectral/{slug}.csv", f"cross_spectral/{slug}.png",
                    "cross_spectral/all.md"}
    md = cross_spectral.all_markdown(matrices)
    assert "| query \\ gallery | R | N | R+N |" in md
    assert "| R+N | 42.00 ± 2.83 | 43.00 ± 2.83 | 44.00 ± 2.83 |" in md


def test_report_rebuilds_the_matrices(benchmark, tmp_path, capsys):
    from msreid.cli import main

    uri, exp, client, parent = benchmark
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["report", "--experiment", "t", "--run", parent, "--tracking-uri", uri,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "**table3 / RGB-N-T MSN / test_resnet**: test mAP (%)" in printed
    assert "| R | 22.00 ± 2.83 | 23.00 ± 2.83 | 24.00 ± 2.83 |" in printed
    saved = pd.read_csv(out / "cross_spectral" / "table3__RGB-N-T_MSN__test_resnet.csv")
    assert saved["mAP"].tolist() == [22.0, 23.0, 24.0, 32.0, 33.0, 34.0, 42.0, 43.0, 44.0]


@pytest.mark.parametrize("treated, verdict", [((20.0, 24.0), "within the seed spread"),
                                              ((30.0, 31.0), "PASS"),
                                              ((10.0, 12.0), "no gain")])
def test_matrix_check_passes_only_above_the_seed_spread(treated, verdict):
    """_matrix(b): off-diagonal mean = (9b + 99 - (3b + 33)) / 6 = b + 11; full R+N cell b + 22.

    Baseline seeds b = 20, 21: off 31, 32 -> 31.5 +- 0.71. Treated 20, 24: 33 +- 2.83, +1.5 <
    spread sqrt(2.83^2 + 0.71^2) = 2.92 -> FAIL; treated 30, 31: +10 > 1.00 -> PASS."""
    from types import SimpleNamespace

    from msreid.grid import MatrixCheck

    suite = SimpleNamespace(matrix_checks=[MatrixCheck("rob", "drop", "msn")])
    per_cell = {("rob", "drop", "c"): [_matrix(b) for b in treated],
                ("rob", "msn", "c"): [_matrix(b) for b in (20.0, 21.0)]}
    ((ok, message),) = cross_spectral.run_matrix_checks(suite, per_cell)
    assert ok == (verdict == "PASS") and verdict in message
    if treated == (20.0, 24.0):
        assert ("mean off-diagonal mAP: drop 33.00 ± 2.83 vs msn 31.50 ± 0.71 (2 vs 2 seeds): "
                "+1.50, seed spread 2.92") in message
        assert "full R+N diagonal cell: 44.00 ± 2.83 vs 42.50 ± 0.71 = +1.50" in message
    one = {k: v[:1] for k, v in per_cell.items()}
    assert "needs >= 2 seeds" in cross_spectral.run_matrix_checks(suite, one)[0][1]
