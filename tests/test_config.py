"""msreid.config: presets, overrides, flat dicts and one clear UserError per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from msreid.config import (
    TrainConfig,
    batch_params,
    changed_settings,
    check_against_manifest,
    config_from_dict,
    config_to_dict,
    load_config,
    loss_kwargs,
    replace_dotted,
)
from msreid.errors import UserError

PRESETS = Path(__file__).resolve().parents[1] / "experiments" / "presets"


def test_paper_preset_has_the_papers_hyper_parameters():
    cfg = load_config(PRESETS / "paper.yaml")
    # "Adam ... batch size of 16 ... 10 epochs linearly increasing the learning rate
    # from 3.5e-5 to 3.5e-4 ... decayed ... at 40-th epoch and 70-th ... 120 epochs"
    assert (cfg.optim.optimizer, cfg.data.batch_size, cfg.data.batch_mode) == ("adam", 16, "uniform")
    assert (cfg.optim.warmup_epochs, cfg.optim.warmup_lr, cfg.optim.lr) == (10, 3.5e-5, 3.5e-4)
    assert (cfg.optim.milestones, cfg.optim.gamma, cfg.optim.epochs) == ((40, 70), 0.1, 120)
    assert cfg.optim.weight_decay == 0.0 and cfg.loss.alpha == 0.001
    assert loss_kwargs(cfg.loss)["hsc_alpha"] == 0.001


def test_official_preset_uses_pk_8x4_triplet_and_weight_decay():
    cfg = load_config(PRESETS / "official.yaml")
    assert (cfg.data.batch_mode, cfg.data.P, cfg.data.K, cfg.data.batch_size) == ("pk", 8, 4, 32)
    assert cfg.optim.weight_decay == 5e-4
    assert loss_kwargs(cfg.loss)["triplet_margin"] == 0.3


def test_smoke_preset_is_tiny():
    cfg = load_config(PRESETS / "smoke.yaml")
    assert cfg.model.backbone.startswith("test_") and cfg.data.image_size == (64, 128)
    assert cfg.optim.epochs <= 5


def test_overrides_are_yaml_values_on_dotted_keys():
    cfg = load_config(PRESETS / "paper.yaml", ["loss.alpha=0.01", "data.spectra=[rgb, nir]",
                                               "data.image_size=[32, 64]", "run.use_gpu=true",
                                               "optim.milestones=[5]"])
    assert cfg.loss.alpha == 0.01 and cfg.data.spectra == ("rgb", "nir")
    assert cfg.data.image_size == (32, 64) and cfg.run.use_gpu is True
    assert cfg.optim.milestones == (5,)
    assert cfg.optim.epochs == 120  # untouched keys keep the preset's values


def test_flat_dict_round_trip_and_replace_dotted():
    cfg = load_config(PRESETS / "official.yaml")
    flat = config_to_dict(cfg)
    assert flat["data.P"] == 8 and flat["optim.milestones"] == [40, 70]
    assert config_from_dict(flat) == cfg
    changed = replace_dotted(cfg, {"loss.alpha": 0.5, "data.K": 2, "data.batch_size": 16})
    assert (changed.loss.alpha, changed.data.K, changed.data.batch_size) == (0.5, 2, 16)
    assert cfg.loss.alpha == 0.001  # frozen original untouched


def test_defaults_build_without_a_file():
    assert load_config(None) == TrainConfig()


@pytest.mark.parametrize("override, words", [
    ("data.batchsize=8", ["data.batchsize", "data.batch_size"]),  # unknown key lists valid ones
    ("modell.backbone=x", ["modell", "data, model, loss, optim, run"]),
    ("data.batch_size=big", ["data.batch_size", "'big'", "integer"]),
    ("data.flip_prob=yes", ["data.flip_prob", "number"]),
    ("run.use_gpu=1", ["run.use_gpu", "true or false"]),
    ("data.batch_mode=random", ["data.batch_mode", "uniform, pk"]),
    ("model.head=shared", ["model.head='shared' is not valid: use one of paper, official"]),
    ("loss.hsc_reduction=max", ["loss.hsc_reduction='max': use mean or sum (or null for the "
                                "ablation's)"]),
    ("loss.ablation=hamnett", ["loss.ablation", "hamnett", "msn+hsc"]),
    ("run.precision=fp8", ["run.precision", "bf16"]),
    ("data.spectra=[rgb, uv]", ["data.spectra", "rgb, nir, tir"]),
    ("data.flip_prob=1.5", ["data.flip_prob", "[0, 1]"]),
    ("data.image_size=[64]", ["data.image_size", "2 values"]),
    ("data.decode_cpus=0", ["data.decode_cpus=0.0", "> 0"]),
    ("noequals", ["noequals", "section.key=value"]),
])
def test_bad_overrides_are_one_user_error_naming_key_and_choices(override, words):
    with pytest.raises(UserError) as err:
        load_config(PRESETS / "paper.yaml", [override])
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_pk_batch_must_equal_p_times_k():
    with pytest.raises(UserError, match=r"8 x 4 = 32"):
        load_config(PRESETS / "official.yaml", ["data.batch_size=16"])


def test_one_stream_needs_exactly_one_spectrum():
    with pytest.raises(UserError, match="one_stream"):
        load_config(PRESETS / "paper.yaml", ["loss.ablation=one_stream"])
    cfg = load_config(PRESETS / "paper.yaml", ["loss.ablation=one_stream", "data.spectra=[tir]"])
    assert check_against_manifest(cfg, ("rgb", "nir", "tir")) == ("tir",)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "optim.learning_rate" in str(err.value)


def test_spectra_must_be_in_the_manifest():
    cfg = load_config(None, ["data.spectra=[rgb, tir]"])
    with pytest.raises(UserError, match="tir not in the manifest"):
        check_against_manifest(cfg, ("rgb", "nir"))
    assert check_against_manifest(load_config(None), ("rgb", "nir")) == ("rgb", "nir")


@pytest.mark.parametrize("override, key", [
    ("optim.lr=.nan", "optim.lr"), ("optim.lr=.inf", "optim.lr"), ("loss.alpha=-.inf", "loss.alpha"),
    ("optim.weight_decay=1.0e+400", "optim.weight_decay"), ("data.mean=[0.5, .nan, 0.5]", "data.mean"),
])
def test_non_finite_numbers_are_refused(override, key):
    """YAML reads .nan, .inf and 1.0e+400 as non-finite floats; before issue 11 optim.lr=.nan was accepted."""
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(f"{key}=") and "expected a finite number" in str(err.value)


def test_corrupt_weights_file_fails_at_config_time(tmp_path):
    """model.pretrained_file is checked where the config is checked, i.e. before Ray starts."""
    (tmp_path / "w.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(UserError, match=r"^model\.pretrained_file '.*w\.safetensors' is not a readable"):
        load_config(None, [f"model.pretrained_file={tmp_path / 'w.safetensors'}"])
    with pytest.raises(UserError, match="does not exist"):
        config_from_dict({"model.pretrained_file": str(tmp_path / "none.pth")})


def test_run_selection_final_ignores_val_ids_and_final_test_is_opt_in():
    from msreid.config import effective_val_ids

    cfg = load_config(PRESETS / "paper.yaml")
    assert (cfg.run.selection, cfg.run.log_final_test) == ("validation", False)
    assert effective_val_ids(cfg) == 0.1
    final = load_config(PRESETS / "paper.yaml", ["run.selection=final"])
    assert effective_val_ids(final) == 0.0 and final.data.val_ids == 0.1
    with pytest.raises(UserError, match="run.selection"):
        load_config(PRESETS / "paper.yaml", ["run.selection=best_test"])


def test_paper_suite_reports_under_the_final_protocol():
    from msreid.grid import expand_trials, load_suite

    suite = load_suite(PRESETS.parent / "grids" / "paper.yaml")
    assert suite.set["run.selection"] == "final"
    assert all(t.overrides["run.selection"] == "final" for t in expand_trials(suite))


def test_tune_alpha_refuses_the_final_protocol():
    from msreid.orchestration.alpha import AlphaOptions, base_config

    with pytest.raises(UserError, match="run.selection must be validation"):
        base_config(AlphaOptions(overrides=("run.selection=final",)))


def test_train_cli_shows_final_test_only_when_logged():
    from msreid.train.cli import format_metrics

    plain = format_metrics({"test/mAP": 0.5, "best_epoch": 3}, "final")
    assert plain.splitlines()[0].split() == ["metric", "test", "(final)"]
    both = format_metrics({"test/mAP": 0.5, "final_test/mAP": 0.4})
    assert "final_test (last)" in both.splitlines()[0] and "0.4000" in both


def test_train_cli_marks_a_selection_within_noise():
    from msreid.train.cli import format_metrics

    sure = {"test/mAP": 0.5, "best_epoch": 1, "selection/within_noise": 0.0,
            "selection/margin": 0.2, "selection/runner_up_epoch": 0, "selection/resolution": 0.1,
            "selection/val_queries": 10}
    assert "selection within noise" not in format_metrics(sure)
    noisy = {**sure, "selection/within_noise": 1.0, "selection/margin": 0.0054}
    assert format_metrics(noisy).splitlines()[-1] == (
        "selection within noise: the highest val mAP and the runner-up (epoch 0) differ by 0.54 "
        "points, less than one of the 10 validation queries (10.00 points): a float-level change "
        "may select the other epoch (docs/TRAINING.md, run.selection_rule)")


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("true", "true"),
                                             ("false", "false")])
def test_sync_bn_takes_auto_true_false(value, expected):
    assert load_config(PRESETS / "paper.yaml", [f"model.sync_bn={value}"]).model.sync_bn == expected
    with pytest.raises(UserError, match=r"model.sync_bn='sometimes' is not valid: use one of "
                                        r"auto, true, false"):
        load_config(PRESETS / "paper.yaml", ["model.sync_bn=sometimes"])


def test_the_global_batch_must_divide_by_the_workers():
    assert load_config(PRESETS / "paper.yaml", ["run.num_workers=4"]).data.batch_size == 16
    with pytest.raises(UserError, match=r"data.batch_size=16 .*global batch.*"
                                        r"run.num_workers=3"):
        load_config(PRESETS / "paper.yaml", ["run.num_workers=3"])
    with pytest.raises(UserError, match=r"data.P x data.K = 8 x 4 = 32 .*run.num_workers=5"):
        load_config(PRESETS / "official.yaml", ["run.num_workers=5"])


def test_changed_settings_ignore_neutral_fields_and_fill_defaults():
    old = config_to_dict(load_config(PRESETS / "smoke.yaml"))
    new = config_to_dict(load_config(PRESETS / "smoke.yaml", [
        "run.num_workers=2", "data.prefetch_batches=7", "data.batches_per_task=3",
        "run.checkpoint_every=4", "data.num_decode_workers=2"]))
    assert changed_settings(old, new) == ["run.num_workers: 0 -> 2"]
    del old["model.sync_bn"]  # a config written before the field existed: its default
    assert changed_settings(old, new) == ["run.num_workers: 0 -> 2"]
    new["data.image_size"] = [32, 64]
    assert changed_settings(old, new)[0].startswith("data.image_size: ")


def test_batch_params_are_the_global_batch_and_each_workers_share():
    assert batch_params(load_config(PRESETS / "paper.yaml", ["run.num_workers=2"])) == {
        "global_batch": 16, "worker_batch": 8}
    assert batch_params(load_config(PRESETS / "official.yaml", ["run.num_workers=4"])) == {
        "global_batch": 32, "worker_batch": 8}
    assert batch_params(load_config(PRESETS / "smoke.yaml")) == {  # local mode: one process
        "global_batch": 16, "worker_batch": 16}
