"""experiments/tune_alpha.py end to end with the real fit, on a tiny configuration where alpha acts.

The tuner's default form of L_hsc (the authors' cosine, summed over the batch)
on tiny synthetic data (hard variant): test_resnet, 16 x 32 pixels, batch 4,
3 epochs, alpha over [1e-3, 10]. Checks
the three things the tuner promises:

1. a range-dependent curve: at one seed, training is deterministic, so
   different validation mAPs across alphas are alpha's doing (an inert term
   gives the same mAP to many decimals: issue 25's 0.52285-0.52290);
2. the answer with its uncertainty: the repeated alphas have 3 seeds, a mean
   and a standard deviation, and a verdict against the paper's 0.001;
3. the inert-range guard fires on eq. 5 with the batch mean (the paper's form
   with msreid's default reduction) before any run or trial exists.

About 3 minutes at load average ~20 on 2 cores (7 short trials, two at once); well under
that idle.
"""

from __future__ import annotations

import math

import pytest

TINY = {"ids": 10, "cameras": 3, "tuples_per_id": 4, "height": 16, "width": 32,
        "variant": "hard"}  # the easy variant's validation mAP is 1.0 whatever alpha
# a flat rate (no slow warm-up) so that 3 epochs train; 4 validation ids of 10
SET = ("optim.epochs=3", "optim.warmup_lr=0.001", "data.image_size=[16,32]", "data.batch_size=4",
       "data.val_ids=4", "run.missing_modality=false", "run.per_challenge=false",
       "run.ranking_queries=0")


def options(tmp_path, **kw):
    from msreid.orchestration.alpha import AlphaOptions
    from msreid.orchestration.datasets import synthetic_manifest

    manifest = synthetic_manifest(TINY, root=tmp_path / "cache")
    return AlphaOptions(data=(manifest,), overrides=SET, tracking_uri=f"sqlite:///{tmp_path}/m.db",
                        experiment="alpha-e2e", storage_path=str(tmp_path / "results"),
                        verbose=0, **kw)


def search_curves(client, parent: str) -> dict[float, dict[int, float]]:
    """alpha -> {epoch: val mAP in %} of every search trial (a child with searched values)."""
    from msreid.tracking import runs

    experiment_id = client.get_run(parent).info.experiment_id
    return {float(run.data.params["loss.alpha"]): {
        m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/mAP")}
        for run in runs.children(client, experiment_id, parent) if "msreid.searched" in run.data.tags}


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_tune_alpha_real_fit_curve_and_uncertainty(ray_session, tmp_path):
    from msreid.orchestration.alpha import run_alpha_search
    from msreid.tracking import runs

    out = run_alpha_search(options(tmp_path, num_samples=3, low=1e-3, high=10.0, seed=0,
                                   probe_steps=4, probe_batches=1, repeat_seeds=2, repeat_top=1))
    assert out.probe.high * out.probe.peak > 1.0  # at alpha = 10 the term dominates the gradient
    search = out.table[out.table["phase"] == "search"]
    assert len(search) == 3 and set(search["seed"]) == {0}
    client = runs.client_for(out.tracking_uri)
    # 1: alpha moves the model. On the per-epoch curves of every search trial, stopped ones too:
    # which trial ASHA stops depends on the order two concurrent trials reach a rung, and two
    # finished ones can share a best val mAP (7 queries: seen at 69.52 for 0.001 and 0.012,
    # whose curves part at epoch 1).
    curves = search_curves(client, out.parent_run_id)
    assert len(curves) == 3
    gaps = [abs(a[e] - b[e]) for a in curves.values() for b in curves.values() for e in a.keys() & b.keys()]
    assert max(gaps) > 0.1, curves  # in %: 1e-3 of mAP
    summary = out.summary[out.summary["seeds"] >= 3]  # 2: repeated alphas, 3 seeds each
    assert 0.001 in set(summary["alpha"]) and len(summary) == 2
    assert all(math.isfinite(s) for s in summary["val_std"])
    assert out.best["seeds"] == 3 and out.verdict["other"] is not None
    sentence = out.markdown.strip().splitlines()[-1]
    assert sentence.startswith(f"best alpha = {out.best['alpha']:.3g}: val mAP ")
    assert "+-" in sentence and ("significant" in sentence)
    parent = client.get_run(out.parent_run_id)
    assert parent.data.metrics["best/val/mAP_std"] == pytest.approx(out.best["val_std"])
    assert "alpha/map_vs_alpha.png" in {a.path for a in client.list_artifacts(
        out.parent_run_id, "alpha")}


def test_inert_guard_fires_on_the_paper_form_with_the_mean(tmp_path):
    from msreid.errors import UserError
    from msreid.orchestration.alpha import run_alpha_search

    # at initialisation: |grad(0.1 L_hsc)| / |grad(rest)| ~ 1e-5 on this data
    with pytest.raises(UserError, match="alpha cannot move the model over"):  # 3
        run_alpha_search(options(tmp_path, hsc_variant="paper", hsc_reduction="mean",
                                 probe_steps=0, probe_batches=2))
    assert not (tmp_path / "results").exists()
