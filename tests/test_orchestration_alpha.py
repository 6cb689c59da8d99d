"""experiments/tune_alpha.py's search at a tiny size with a stand-in fit: the probe before any run,
the sampling range, the paper's alpha evaluated first, ASHA on validation mAP, the repeats with
more seeds, MLflow children and the parent's summary.

The stand-in fit (tests/orchestration_fakes.py) scores hamnet on the 3 spectra at seed s as
0.2 + 0.1 * 3 + 0.03 + 0.002 * s = 0.53 + 0.002 s, minus 0.05 per decade away from alpha = 0.001,
so the best alpha is 0.001 by construction, and its seeds 3, 4, 5 give 0.536, 0.538, 0.540
(mean 0.538, sample std 0.002). The real fit runs under Tune in tests/test_alpha_e2e.py.
"""

from __future__ import annotations

import pytest
import ray.cloudpickle

import orchestration_fakes

ray.cloudpickle.register_pickle_by_value(orchestration_fakes)

TINY = {"ids": 4, "cameras": 2, "tuples_per_id": 3, "height": 16, "width": 32}


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_tune_alpha_tiny(ray_session, tmp_path, capsys):
    from msreid.orchestration.alpha import AlphaOptions, run_alpha_search
    from msreid.orchestration.datasets import synthetic_manifest
    from msreid.tracking import runs

    manifest = synthetic_manifest(TINY, root=tmp_path / "cache")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = run_alpha_search(AlphaOptions(
        data=(manifest,), num_samples=3,
        overrides=("optim.epochs=4", "data.image_size=[16,32]", "data.batch_size=4"),
        seed=3, grace_period=4, reduction_factor=2, tolerance=0.001, probe_steps=0,
        probe_batches=1, max_concurrent_trials=2, tracking_uri=uri, experiment="alpha",
        storage_path=str(tmp_path / "results"), fit=orchestration_fakes.fit, verbose=0))
    table = out.table
    search, repeats = table[table["phase"] == "search"], table[table["phase"] == "repeat"]
    assert len(search) == 3 and set(search["seed"]) == {3}
    assert 0.001 in set(search["alpha"])  # the paper's value, through points_to_evaluate
    assert all(1e-4 <= a <= 1e-1 for a in search["alpha"])
    # grace_period = epochs: no rung before the last epoch, nothing stopped (the order in which
    # two concurrent trials reach a rung is not fixed; tests/test_orchestration_asha.py and the
    # real-fit test cover stopping)
    assert (table["status"] == "finished").all() and (table["epochs"] == 4).all()
    for row in table.to_dict("records"):  # val of a trial = its penalised score
        score = orchestration_fakes.expected_map(3, "hamnet", row["seed"])
        assert row["val/mAP"] == pytest.approx(score - orchestration_fakes.alpha_penalty(
            row["alpha"]))
        assert row["test/mAP"] == pytest.approx(row["val/mAP"])
    # Repeats: the best finished non-paper alpha of the search and the paper's, seeds 4 and 5.
    runner_up = search[search["alpha"] != 0.001].sort_values("val/mAP")["alpha"].iloc[-1]
    assert sorted(zip(repeats["alpha"], repeats["seed"])) == sorted(
        [(a, s) for a in (0.001, runner_up) for s in (4, 5)])
    assert (repeats["status"] == "finished").all()  # no early stopping in the repeats
    # The answer: 0.001 with mean 0.538 +- 0.002 over seeds 3, 4, 5, against the runner-up.
    assert out.best["alpha"] == 0.001 and out.best["seeds"] == 3
    assert out.best["val_mean"] == pytest.approx(0.538)
    assert out.best["val_std"] == pytest.approx(0.002)
    gap = orchestration_fakes.alpha_penalty(runner_up)
    assert out.verdict["other"]["alpha"] == runner_up
    assert out.verdict["gap"] == pytest.approx(gap)
    assert out.verdict["margin"] == pytest.approx(1 / out.probe.num_val_queries)
    assert out.verdict["significant"] == (gap > max(out.verdict["margin"], 0.004))
    # MLflow: one child per trial under the parent, stopped ones KILLED; the parent's summary.
    client = runs.client_for(uri)
    exp = client.get_experiment_by_name("alpha").experiment_id
    kids = runs.children(client, exp, out.parent_run_id)
    assert len(kids) == len(table) == 7
    assert {k.info.status for k in kids} == {"FINISHED"}
    parent = client.get_run(out.parent_run_id)
    assert float(parent.data.params["best_alpha"]) == 0.001
    assert parent.data.metrics["best/val/mAP"] == pytest.approx(0.538)
    assert parent.data.metrics["best/val/mAP_std"] == pytest.approx(0.002)
    assert parent.data.metrics["reference_alpha"] == pytest.approx(runner_up)
    assert "best alpha = 0.001: val mAP 53.8 +- 0.2 (3 seeds)" in parent.data.tags[
        "msreid.alpha_verdict"]
    arts = {a.path for a in client.list_artifacts(out.parent_run_id, "alpha")}
    assert arts == {"alpha/alpha_search.md", "alpha/alpha_search.csv", "alpha/alpha_per_value.csv",
                    "alpha/map_vs_alpha.png", "alpha/probe.md"}
    assert "best alpha = 0.001" in out.markdown
    assert "Can alpha matter?" in capsys.readouterr().out


def test_inert_range_stops_before_any_run(tmp_path, capsys):
    """eq. 5 with the batch mean at initialisation: |grad(0.1 L_hsc)| is ~1e-7 of the rest."""
    from msreid.errors import UserError
    from msreid.orchestration.alpha import AlphaOptions, run_alpha_search
    from msreid.orchestration.datasets import synthetic_manifest
    from msreid.tracking import runs

    manifest = synthetic_manifest(TINY, root=tmp_path / "cache")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    opts = AlphaOptions(data=(manifest,), overrides=("data.image_size=[16,32]", "data.batch_size=4",),
                        hsc_variant="paper", hsc_reduction="mean", probe_steps=0,
                        tracking_uri=uri, experiment="alpha", storage_path=str(tmp_path / "r"),
                        fit=orchestration_fakes.fit)
    with pytest.raises(UserError) as err:
        run_alpha_search(opts)
    message = str(err.value)
    assert "alpha cannot move the model over [0.0001, 0.1]" in message
    for hint in ("--hsc-reduction sum", "--ablation hamnet_official", "--allow-inert", "--high"):
        assert hint in message
    client = runs.client_for(uri)
    exp = client.get_experiment_by_name("alpha").experiment_id
    assert client.search_runs([exp]) == []  # stopped before the parent run
    assert not (tmp_path / "r").exists()  # and before Tune


def test_probe_verdict_by_hand():
    from msreid.loss_gradients import RatioPoint
    from msreid.orchestration.alpha_probe import ProbeResult, inert_message, probe_markdown

    # r at two steps on two batches; the largest is 1.5e-5, so alpha = 0.1 gives 1.5e-6 < 1e-4
    points = (RatioPoint(0, (2e-6, 1e-6)), RatioPoint(20, (1.5e-5, 1.2e-5)))
    result = ProbeResult(points, low=1e-4, high=0.1, threshold=1e-4, num_val_queries=53,
                         seconds=1.0)
    assert result.peak == 1.5e-5 and result.inert
    assert result.alpha_needed() == pytest.approx(1e-4 / 1.5e-5)  # 6.67
    text = inert_message(result, "eq. 5, mean")
    assert "at most 1.50e-06, at alpha = 0.1" in text and "alpha >= 6.7 (--high)" in text
    assert "| 20 | 1.20e-09 - 1.50e-09 | 1.20e-06 - 1.50e-06 |" in probe_markdown(result, "x")
    wide = ProbeResult(points, low=1e-4, high=10.0, threshold=1e-4, num_val_queries=53,
                       seconds=1.0)
    assert not wide.inert  # 10 * 1.5e-5 = 1.5e-4
