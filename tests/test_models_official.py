"""head="official" + hamnet_official + official.yaml reproduce the authors' released code.

One fact per test, (a)-(e) of docs/MODELS.md, on a tiny backbone whose feature
map IS the first two channels of the image, so every number is computed by
hand: two spectra, C = 2 classes, d = 2 channels, a 1 x 2 feature map.
sigmoid(ln 3) = 3/4, sigmoid(0) = 1/2, sigmoid(-ln 3) = 1/4.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from msreid.config import load_config, loss_kwargs
from msreid.evaluation.distance import prepare_features
from msreid.losses import compute_losses, official_fused_scores, triplet_loss
from msreid.models import MultiStreamNet, Stream, build_model
from msreid.train.loop import lr_at

LN3 = math.log(3.0)
PRESETS = Path(__file__).resolve().parents[1] / "experiments" / "presets"


class Crop2(nn.Module):
    """A 'backbone' whose feature map is the image's first two channels (d = 2)."""

    num_features = 2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2]


def official_net(embedding: str = "cam_official") -> MultiStreamNet:
    """Hand-set weights: W = I, b = [.5, -.5]; rgb CAM conv = I, nir CAM conv = swap;
    BN-neck in eval with mean [1, 0], var [4, 1], scale [2, 1], so n(f) = (f0 - 1, f1)."""
    streams = {s: Stream(Crop2(), num_classes=2, neck="bnneck", head="official")
               for s in ("rgb", "nir")}
    net = MultiStreamNet(streams, 2, embedding=embedding, embed_at="after_neck").eval()
    with torch.no_grad():
        net.shared_classifier.weight.copy_(torch.eye(2))
        net.shared_classifier.bias.copy_(torch.tensor([0.5, -0.5]))
        streams["rgb"].cam_conv.weight.copy_(torch.eye(2)[:, :, None, None])
        streams["nir"].cam_conv.weight.copy_(torch.eye(2).flip(0)[:, :, None, None])
        for st in streams.values():
            bn = st.neck
            bn.running_mean.copy_(torch.tensor([1.0, 0.0]))
            bn.running_var.copy_(torch.tensor([4.0, 1.0]) - bn.eps)
            bn.weight.copy_(torch.tensor([2.0, 1.0]))
    return net


def hand_images() -> dict[str, torch.Tensor]:
    # rgb channels: [ln3, 0], [-ln3, -ln3]; nir channels: [ln3, 0], [0, 0]  (third channel unused)
    rgb = torch.tensor([[[LN3, 0.0]], [[-LN3, -LN3]], [[9.0, 9.0]]])
    nir = torch.tensor([[[LN3, 0.0]], [[0.0, 0.0]], [[9.0, 9.0]]])
    return {"rgb": rgb[None], "nir": nir[None]}


# Hand values shared by the tests below.
# pooled f: rgb [ln3/2, -ln3], nir [ln3/2, 0]; necked n = (f0 - 1, f1)
N_RGB = [LN3 / 2 - 1, -LN3]
N_NIR = [LN3 / 2 - 1, 0.0]
# (a) S = n + [.5, -.5]
S_RGB = [LN3 / 2 - 0.5, -LN3 - 0.5]
S_NIR = [LN3 / 2 - 0.5, -0.5]
# (c) CAMs: rgb (identity conv) class0 [ln3, 0] -> A [.75, .5], class1 [-ln3, -ln3] -> [.25, .25]
#           nir (swap conv)     class0 [0, 0]   -> A [.5, .5],  class1 [ln3, 0]     -> [.75, .5]
# sigmoid sums a: rgb [1.25, .5], nir [1, 1.25]; w = a / sum_j a: class0 [5/9, 4/9], class1 [2/7, 5/7]
# max map B: class0 [.75, .5], class1 [.75, .5] -> sums [1.25, 1.25] -> g = [1/2, 1/2]
# S'_0 = 1/2 (5/9 1.25 + 4/9 1) = 10.25/18; S'_1 = 1/2 (2/7 .5 + 5/7 1.25) = 7.25/14
FUSED = [10.25 / 18, 7.25 / 14]
# (d) v^j = sum_c g_c w^j_c: rgb 5/18 + 1/7 = 53/126, nir 2/9 + 5/14 = 73/126
V = [53 / 126, 73 / 126]


def ce(scores: list[float], label: int, eps: float = 0.0) -> float:
    """Cross entropy with the authors' smoothing: target (1 - eps) onehot + eps / C."""
    log_z = math.log(sum(math.exp(s) for s in scores))
    c = len(scores)
    return sum(-((1 - eps) * (i == label) + eps / c) * (s - log_z) for i, s in enumerate(scores))


def test_a_one_shared_classifier_with_bias():
    net = official_net()
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert linears == [net.shared_classifier] and net.shared_classifier.bias is not None
    assert all(st.classifier is None for st in net.streams.values())
    with torch.no_grad():
        out = net(hand_images())
    torch.testing.assert_close(out.scores[0], torch.tensor([S_RGB]))
    torch.testing.assert_close(out.scores[1], torch.tensor([S_NIR]))
    # the paper's head stays the default: a bias-free classifier per stream, nothing shared
    paper = build_model("test_resnet", ["rgb", "nir"], num_classes=2)
    assert paper.shared_classifier is None
    assert all(st.classifier.bias is None for st in paper.streams.values())


def test_b_cams_come_from_a_1x1_conv_per_stream_not_the_classifier():
    net = official_net()
    with torch.no_grad():
        out = net(hand_images(), return_cams=True)
        torch.testing.assert_close(out.cams[0], torch.tensor([[[[LN3, 0.0]], [[-LN3, -LN3]]]]))
        torch.testing.assert_close(out.cams[1], torch.tensor([[[[0.0, 0.0]], [[LN3, 0.0]]]]))
        net.shared_classifier.weight.mul_(5.0)  # the classifier does not enter the CAMs
        again = net(hand_images(), return_cams=True)
    torch.testing.assert_close(again.cams[0], out.cams[0])
    assert not torch.allclose(again.scores[0], out.scores[0])


def test_c_fused_score_is_weighted_sum_of_sigmoid_map_sums():
    net = official_net()
    with torch.no_grad():
        out = net(hand_images(), return_cams=True)
    torch.testing.assert_close(official_fused_scores(out.cams), torch.tensor([FUSED]))
    # the fused score takes the ID loss (and alpha * the cosine L_hsc summed over the batch):
    # cos(S_rgb, S_nir) by hand; batch of one, so no valid triplet (0)
    kwargs = loss_kwargs(load_config(PRESETS / "official.yaml").loss)
    got = compute_losses(out, torch.tensor([0]), **kwargs)
    dot = sum(a * b for a, b in zip(S_RGB, S_NIR))
    cos = dot / math.hypot(*S_RGB) / math.hypot(*S_NIR)
    assert got["caid"].item() == pytest.approx(ce(FUSED, 0), abs=1e-6)
    assert got["hsc"].item() == pytest.approx(1 - cos, abs=1e-6)
    total = ce(S_RGB, 0) + ce(S_NIR, 0) + 0.001 * (1 - cos) + ce(FUSED, 0)
    assert got["loss"].item() == pytest.approx(total, abs=1e-6)


def reference_fused(cams: list[torch.Tensor]) -> torch.Tensor:
    """The authors' fused score with plain loops (b, c), no eq. 9 product."""
    b_, c_ = cams[0].shape[:2]
    out = torch.zeros(b_, c_)
    for b in range(b_):
        peak = [max_map(cams, b, c).sum() for c in range(c_)]
        for c in range(c_):
            sums = [torch.sigmoid(m[b, c]).sum() for m in cams]
            out[b, c] = peak[c] / sum(peak) * sum(s * s / sum(sums) for s in sums)
    return out


def max_map(cams, b, c):
    return torch.stack([torch.sigmoid(m[b, c]) for m in cams]).amax(0)


def test_c_triplet_on_necked_features_and_on_the_fused_score():
    torch.manual_seed(0)
    net = official_net().train()
    x = {s: torch.randn(4, 3, 1, 2) for s in ("rgb", "nir")}
    labels = torch.tensor([0, 0, 1, 1])
    out = net(x, return_cams=True)
    got = compute_losses(out, labels, **loss_kwargs(load_config(PRESETS / "official.yaml").loss))
    fused = reference_fused([c.detach() for c in out.cams])
    ref = sum(triplet_loss(f.detach(), labels) for f in (*out.necked, fused))
    assert got["triplet"].item() == pytest.approx(ref.item(), abs=1e-5)
    pooled = sum(triplet_loss(f.detach(), labels) for f in (*out.features, fused))
    assert abs(pooled.item() - ref.item()) > 1e-3  # necked, not pooled, features


def test_d_test_feature_is_cam_weighted_sum_of_necked_features():
    with torch.no_grad():
        emb = official_net("cam_official").embed(hand_images())
        total = official_net("sum").embed(hand_images())
    expected = [V[0] * a + V[1] * b for a, b in zip(N_RGB, N_NIR)]  # = [ln3/2 - 1, -53/126 ln3]
    torch.testing.assert_close(emb, torch.tensor([expected]))
    torch.testing.assert_close(total, torch.tensor([[a + b for a, b in zip(N_RGB, N_NIR)]]))
    # and the evaluation L2-normalises it by default (their TEST.FEAT_NORM)
    norm = math.hypot(*expected)
    torch.testing.assert_close(prepare_features(emb, "query"),
                               torch.tensor([[v / norm for v in expected]]))


def test_e_label_smoothing_bnneck_last_stride_and_warmup_of_the_preset():
    cfg = load_config(PRESETS / "official.yaml")
    m, o = cfg.model, cfg.optim
    assert (m.head, m.neck, m.embed_at, m.embedding, m.last_stride_1) == (
        "official", "bnneck", "after_neck", "cam_official", True)
    # label smoothing as the authors' formula: 0.1 -> (0.9 onehot + 0.05) against log-softmax
    net = official_net()
    with torch.no_grad():
        out = net(hand_images(), return_cams=True)
    got = compute_losses(out, torch.tensor([1]), label_smoothing=0.1)
    assert got["id"].item() == pytest.approx(ce(S_RGB, 1, 0.1) + ce(S_NIR, 1, 0.1), abs=1e-6)
    assert cfg.loss.label_smoothing == 0.0  # what the released config actually ran ('yes' != 'on')
    # warm-up factor 0.01, scheduler stepped at each epoch's start: epoch e (from 0) runs at
    # their factor for k = e + 1: 0.01 (1 - k/10) + k/10 before 10, then x0.1 from k = 40, 70
    for e, factor in [(0, 0.109), (4, 0.505), (8, 0.901), (9, 1.0), (38, 1.0), (39, 0.1),
                      (68, 0.1), (69, 0.01), (119, 0.01)]:
        assert lr_at(e, o) == pytest.approx(3.5e-4 * factor, rel=1e-9), e
    # last stride 1: test_resnet's 2 x 4 map at 64 x 128 becomes 4 x 8 (CAMs of the 1x1 conv)
    ls1 = build_model("test_resnet", ["rgb", "nir"], num_classes=3, neck="bnneck",
                      head="official", last_stride_1=True).eval()
    with torch.no_grad():
        cams = ls1({s: torch.randn(1, 3, 64, 128) for s in ("rgb", "nir")}, return_cams=True).cams
    assert cams[0].shape == (1, 3, 4, 8)


def test_msreid_cam_weighting_differs_from_the_authors():
    with torch.no_grad():
        ours = official_net("cam_weighted").embed(hand_images())
        theirs = official_net("cam_official").embed(hand_images())
    assert not torch.allclose(ours, theirs)


def test_every_parameter_of_the_official_head_trains_under_hamnet_official():
    torch.manual_seed(0)
    model = build_model("test_resnet", ["rgb", "nir", "tir"], num_classes=4, neck="bnneck",
                        head="official", last_stride_1=True)
    with torch.no_grad():  # timm zero-inits the last BN scale of each block (see test_models_grad)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and not m.weight.any():
                m.weight.fill_(1.0)
    x = {s: torch.randn(4, 3, 64, 64) for s in model.spectra}
    kwargs = loss_kwargs(load_config(PRESETS / "official.yaml").loss)
    compute_losses(model(x, return_cams=True), torch.tensor([0, 0, 1, 1]), **kwargs)["loss"].backward()
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert dead == []
    assert model.shared_classifier.bias.grad.abs().sum() > 0
