"""The paper's losses against values computed by hand (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from msreid.losses import (
    ABLATIONS,
    class_aware_id_loss,
    compute_losses,
    fuse_class_activation_maps,
    heterogeneous_score_coherence,
    id_loss,
    multi_stream_id_loss,
    official_score_coherence,
    triplet_loss,
)
from msreid.models import StreamOutput
from msreid.models.cams import class_aware_weights

LN3 = math.log(3.0)


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# S = [0, ln 3] -> softmax = [1/4, 3/4];  S = [0, 0] -> [1/2, 1/2].
S_QUARTER = t([[0.0, LN3]])
S_HALF = t([[0.0, 0.0]])


def test_id_loss_by_hand():
    # label 1: -ln(3/4) = 0.287682; label 0: -ln(1/4) = 1.386294; mean = 0.836988
    scores = t([[0.0, LN3], [0.0, LN3]])
    assert id_loss(scores, torch.tensor([1, 0])).item() == pytest.approx(0.836988, abs=1e-6)
    # smoothing 0.1, C = 2: target [0.05, 0.95] -> 0.05*1.386294 + 0.95*0.287682 = 0.342613
    got = id_loss(S_QUARTER, torch.tensor([1]), label_smoothing=0.1).item()
    assert got == pytest.approx(0.342613, abs=1e-6)


def test_multi_stream_id_loss_m2_m3():
    y = torch.tensor([1])
    # m = 2: ln(4/3) + ln 2 = 0.287682 + 0.693147 = 0.980829
    assert multi_stream_id_loss([S_QUARTER, S_HALF], y).item() == pytest.approx(0.980829, abs=1e-6)
    # m = 3: + ln(4/3) again = 1.268511
    got = multi_stream_id_loss([S_QUARTER, S_HALF, S_QUARTER], y).item()
    assert got == pytest.approx(1.268511, abs=1e-6)


def test_hsc_by_hand_m2_m3():
    # m = 2: p1 = [1/4, 3/4], p2 = [1/2, 1/2]: sum_i prod = 1/8 + 3/8 = 1/2 -> L = 0.5
    assert heterogeneous_score_coherence([S_QUARTER, S_HALF]).item() == pytest.approx(0.5)
    # m = 3, p3 = p1: 1/4*1/2*1/4 + 3/4*1/2*3/4 = 1/32 + 9/32 = 10/32 -> L = 1 - 0.3125 = 0.6875
    got = heterogeneous_score_coherence([S_QUARTER, S_HALF, S_QUARTER]).item()
    assert got == pytest.approx(0.6875, abs=1e-6)


def test_hsc_batch_mean_and_one_hot_agreement():
    # sample 2: both streams ~one-hot on class 0 (S = [50, 0]): sum_i prod ~= 1 -> L ~= 0
    s1 = t([[0.0, LN3], [50.0, 0.0]])
    s2 = t([[0.0, 0.0], [50.0, 0.0]])
    # mean over batch: (0.5 + 0) / 2 = 0.25
    assert heterogeneous_score_coherence([s1, s2]).item() == pytest.approx(0.25, abs=1e-6)
    # identical one-hot-ish distributions: 0; identical *uniform* ones are not: 1 - 1/2 = 0.5
    assert heterogeneous_score_coherence([s1[1:], s2[1:]]).item() == pytest.approx(0.0, abs=1e-6)
    assert heterogeneous_score_coherence([S_HALF, S_HALF]).item() == pytest.approx(0.5)


def test_hsc_needs_two_streams_and_is_float32_under_autocast():
    with pytest.raises(ValueError):
        heterogeneous_score_coherence([S_QUARTER])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = heterogeneous_score_coherence([S_QUARTER, S_HALF, S_QUARTER])
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(0.6875, abs=1e-3)


def test_official_score_coherence_by_hand():
    # sample 1: cos([1,0],[1,1]) = 1/sqrt2 -> 1 - 0.707107 = 0.292893; sample 2: parallel -> 0
    # sum over the batch: 0.292893 (no 0.001 inside: that is alpha's job); mean: 0.146447
    s1 = t([[1.0, 0.0], [0.0, 2.0]])
    s2 = t([[1.0, 1.0], [0.0, 3.0]])
    assert official_score_coherence([s1, s2]).item() == pytest.approx(0.292893, rel=1e-5)
    assert official_score_coherence([s1, s2], "mean").item() == pytest.approx(0.146447, rel=1e-5)
    # a third stream takes no part (the authors' trainer: RGB and NIR only)
    assert official_score_coherence([s1, s2, t([[5.0, -1.0], [2.0, 2.0]])]).item() == \
        pytest.approx(0.292893, rel=1e-5)


def test_hsc_reduction_sum_is_batch_size_times_mean():
    # per sample 0.5 (see test_hsc_by_hand_m2_m3) and 0 (one-hot agreement): sum 0.5, mean 0.25
    s1 = t([[0.0, LN3], [50.0, 0.0]])
    s2 = t([[0.0, 0.0], [50.0, 0.0]])
    assert heterogeneous_score_coherence([s1, s2], "sum").item() == pytest.approx(0.5, abs=1e-6)
    assert heterogeneous_score_coherence([s1, s2], "mean").item() == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(ValueError, match="hsc_reduction"):
        heterogeneous_score_coherence([s1, s2], "max")


def _class_dependent_cams():
    """m = 2, B = 1, C = 2, h = 1, w = 2 (sigmoid(ln3) = 3/4, sigmoid(0) = 1/2, sigmoid(-ln3) = 1/4)."""
    m1 = t([[[[LN3, 0.0]], [[-LN3, -LN3]]]])  # A: class0 [.75, .5], class1 [.25, .25]
    m2 = t([[[[0.0, 0.0]], [[LN3, 0.0]]]])  # A: class0 [.5, .5],  class1 [.75, .5]
    return m1, m2


def test_fusion_weights_are_class_dependent():
    m1, m2 = _class_dependent_cams()
    # B class0 = [.75, .5]; class1 = [.75, .5]
    # eta^1_0 = .75*.75 + .5*.5 = .8125; eta^2_0 = .5*.75 + .5*.5 = .625 -> alpha_0 = [13/23, 10/23]
    # eta^1_1 = .25*.75 + .25*.5 = .3125; eta^2_1 = .75*.75 + .5*.5 = .8125 -> alpha_1 = [5/18, 13/18]
    alpha = class_aware_weights([m1, m2])  # [m, B, C]
    expected = t([[[13 / 23, 5 / 18]], [[10 / 23, 13 / 18]]])
    torch.testing.assert_close(alpha, expected)
    # M'_0 = 13/23*[ln3, 0] + 10/23*[0, 0]; M'_1 = 5/18*[-ln3, -ln3] + 13/18*[ln3, 0]
    fused = fuse_class_activation_maps([m1, m2])
    exp = t([[[[13 / 23 * LN3, 0.0]], [[8 / 18 * LN3, -5 / 18 * LN3]]]])
    torch.testing.assert_close(fused, exp)


def test_class_aware_id_loss_by_hand():
    m1, m2 = _class_dependent_cams()
    # GAP(M'): S'_0 = 13/46 ln3, S'_1 = (8 - 5)/36 ln3 = 1/12 ln3
    # label 0: -log softmax_0 = log(1 + exp(S'_1 - S'_0))
    expected = math.log(1 + math.exp((1 / 12 - 13 / 46) * LN3))  # = 0.589663
    got = class_aware_id_loss([m1, m2], torch.tensor([0])).item()
    assert got == pytest.approx(expected, abs=1e-6)
    assert got == pytest.approx(0.589663, abs=1e-5)


def test_fusion_m3():
    # C = 1, h = w = 1: A = [.75, .5, .25], B = .75, eta = [.5625, .375, .1875], sum 1.125
    # alpha = [1/2, 1/3, 1/6]; M' = 1/2 ln3 + 0 - 1/6 ln3 = 1/3 ln3
    cams = [t([[[[LN3]]]]), t([[[[0.0]]]]), t([[[[-LN3]]]])]
    torch.testing.assert_close(class_aware_weights(cams)[:, 0, 0], t([1 / 2, 1 / 3, 1 / 6]))
    assert fuse_class_activation_maps(cams).item() == pytest.approx(LN3 / 3, abs=1e-6)


def test_fusion_with_ties_in_the_max():
    # C = 1, h = 1, w = 2: A^1 = [.5, .75], A^2 = [.5, .5]: tie at location 0, B = [.5, .75]
    # eta^1 = .25 + .5625 = .8125, eta^2 = .25 + .375 = .625 -> alpha = [13/23, 10/23]
    # M' = 13/23*[0, ln3] + 10/23*[0, 0] = [0, 13/23 ln3]
    cams = [t([[[[0.0, LN3]]]]), t([[[[0.0, 0.0]]]])]
    torch.testing.assert_close(fuse_class_activation_maps(cams), t([[[[0.0, 13 / 23 * LN3]]]]))


def test_tied_streams_get_equal_gradients():
    # Two identical CAMs tie everywhere in eq. 8; the elementwise max must treat them
    # symmetrically, so both receive the same gradient (an argmax would favour one).
    base = torch.randn(2, 3, 2, 2)
    a, b = base.clone().requires_grad_(), base.clone().requires_grad_()
    class_aware_id_loss([a, b], torch.tensor([0, 2])).backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_triplet_by_hand():
    # 1-D points x = [0, 1, 3, 6], labels [0, 0, 1, 1], margin .3
    # anchor 0: d_ap 1, d_an min(3, 6) = 3 -> 0;  anchor 1: d_ap 1, d_an min(2, 5) = 2 -> 0
    # anchor 3: d_ap 3, d_an min(3, 2) = 2 -> 1.3;  anchor 6: d_ap 3, d_an min(6, 5) = 5 -> 0
    # mean = 1.3 / 4 = 0.325
    x = t([[0.0], [1.0], [3.0], [6.0]])
    assert triplet_loss(x, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(0.325, abs=1e-6)


def test_triplet_skips_anchors_without_positive():
    # x = [0, 2, 1, 6], labels [0, 0, 1, 2]: anchors 1 and 6 have no positive -> skipped
    # anchor 0: d_ap 2, d_an min(1, 6) = 1 -> 1.3; anchor 2: d_ap 2, d_an min(1, 4) = 1 -> 1.3
    x = t([[0.0], [2.0], [1.0], [6.0]])
    assert triplet_loss(x, torch.tensor([0, 0, 1, 2])).item() == pytest.approx(1.3, abs=1e-6)


@pytest.mark.parametrize("labels", [[0, 1, 2], [4, 4, 4]])
def test_triplet_without_valid_triplet_is_zero_and_differentiable(labels):
    x = torch.randn(3, 5, requires_grad=True)
    loss = triplet_loss(x, torch.tensor(labels))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_triplet_gradient_is_finite_with_duplicate_points():
    # identical embeddings give zero distances: sqrt at 0 must not produce NaN
    x = torch.zeros(4, 3, requires_grad=True)
    triplet_loss(x, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(x.grad).all()


def _hand_output() -> StreamOutput:
    # scores S^1 = [0, ln3], S^2 = [0, 0]; CAMs 1x1 equal to the scores
    s1, s2 = S_QUARTER, S_HALF
    return StreamOutput([t([[0.0]]), t([[1.0]])], [s1, s2], [s1[..., None, None], s2[..., None, None]])


def test_compute_losses_total_by_hand():
    out = _hand_output()
    y = torch.tensor([1])
    # id = ln(4/3) + ln2 = 0.980829; hsc = 0.5 (see test_hsc_by_hand_m2_m3)
    # caid: class0 A = [.5, .5] -> alpha [.5, .5], M'_0 = 0;
    #       class1 A = [.75, .5], B = .75, eta [.5625, .375] -> alpha [.6, .4], M'_1 = .6 ln3
    #       label 1: log(1 + exp(-.6 ln3)) = log(1 + 3^-0.6) = log(1.517282) = 0.416920
    # total = 0.980829 + 0.001 * 0.5 + 0.416920 = 1.398249
    got = compute_losses(out, y, **ABLATIONS["hamnet"])
    assert set(got) == {"loss", "id", "hsc", "caid"}
    assert got["id"].item() == pytest.approx(0.980829, abs=1e-6)
    assert got["hsc"].item() == pytest.approx(0.5, abs=1e-6)
    assert got["caid"].item() == pytest.approx(0.416920, abs=1e-6)
    assert got["loss"].item() == pytest.approx(1.398249, abs=1e-6)


def test_compute_losses_msn_official_and_triplet():
    out = _hand_output()
    y = torch.tensor([1])
    assert set(compute_losses(out, y, **ABLATIONS["msn"])) == {"loss", "id"}
    # official hsc: cos([0, ln3], [0, 0]) = 0 (eps-guarded zero vector) -> 1 - 0 = 1, x alpha 0.001
    got = compute_losses(out, y, hsc_alpha=0.001, hsc_variant="official", triplet_margin=0.3)
    assert got["hsc"].item() == pytest.approx(1.0, abs=1e-7)
    # one sample: no valid triplet -> 0 per stream
    assert got["triplet"].item() == 0.0
    assert got["loss"].item() == pytest.approx(0.980829 + 0.001, abs=1e-6)


def test_compute_losses_errors():
    out = _hand_output()
    y = torch.tensor([1])
    with pytest.raises(ValueError, match="return_cams=True"):
        compute_losses(out._replace(cams=None), y, caid=True)
    one = StreamOutput(out.features[:1], out.scores[:1], None)
    with pytest.raises(ValueError, match="2 streams"):
        compute_losses(one, y, hsc_alpha=0.001)
    with pytest.raises(ValueError, match="hsc_variant"):
        compute_losses(out, y, hsc_alpha=0.001, hsc_variant="cosine")


def test_ablation_names_match_table5():
    assert {"one_stream", "msn", "msn+hsc", "msn+caid", "hamnet"} <= set(ABLATIONS)
    assert ABLATIONS["hamnet"] == {"hsc_alpha": 0.001, "caid": True}
    assert ABLATIONS["msn"] == {}
