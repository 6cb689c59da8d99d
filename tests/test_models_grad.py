"""Every parameter of every stream gets a finite, somewhere non-zero gradient under each ablation.

Runs every registered backbone at the smallest input it takes (batch 2). The
large ones carry @slow: `make test` runs them, `-m "not slow"` deselects them.
"""

from __future__ import annotations

import pytest
import torch

from msreid.losses import ABLATIONS, compute_losses
from msreid.models import BACKBONES, MultiStreamNet, build_model


def tiny_size(name: str) -> tuple[int, int]:
    """Smallest sensible (H, W): inception needs >= 75 px, ViTs a multiple of their patch."""
    family = BACKBONES[name].family
    if family == "inception":
        return (75, 75)
    if family == "vit":
        return (32, 64)  # 2 x 4 patch tokens of 16 px
    return (64, 64)


def wake_zero_init_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Set all-zero norm scales to 1.

    timm zero-initialises the last BN scale of each residual block (zero_init_last),
    which blocks the gradient into that branch at step 0 only: by design, not a
    dead stream. Without this, ResNet branches would look dead in this test.
    """
    norms = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, norms) and m.weight is not None and not m.weight.any():
                m.weight.fill_(1.0)
    return model


def dead_parameters(model: torch.nn.Module, loss: torch.Tensor) -> list[str]:
    """Trainable parameters whose gradient of ``loss`` is missing, non-finite or all zero."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True,
                                allow_unused=True)
    return [n for (n, _), g in zip(named, grads)
            if g is None or not torch.isfinite(g).all() or not g.abs().sum() > 0]


CASES = [pytest.param(name, marks=[pytest.mark.slow] if spec.slow else [])
         for name, spec in BACKBONES.items()]


@pytest.mark.parametrize("backbone", CASES)
def test_every_parameter_gets_a_gradient_under_every_ablation(backbone):
    torch.manual_seed(0)
    size = tiny_size(backbone)
    labels = torch.tensor([0, 1])
    two = wake_zero_init_norms(build_model(backbone, ["rgb", "nir"], num_classes=3,
                                           input_size=size))
    # one-stream model: the rgb stream alone (same class, saves building a big model again)
    one = MultiStreamNet({"rgb": two.streams["rgb"]}, num_classes=3)
    x = {s: torch.randn(2, 3, *size) for s in ("rgb", "nir")}
    outputs = {m: m(x, return_cams=True) for m in (one, two)}  # one forward per model
    for ablation, kwargs in ABLATIONS.items():
        model = one if ablation == "one_stream" else two
        out = outputs[model]
        if not kwargs.get("caid"):
            out = out._replace(cams=None)  # what forward(return_cams=False) gives
        loss = compute_losses(out, labels, **kwargs)["loss"]
        assert torch.isfinite(loss)
        assert dead_parameters(model, loss) == [], f"{backbone} / {ablation}"


def test_bnneck_and_last_stride_streams_are_alive():
    torch.manual_seed(0)
    model = wake_zero_init_norms(build_model("test_resnet", ["rgb", "nir", "tir"],
                                             num_classes=4, neck="bnneck", last_stride_1=True))
    x = {s: torch.randn(4, 3, 64, 64) for s in model.spectra}
    out = model(x, return_cams=True)
    labels = torch.tensor([0, 0, 1, 1])
    loss = compute_losses(out, labels, hsc_alpha=0.001, caid=True, triplet_margin=0.3)["loss"]
    assert dead_parameters(model, loss) == []
    loss.backward()
    # the BN-neck shift is frozen (BNNeck): it must not train
    assert all(model.streams[s].neck.bias.grad is None for s in model.spectra)
