"""loss.alpha is the one weight of L_hsc in every ablation; loss.hsc_reduction picks mean or sum."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from msreid.config import config_from_dict, load_config, loss_kwargs
from msreid.losses import ABLATIONS, compute_losses
from msreid.models import StreamOutput
from msreid.orchestration.alpha import AlphaOptions, base_config

PRESETS = Path(__file__).resolve().parents[1] / "experiments" / "presets"
LN3 = math.log(3.0)

# Two samples, two streams, C = 2; CAMs 1x1 equal to the scores; the features are
# one-dimensional and far apart so that no triplet term is active.
S1 = torch.tensor([[0.0, LN3], [1.0, 0.0]])
S2 = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
# paper L_hsc per sample: [1 - (1/4 1/2 + 3/4 1/2), 1 - (e/(1+e) 1/2 + 1/(1+e) 1/2)] = [.5, .5]
# official per sample: 1 - cos: [1 - 0 (zero vector), 1 - 1/sqrt2] = [1, 0.292893]
PAPER_HSC = {"mean": 0.5, "sum": 1.0}
OFFICIAL_HSC = {"mean": (1 + 1 - 1 / math.sqrt(2)) / 2, "sum": 2 - 1 / math.sqrt(2)}


def output() -> StreamOutput:
    feats = [torch.tensor([[0.0], [100.0]])] * 2
    return StreamOutput(feats, [S1, S2], [S1[..., None, None], S2[..., None, None]], feats)


def hsc_weight_in_total(kwargs: dict) -> float:
    """(total - every other term) / the unweighted L_hsc: the weight the total gave L_hsc."""
    got = compute_losses(output(), torch.tensor([1, 0]), **kwargs)
    rest = sum(got[k] for k in ("id", "caid", "triplet") if k in got)
    return ((got["loss"] - rest) / got["hsc"]).item()


@pytest.mark.parametrize("ablation", ["msn+hsc", "hamnet", "hamnet_official"])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_alpha_is_the_only_weight_of_hsc_in_every_ablation(ablation, alpha):
    cfg = load_config(PRESETS / "paper.yaml", [f"loss.ablation={ablation}", f"loss.alpha={alpha}"])
    kwargs = loss_kwargs(cfg.loss)
    assert kwargs["hsc_alpha"] == alpha
    assert hsc_weight_in_total(kwargs) == pytest.approx(alpha, rel=1e-2)  # float32 totals


def test_paper_yaml_with_the_official_ablation_means_alpha_times_the_authors_term():
    # paper.yaml's alpha 0.001 on hamnet_official: 0.001 * sum_b (1 - cos), as the authors' trainer
    cfg = load_config(PRESETS / "paper.yaml", ["loss.ablation=hamnet_official"])
    got = compute_losses(output(), torch.tensor([1, 0]), **loss_kwargs(cfg.loss))
    assert got["hsc"].item() == pytest.approx(OFFICIAL_HSC["sum"], abs=1e-6)
    assert hsc_weight_in_total(loss_kwargs(cfg.loss)) == pytest.approx(0.001, rel=1e-2)


@pytest.mark.parametrize("ablation,variant", [("hamnet", "paper"), ("hamnet_official", "official")])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_hsc_reduction_override(ablation, variant, reduction):
    cfg = load_config(PRESETS / "paper.yaml",
                      [f"loss.ablation={ablation}", f"loss.hsc_reduction={reduction}"])
    got = compute_losses(output(), torch.tensor([1, 0]), **loss_kwargs(cfg.loss))
    want = (PAPER_HSC if variant == "paper" else OFFICIAL_HSC)[reduction]
    assert got["hsc"].item() == pytest.approx(want, abs=1e-6)


def test_reduction_defaults_mean_for_the_paper_sum_for_the_official_variant():
    assert loss_kwargs(load_config(PRESETS / "paper.yaml").loss).get("hsc_reduction", "mean") == "mean"
    assert ABLATIONS["hamnet_official"]["hsc_reduction"] == "sum"
    assert loss_kwargs(load_config(PRESETS / "official.yaml").loss)["hsc_reduction"] == "sum"


def test_tune_alpha_samples_the_weight_itself_for_the_official_ablation():
    base, forced = base_config(AlphaOptions(ablation="hamnet_official"))
    sampled = 0.0137
    cfg = config_from_dict({**base, **forced, "loss.alpha": sampled, "data.manifest": "x"})
    kwargs = loss_kwargs(cfg.loss)
    assert (cfg.loss.ablation, kwargs["hsc_alpha"]) == ("hamnet_official", sampled)
    assert hsc_weight_in_total(kwargs) == pytest.approx(sampled, rel=1e-2)


def test_alpha_trials_skip_the_subset_tables_unless_asked():
    """The search's answer is val mAP against alpha: its trials leave out the 7-subset /
    cross-spectral and per-challenge test tables, and --set brings them back."""
    base, forced = base_config(AlphaOptions())
    cfg = config_from_dict({**base, **forced, "data.manifest": "x"})
    assert (cfg.run.missing_modality, cfg.run.per_challenge, cfg.run.eval_every) == (False, False, 1)
    base, forced = base_config(AlphaOptions(overrides=("run.missing_modality=true",)))
    cfg = config_from_dict({**base, **forced, "data.manifest": "x"})
    assert (cfg.run.missing_modality, cfg.run.per_challenge) == (True, False)
