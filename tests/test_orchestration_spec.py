"""The typed trial spec through Tune and the one merge of a trial's config ("as trained").

A ``TrialSpec`` crosses Tune's param space as a plain dict and comes back whole or not at all;
``effective_config`` is the config every consumer sees: the trial trains it, the benchmark hashes
it into the trial key (what --resume reuses) and reads the tables' titles from it, the alpha
search probes it. No Ray: the expected values are written out by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from msreid.config import config_to_dict, load_config
from msreid.errors import UserError
from msreid.grid import TrialSpec, trial_key
from msreid.orchestration.trainable import effective_config, trial_spec

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "presets" / "smoke.yaml"

SPEC = {"key": "rgbnt100-0123456789-s1", "dataset": "rgbnt100", "seed": 1,
        "overrides": {"loss.ablation": "msn"}, "cells": [["table3", "RGB-N-T MSN", "tiny"]],
        "label": "table3 | RGB-N-T MSN | tiny | seed 1", "prefix": "trial", "searched": {}}


def test_a_spec_crosses_tune_as_a_dict_and_back():
    spec = TrialSpec.from_dict(SPEC)
    assert spec.cells == (("table3", "RGB-N-T MSN", "tiny"),)
    assert (spec.key, spec.dataset, spec.seed) == ("rgbnt100-0123456789-s1", "rgbnt100", 1)
    assert spec.to_dict() == SPEC
    assert trial_spec({"trial": SPEC}) == spec


def test_a_spec_with_a_missing_or_unknown_key_is_refused_naming_them():
    broken = {k: v for k, v in SPEC.items() if k != "seed"} | {"loss.alpha": 0.01}
    with pytest.raises(UserError, match=r"missing key\(s\) \['seed'\] and unknown key\(s\) "
                                        r"\['loss.alpha'\]"):
        TrialSpec.from_dict(broken)
    # A searched key beside the spec (the old shape) would be silently lost: refused.
    with pytest.raises(UserError, match=r"keys \['loss.alpha', 'trial'\], expected only 'trial'"):
        trial_spec({"trial": SPEC, "loss.alpha": 0.01})


def test_effective_config_merges_in_one_order_with_data_and_seed():
    """preset < overrides < searched < data and seed < forced, by hand on the smoke preset
    (optim.lr 1e-3, optim.epochs 4, model.backbone test_resnet)."""
    base = config_to_dict(load_config(SMOKE))
    spec = TrialSpec(key="", dataset="rgbnt100", seed=3, prefix="alpha",
                     overrides={"optim.epochs": 2, "optim.lr": 0.5, "loss.ablation": "msn"},
                     searched={"optim.lr": 0.01})
    cfg = effective_config(base, spec, "/data/rgbnt100", {"optim.epochs": 1})
    assert cfg.data.manifest == "/data/rgbnt100"  # what fit's reuse check compares
    assert cfg.run.seed == 3
    assert cfg.optim.epochs == 1  # forced over the spec's override
    assert cfg.optim.lr == 0.01  # searched over the spec's override
    assert cfg.loss.ablation == "msn"
    assert cfg.model.backbone == "test_resnet"  # the preset's


@pytest.mark.parametrize("forced", [{"run.seed": 7}, {"data.manifest": "/elsewhere"},
                                    {"optim.lr": 0.2}])
def test_forcing_what_the_spec_decides_is_refused(forced):
    """Every trial would train the forced value while its key, tags and tables name the spec's."""
    spec = TrialSpec(key="", dataset="rgbnt100", seed=3, overrides={}, searched={"optim.lr": 0.01})
    (key,) = forced
    with pytest.raises(UserError, match=rf"--set {key}: each trial sets {key} itself"):
        effective_config(config_to_dict(load_config(SMOKE)), spec, "/data/rgbnt100", forced)


def test_the_benchmark_key_hashes_the_trained_config_with_its_seed(tmp_path):
    """The key (what --resume and the MLflow child look-up reuse) is the dataset, the hash of the
    trained config without the manifest (the data is named by dataset + fingerprint) and the
    seed; the reference config is merged by hand from the suite of test_orchestration_benchmark."""
    from msreid.orchestration.benchmark import load_benchmark_suite, prepare_trials
    from test_orchestration_benchmark import options

    opts = options(tmp_path, "/data/rgbnt100")
    trials = prepare_trials(opts, load_benchmark_suite(opts), {"rgbnt100"})[2]
    one_stream = [t for t in trials if t.cells[0] == ("table3", "RGB one-stream", "tiny")]
    assert [t.seed for t in one_stream] == [0, 1]
    for t in one_stream:
        by_hand = {**config_to_dict(load_config(SMOKE)), "model.backbone": "test_resnet",
                   "optim.epochs": 2, "data.spectra": ["rgb"], "loss.ablation": "one_stream",
                   "run.seed": t.seed}
        del by_hand["data.manifest"]
        assert t.key == trial_key("rgbnt100", by_hand, t.seed)
    # run.seed is inside the hash, not only in the -s<seed> suffix
    assert one_stream[0].key.split("-")[1] != one_stream[1].key.split("-")[1]
    with pytest.raises(UserError, match="--set run.seed: each trial sets run.seed itself"):
        prepare_trials(options(tmp_path, "/m", overrides=("run.seed=7",)),
                       load_benchmark_suite(opts), {"rgbnt100"})


def test_tune_alpha_refuses_to_force_alpha_or_the_seed():
    from msreid.orchestration.alpha import AlphaOptions, base_config

    for flag in ("loss.alpha=0.5", "run.seed=2"):
        with pytest.raises(UserError, match=f"--set {flag.split('=')[0]}: each trial sets"):
            base_config(AlphaOptions(overrides=(flag,)))
