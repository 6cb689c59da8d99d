"""Modality dropout (data.modality_dropout): the per-tuple draw, its key, the masked losses
checked against plain per-stream cross entropy, and the config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from msreid.config import load_config
from msreid.data.transforms import draw_kept_spectra, kept_spectra
from msreid.errors import UserError
from msreid.losses import compute_losses, triplet_loss
from msreid.models.multistream import StreamOutput
from msreid.train.sampling import dropout_rngs, sample_rngs


def test_at_least_one_spectrum_is_kept_and_the_rates_are_as_computed_by_hand():
    rngs = dropout_rngs(0, 0, np.arange(20000))
    keep = kept_spectra(rngs, 3, 0.5)
    assert keep.shape == (20000, 3) and keep.any(axis=1).all()
    # each spectrum dropped w.p. 1/2; all three dropped (1/8) -> one of them kept (1/3 each):
    # P(kept) = 1/2 + 1/8 * 1/3 = 0.5417; kept per tuple 3 * 0.5417 = 1.625
    assert keep.mean(axis=0) == pytest.approx([0.5417] * 3, abs=0.015)
    assert keep.sum(axis=1).mean() == pytest.approx(1.625, abs=0.02)
    # exactly one kept: three ways of two dropped (3/8) plus the all-dropped case (1/8) = 1/2
    assert (keep.sum(axis=1) == 1).mean() == pytest.approx(0.5, abs=0.015)
    assert kept_spectra(rngs[:50], 3, 0.0).all()


def test_a_tuple_draw_depends_on_seed_epoch_and_position_only():
    whole = kept_spectra(dropout_rngs(7, 3, np.arange(64)), 3, 0.4)
    halves = np.concatenate([kept_spectra(dropout_rngs(7, 3, np.arange(a, a + 32)), 3, 0.4)
                             for a in (0, 32)])
    assert np.array_equal(whole, halves)  # however the batch is cut into worker shares
    assert not np.array_equal(whole, kept_spectra(dropout_rngs(7, 4, np.arange(64)), 3, 0.4))
    assert not np.array_equal(whole, kept_spectra(dropout_rngs(8, 3, np.arange(64)), 3, 0.4))
    # its own stream: the augmentation generator of the same tuple draws something else
    aug = sample_rngs(7, 3, [5])[0].random(3)
    assert not np.array_equal(aug, dropout_rngs(7, 3, [5])[0].random(3))


def test_draw_kept_spectra_by_hand():
    class Fixed:  # a generator whose draws are chosen here
        def __init__(self, u, pick):
            self.u, self.pick = np.asarray(u), pick

        def random(self, n):
            return self.u[:n]

        def integers(self, n):
            return self.pick

    assert draw_kept_spectra(Fixed([0.9, 0.1, 0.5], 0), 3, 0.5).tolist() == [True, False, True]
    assert draw_kept_spectra(Fixed([0.1, 0.2, 0.3], 2), 3, 0.5).tolist() == [False, False, True]


def _output(b=6, c=4, d=5, m=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(b, d, generator=g, requires_grad=True) for _ in range(m)]
    scores = [torch.randn(b, c, generator=g, requires_grad=True) for _ in range(m)]
    return StreamOutput(feats, scores, None, None)


def test_masked_losses_leave_a_dropped_stream_out_of_its_tuples():
    out = _output()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    keep = torch.tensor([[True, False], [True, True], [False, True], [True, True],
                         [True, False], [True, True]])
    terms = compute_losses(out, labels, keep=keep, triplet_margin=0.3)
    k0, k1 = keep[:, 0], keep[:, 1]
    id_ref = (F.cross_entropy(out.scores[0][k0], labels[k0])
              + F.cross_entropy(out.scores[1][k1], labels[k1]))
    tri_ref = (triplet_loss(out.features[0][k0], labels[k0], 0.3)
               + triplet_loss(out.features[1][k1], labels[k1], 0.3))
    assert float(terms["id"]) == pytest.approx(float(id_ref), rel=1e-6)
    assert float(terms["triplet"]) == pytest.approx(float(tri_ref), rel=1e-6)
    terms["loss"].backward()
    # no gradient reaches a stream's outputs from the tuples that dropped it
    assert (out.scores[1].grad[~k1] == 0).all() and (out.scores[1].grad[k1] != 0).any()
    assert (out.features[0].grad[~k0] == 0).all()
    # an all-True mask is the unmasked loss
    full = compute_losses(out, labels, keep=torch.ones(6, 2, dtype=torch.bool))
    assert float(full["id"]) == pytest.approx(float(compute_losses(out, labels)["id"]), rel=1e-6)


def test_a_stream_dropped_by_every_tuple_adds_zero_not_nan():
    out = _output()
    keep = torch.tensor([[True, False]] * 6)
    terms = compute_losses(out, torch.tensor([0, 0, 1, 1, 2, 2]), keep=keep)
    assert torch.isfinite(terms["loss"])
    assert float(terms["id"]) == pytest.approx(
        float(F.cross_entropy(out.scores[0], torch.tensor([0, 0, 1, 1, 2, 2]))), rel=1e-6)


def test_a_mask_with_the_fusion_terms_is_refused():
    with pytest.raises(ValueError, match="L_hsc or L_caid"):
        compute_losses(_output(), torch.tensor([0, 0, 1, 1, 2, 2]), hsc_alpha=0.001,
                       keep=torch.ones(6, 2, dtype=torch.bool))


@pytest.mark.parametrize("override, message", [
    (["data.modality_dropout=1.0", "loss.ablation=msn"], r"must be in \[0, 1\)"),
    (["data.modality_dropout=-0.1", "loss.ablation=msn"], r"must be in \[0, 1\)"),
    (["data.modality_dropout=0.3"], "loss.ablation=hamnet.*Use loss.ablation=msn"),
])
def test_config_checks(override, message):
    from pathlib import Path

    preset = Path(__file__).resolve().parents[1] / "experiments" / "presets" / "smoke.yaml"
    with pytest.raises(UserError, match=message):
        load_config(preset, ["data.manifest=x", *override])
    cfg = load_config(preset, ["data.manifest=x", "data.modality_dropout=0.3", "loss.ablation=msn"])
    assert cfg.data.modality_dropout == 0.3


def test_run_names_and_tables_show_the_dropout():
    from msreid.grid import Level, TableSpec
    from msreid.tracking.runs import trial_run_name
    from msreid.tracking.tables import TrialResult, assemble_table, to_markdown, trained_as

    cells = [("robustness", "MSN + modality dropout", "test_resnet")]
    assert trial_run_name(("rgb", "nir", "tir"), "msn", "test_resnet", 1, cells, 0.5) == \
        "RGB-N-T MSN drop0.5 test_resnet · s1 · robustness"
    assert "drop" not in trial_run_name(("rgb", "nir", "tir"), "msn", "test_resnet", 1, cells)
    table = TableSpec(name="robustness", title="T", rows=(Level("MSN"), Level("MSN + modality dropout")),
                      columns=(Level("test_resnet"),), metrics=("mAP",), base=Level("", dataset="rgbnt100"))
    flat = {"model.backbone": "test_resnet", "run.selection": "validation"}
    results = [TrialResult(cells=(("robustness", "MSN", "test_resnet"),), seed=0,
                           metrics={"test/mAP": 30.0},
                           config=trained_as({**flat, "data.modality_dropout": 0.0})),
               TrialResult(cells=(("robustness", "MSN + modality dropout", "test_resnet"),), seed=0,
                           metrics={"test/mAP": 28.0},
                           config=trained_as({**flat, "data.modality_dropout": 0.5}))]
    frame = assemble_table(table, results)
    assert frame["modality_dropout"].tolist() == ["0", "0.5"]
    md = to_markdown(table, frame)
    assert "| Row | Column | seeds | modality dropout | mAP |" in md and "| 0.5 | 28.0 |" in md
    assert "| Row | Column | seeds | mAP |" in to_markdown(table, assemble_table(table, results[:1]))
