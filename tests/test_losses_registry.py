"""Loss terms are declared once (``msreid.losses.LOSS_TERMS``): what each ablation turns on,
and a throwaway term registered here, in the test only, that config validation,
``loss_kwargs``, ``compute_losses``, the training loop and the run names all pick up."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from msreid.config import LossConfig, load_config, loss_kwargs
from msreid.errors import UserError
from msreid.losses import (
    ABLATION_LABELS,
    ABLATIONS,
    LOSS_TERMS,
    LossTerm,
    TermInput,
    active_terms,
    compute_losses,
    needs_cams,
)
from msreid.models import StreamOutput, build_model
from msreid.tracking.runs import trial_run_name
from msreid.train import loop

LN3 = math.log(3.0)


def _hand_output() -> StreamOutput:
    """Two streams, one sample, two classes: S^1 = [0, ln 3], S^2 = [0, 0], CAMs 1 x 1."""
    s1, s2 = torch.tensor([[0.0, LN3]]), torch.tensor([[0.0, 0.0]])
    return StreamOutput([torch.tensor([[0.0]]), torch.tensor([[1.0]])], [s1, s2],
                        [s1[..., None, None], s2[..., None, None]])


@pytest.mark.parametrize("ablation, terms, cams", [
    ("one_stream", ("id",), False),
    ("msn", ("id",), False),
    ("msn+hsc", ("id", "hsc"), False),
    ("msn+caid", ("id", "caid"), True),
    ("hamnet", ("id", "hsc", "caid"), True),
    ("hamnet_official", ("id", "hsc", "caid", "triplet"), True),
])
def test_each_ablation_turns_on_its_terms_and_asks_for_cams_only_with_caid(ablation, terms, cams):
    assert active_terms(ABLATIONS[ablation]) == terms
    assert needs_cams(ABLATIONS[ablation]) is cams


def test_alpha_zero_still_computes_hsc_and_caid_false_is_off():
    assert active_terms({"hsc_alpha": 0.0, "caid": False}) == ("id", "hsc")


def test_every_ablation_has_a_label_and_hamnet_official_its_own():
    assert set(ABLATION_LABELS) == set(ABLATIONS)
    assert ABLATION_LABELS["hamnet"] == "HAMNet"
    assert ABLATION_LABELS["hamnet_official"] == "HAMNet-official"
    cells = [("embedding", "row", "RGBNT100")]
    assert trial_run_name(("rgb", "nir", "tir"), "hamnet_official", "resnet50", 0, cells) == \
        "RGB-N-T HAMNet-official resnet50 · s0 · embedding"


def test_every_config_field_a_term_names_is_a_loss_config_field():
    fields = {f.name for f in dataclasses.fields(LossConfig)}
    for term in LOSS_TERMS.values():
        assert set(term.config) <= fields
        assert term.enabled_by is None or set(term.enabled_by) <= fields


def test_config_fields_map_to_the_terms_keywords():
    cfg = LossConfig(ablation="hamnet", alpha=0.01, hsc_variant="official", hsc_reduction="sum",
                     caid_variant="official", triplet=True, margin=0.2, label_smoothing=0.1)
    assert loss_kwargs(cfg) == {"hsc_alpha": 0.01, "caid": True, "hsc_variant": "official",
                                "hsc_reduction": "sum", "caid_variant": "official",
                                "triplet_margin": 0.2, "label_smoothing": 0.1}
    # a term the ablation leaves off ignores its fields: msn has no L_hsc to weigh
    assert loss_kwargs(LossConfig(ablation="msn", alpha=0.01, caid_variant="official")) == \
        {"label_smoothing": 0.0}


def test_an_unknown_keyword_is_refused():
    with pytest.raises(TypeError, match="'hsc_weight'"):
        compute_losses(_hand_output(), torch.tensor([1]), hsc_weight=0.1)


# --- a throwaway term, registered by this test alone --------------------------------------

def _energy(b: TermInput) -> torch.Tensor:
    """Sum over streams of the mean squared CAM."""
    return sum(c.pow(2).mean() for c in b.out.cams)


ENERGY = LossTerm("L_energy", _energy, switch="energy_weight", weight="energy_weight",
                  needs_cams=True, per_stream=False)


@pytest.fixture
def energy_term(monkeypatch):
    monkeypatch.setitem(LOSS_TERMS, "energy", ENERGY)
    monkeypatch.setitem(ABLATIONS, "msn+energy", {"energy_weight": 0.5})
    monkeypatch.setitem(ABLATION_LABELS, "msn+energy", "MSN+E")


def test_a_new_term_is_validated_and_computed_from_its_entry_alone(energy_term):
    cfg = load_config(None, ["loss.ablation=msn+energy"])
    kwargs = loss_kwargs(cfg.loss)
    assert kwargs == {"energy_weight": 0.5, "label_smoothing": 0.0}
    assert needs_cams(kwargs)
    got = compute_losses(_hand_output(), torch.tensor([1]), **kwargs)
    # id = ln(4/3) + ln 2 = 0.980829 (test_losses); energy = mean(0, ln3^2) + 0 = 0.603474
    # loss = 0.980829 + 0.5 * 0.603474 = 1.282566
    assert list(got) == ["loss", "id", "energy"]
    assert got["energy"].item() == pytest.approx(0.603474, abs=1e-6)
    assert got["loss"].item() == pytest.approx(1.282566, abs=1e-6)
    with pytest.raises(UserError, match=r"\(L_msid, triplet\) only; L_hsc / L_caid / L_energy "):
        load_config(None, ["loss.ablation=msn+energy", "data.modality_dropout=0.3"])
    with pytest.raises(ValueError, match="not with L_hsc or L_caid or L_energy"):
        compute_losses(_hand_output(), torch.tensor([1]), keep=torch.ones(1, 2, dtype=bool),
                       **kwargs)
    cells = [("t", "row", "col")]
    assert " MSN+E " in trial_run_name(("rgb", "nir"), "msn+energy", "r", 0, cells)


def test_the_training_loop_logs_a_new_term_and_feeds_it_the_cams(energy_term):
    cfg = load_config(None, ["loss.ablation=msn+energy", "data.batch_size=2"])
    torch.manual_seed(0)
    model = build_model("test_resnet", ("rgb", "nir"), num_classes=2)
    optimizer, scheduler = loop.build_optimizer(model, cfg.optim)
    session = SimpleNamespace(rank=0, world=1, distributed=False, device=torch.device("cpu"))
    job = loop.TrainJob(spectra=("rgb", "nir"), size=(32, 32), num_classes=2,
                        steps_per_epoch=(1,), run_dir="", labels=None, val=None, test=None)
    t = loop.Training(cfg, job, session, model, model, optimizer, scheduler,
                      torch.amp.GradScaler("cpu", enabled=False))
    images = torch.randint(0, 256, (1, 2, 3, 32, 32), dtype=torch.uint8)
    batch = {"epoch": torch.tensor([0]), "step": torch.tensor([0]),
             "labels": torch.tensor([[0, 1]]), "rgb": images, "nir": images}
    stats = loop.train_epoch(t, iter([batch]), 0)
    assert set(stats) == {"tuples", "seconds", "loss", "id", "energy"}
    assert stats["energy"] > 0  # _energy read the CAMs: the loop asked the model for them
    assert stats["loss"] == pytest.approx(stats["id"] + 0.5 * stats["energy"], rel=1e-5)
    epoch = loop.reduce_epoch(stats, session)
    assert epoch["train/energy"] == pytest.approx(stats["energy"] / 2)  # per tuple, 2 tuples
