"""experiments/tune_alpha.py's search at a tiny size: sampling range, the paper's alpha
evaluated first, ASHA on validation mAP, MLflow children and the parent's summary.

The stand-in fit (tests/orchestration_fakes.py) scores hamnet on the 3 spectra at seed 3
as 0.2 + 0.1 * 3 + 0.03 + 0.002 * 3 = 0.536, minus 0.05 per decade away from alpha = 0.001, so the
best alpha is 0.001 by construction and ASHA has worse trials to cut.
The real fit runs under Tune in tests/test_orchestration_e2e.py.
"""

from __future__ import annotations

import math

import pytest
import ray.cloudpickle

import orchestration_fakes

ray.cloudpickle.register_pickle_by_value(orchestration_fakes)


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_tune_alpha_tiny(ray_session, tmp_path, capsys):
    from msreid.orchestration.alpha import AlphaOptions, run_alpha_search
    from msreid.orchestration.datasets import synthetic_manifest
    from msreid.tracking import runs

    manifest = synthetic_manifest({"ids": 4, "cameras": 2, "tuples_per_id": 3, "height": 16,
                                   "width": 32}, root=tmp_path / "cache")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = run_alpha_search(AlphaOptions(
        data=(manifest,), overrides=("optim.epochs=4",), num_samples=3, seed=3,
        grace_period=1, reduction_factor=2, max_concurrent_trials=2,
        trial_resources=({"CPU": 1},), tracking_uri=uri, experiment="alpha",
        storage_path=str(tmp_path / "results"), fit=orchestration_fakes.fit, verbose=0))
    table = out.table
    assert len(table) == 3
    assert 0.001 in set(table["alpha"])  # the paper's value, through points_to_evaluate
    assert all(1e-4 <= a <= 1e-1 for a in table["alpha"])
    # Best on validation: alpha = 0.001 with val mAP 0.536, and that trial's test metrics.
    expected = 0.536
    assert orchestration_fakes.expected_map(3, "hamnet", 3) == pytest.approx(expected)
    assert out.best["alpha"] == 0.001 and out.best["status"] == "finished"
    assert out.best["val/mAP"] == pytest.approx(expected)
    assert out.best["test/mAP"] == pytest.approx(expected)
    for row in table.to_dict("records"):
        if row["status"] == "finished":  # val of a finished trial = its penalised score
            assert row["val/mAP"] == pytest.approx(
                expected - orchestration_fakes.alpha_penalty(row["alpha"]))
        else:
            assert row["status"] == "stopped (ASHA)" and row["epochs"] < 4
            assert math.isnan(row["test/mAP"])
    # MLflow: one child per trial under the parent, stopped ones KILLED; the parent's summary.
    client = runs.client_for(uri)
    exp = client.get_experiment_by_name("alpha").experiment_id
    kids = runs.children(client, exp, out.parent_run_id)
    assert len(kids) == 3
    status = {float(k.data.params["loss.alpha"]): k.info.status for k in kids}
    for row in table.to_dict("records"):
        want = "FINISHED" if row["status"] == "finished" else "KILLED"
        match = [s for a, s in status.items() if math.isclose(a, row["alpha"], rel_tol=1e-9)]
        assert match == [want]
    parent = client.get_run(out.parent_run_id)
    assert float(parent.data.params["best_alpha"]) == 0.001
    assert parent.data.metrics["best/test/mAP"] == pytest.approx(expected)
    arts = {a.path for a in client.list_artifacts(out.parent_run_id, "alpha")}
    assert arts == {"alpha/alpha_search.md", "alpha/alpha_search.csv", "alpha/map_vs_alpha.png"}
    assert "best alpha = 0.001" in out.markdown
