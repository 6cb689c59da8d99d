"""msreid.loss_gradients: the gradient-norm ratio of L_hsc against the other terms, and the probe.

References: norms by hand, central finite differences in float64 (no autograd),
and a plain Adam loop on L_id alone written here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from msreid.loss_gradients import gradient_norm, hsc_gradient_ratio, probe_hsc_ratios
from msreid.losses import multi_stream_id_loss
from msreid.models import StreamOutput

SPECTRA = ("rgb", "nir")


class Linear2(nn.Module):
    """Two streams, scores S^j = x^j W^j; no CAMs (objectives without L_caid)."""

    def __init__(self, weights: list[torch.Tensor]):
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(w.clone()) for w in weights])

    def forward(self, images, return_cams=False):
        scores = [images[s] @ w for s, w in zip(SPECTRA, self.w)]
        return StreamOutput(scores, scores, None, scores)


def test_gradient_norm_by_hand():
    a, b, unused = (torch.tensor(v, requires_grad=True) for v in (1.0, 2.0, 5.0))
    assert gradient_norm(3 * a + 4 * b, [a, b, unused]) == pytest.approx(5.0)  # sqrt(9 + 16)
    assert gradient_norm(a * b, [a, b]) == pytest.approx(math.sqrt(2.0 ** 2 + 1.0 ** 2))


def test_paper_form_has_no_gradient_at_uniform_predictions():
    # W = 0: every stream predicts uniformly, where eq. 5's gradient is exactly 0, while the
    # ID loss still pulls: the ratio is 0 whatever alpha.
    model = Linear2([torch.zeros(3, 4), torch.zeros(3, 4)])
    x = {s: torch.randn(5, 3, generator=torch.Generator().manual_seed(i)) for i, s in
         enumerate(SPECTRA)}
    r = hsc_gradient_ratio(model, x, torch.tensor([0, 1, 2, 3, 0]),
                           {"hsc_alpha": 0.001, "hsc_variant": "paper", "hsc_reduction": "sum"})
    assert r == 0.0


def _fd_norm(f, params: list[torch.Tensor], h: float = 1e-6) -> float:
    """|grad f| by central finite differences, one coordinate at a time (float64)."""
    total = 0.0
    for p in params:
        flat = p.view(-1)
        for i in range(flat.numel()):
            keep = float(flat[i])
            flat[i] = keep + h
            up = float(f())
            flat[i] = keep - h
            down = float(f())
            flat[i] = keep
            total += ((up - down) / (2 * h)) ** 2
    return math.sqrt(total)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ratio_matches_finite_differences(reduction):
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in SPECTRA]
    x = {s: torch.randn(6, 3, generator=g, dtype=torch.float64) for s in SPECTRA}
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    model = Linear2(weights)
    got = hsc_gradient_ratio(model, x, y, {"hsc_alpha": 0.5, "hsc_variant": "official",
                                           "hsc_reduction": reduction})
    with torch.no_grad():
        raw = [w.clone() for w in weights]

        def scores():
            return [x[s] @ w for s, w in zip(SPECTRA, raw)]

        def hsc_ref():  # 1 - cosine of the two streams' logits, per sample, float64
            a, b = scores()
            per = 1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
            return per.sum() if reduction == "sum" else per.mean()

        def id_ref():  # sum over streams of the mean cross entropy, float64
            return sum((s.logsumexp(1) - s[torch.arange(len(y)), y]).mean() for s in scores())

        hsc, rest = _fd_norm(hsc_ref, raw), _fd_norm(id_ref, raw)
    # the library computes the losses in float32: agreement to float32 precision
    assert got == pytest.approx(hsc / rest, rel=1e-3)  # unweighted: alpha (0.5) is not in r


def test_probe_measures_at_the_asked_steps_and_trains_without_hsc():
    g = torch.Generator().manual_seed(1)
    weights = [0.1 * torch.randn(3, 4, generator=g) for _ in SPECTRA]
    batches = [({s: torch.randn(4, 3, generator=g) for s in SPECTRA}, torch.tensor([0, 1, 2, 3]))
               for _ in range(5)]
    kwargs = {"hsc_alpha": 0.001, "hsc_variant": "official", "hsc_reduction": "sum"}
    model = Linear2(weights)
    points = probe_hsc_ratios(model, batches[:2], kwargs, steps=5, every=2, lr=0.01,
                              train_batches=batches[2:])
    assert [p.step for p in points] == [0, 2, 4, 5]
    assert all(len(p.ratios) == 2 and all(r > 0 for r in p.ratios) for p in points)
    # the same 5 Adam steps on L_id alone (alpha = 0), the training batches in turn
    ref = [nn.Parameter(w.clone()) for w in weights]
    opt = torch.optim.Adam(ref, lr=0.01)
    for step in range(5):
        x, y = batches[2 + step % 3]
        loss = multi_stream_id_loss([x[s] @ w for s, w in zip(SPECTRA, ref)], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for got, want in zip(model.w, ref):
        torch.testing.assert_close(got.detach(), want.detach())


def test_objective_without_hsc_is_refused():
    model = Linear2([torch.zeros(3, 4), torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="no L_hsc"):
        hsc_gradient_ratio(model, {s: torch.zeros(2, 3) for s in SPECTRA}, torch.tensor([0, 1]), {})
