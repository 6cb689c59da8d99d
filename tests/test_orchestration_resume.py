"""--resume: exactly the recorded settings or one UserError listing the differences; trial keys
cover the whole effective config; a misspelled name is an error listing the resumable ones.

No Ray: every refusal happens before Ray starts (the parent run is recorded the way
run_benchmark records it).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from msreid.errors import UserError
from test_orchestration_benchmark import options


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from msreid.orchestration.datasets import synthetic_manifest

    return synthetic_manifest({"ids": 4, "cameras": 2, "tuples_per_id": 3, "height": 16,
                               "width": 32}, root=tmp_path_factory.mktemp("cache"))


def record_parent(opts, name: str) -> str:
    """What run_benchmark does up to the parent run (no Ray, no trials)."""
    from msreid.orchestration import benchmark as bm
    from msreid.tracking import runs
    from msreid.tracking.store import ensure_experiment

    suite = bm.load_benchmark_suite(opts)
    base, forced, _ = bm.prepare_trials(opts, suite, {"rgbnt100"})
    exp = ensure_experiment(opts.tracking_uri, opts.experiment)
    client = runs.client_for(opts.tracking_uri)
    manifests, prints = bm.resolve_manifests(opts)
    settings = bm.benchmark_settings(opts, suite, base, forced, prints)
    return bm.start_parent(opts, suite, client, exp, name, manifests, prints, settings)


def keys(opts) -> list[str]:
    from msreid.orchestration.benchmark import load_benchmark_suite, prepare_trials

    return [t.key for t in prepare_trials(opts, load_benchmark_suite(opts), {"rgbnt100"})[2]]


def test_trial_key_covers_set_and_seed_but_not_unrelated_suites(tmp_path, manifest):
    opts = options(tmp_path, manifest)
    base = keys(opts)
    assert len(base) == len(set(base)) == 6  # 3 distinct cells x 2 seeds
    assert keys(opts) == base  # stable
    # --set optim.epochs=1 changes what every trial trains: no key may survive.
    assert set(keys(replace(opts, overrides=("optim.epochs=1",)))).isdisjoint(base)
    # --set to the value the suite already sets changes nothing: same keys.
    assert keys(replace(opts, overrides=("optim.epochs=2",))) == base


def test_cells_with_equal_effective_configs_share_one_trial(tmp_path, manifest):
    from msreid.orchestration.benchmark import load_benchmark_suite, prepare_trials

    # Forcing 3 spectra and MSN makes every cell train the same model: 1 trial per seed feeding
    # all 4 cells (2 + 2 rows); before, they were 3 trials per seed with stale cell overrides.
    opts = options(tmp_path, manifest, overrides=("data.spectra=[rgb,nir,tir]", "loss.ablation=msn"))
    trials = prepare_trials(opts, load_benchmark_suite(opts), {"rgbnt100"})[2]
    assert len(trials) == 2
    assert [len(t.cells) for t in trials] == [4, 4]


def test_resume_with_other_settings_is_refused_listing_each(tmp_path, manifest):
    from msreid.orchestration.benchmark import run_benchmark

    record_parent(options(tmp_path, manifest), "mini-a")
    changed = options(tmp_path, manifest, resume="mini-a", overrides=("optim.epochs=1",),
                      seeds=(0, 1, 2))
    with pytest.raises(UserError) as err:
        run_benchmark(changed)
    text = str(err.value)
    assert "--resume mini-a" in text
    assert "preset.optim.epochs: 4 -> 1" in text  # smoke preset: 4 (the suite sets 2 per cell)
    assert 'set: {} -> {"optim.epochs": 1}' in text
    assert "seeds: [0, 1] -> [0, 1, 2]" in text
    assert "preset.optim.lr" not in text  # only what differs


def test_misspelled_resume_name_lists_the_resumable_ones(tmp_path, manifest):
    from msreid.orchestration.benchmark import run_benchmark

    record_parent(options(tmp_path, manifest), "mini-a")
    with pytest.raises(UserError, match=r"--resume mini-b: no benchmark .*resumable: mini-a \(RUNNING\)"):
        run_benchmark(options(tmp_path, manifest, resume="mini-b"))
