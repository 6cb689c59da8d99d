"""Our side of the differential test against the authors' released Baseline6.

Shared by ``tests/test_models_official_reference.py`` and the script that records
the authors' outputs, ``tools/record_official_reference.py``. Nothing here needs
their code: every parameter and buffer is a function of its name and shape
(:func:`seeded_tensor`), the images come from a seed, and :func:`our_outputs`
computes what the fixture holds for their model.

The network is the ResNet-50 of ``experiments/presets/official.yaml`` at a small
input (64 x 128) and a small P x K batch, in float64, two streams (RGB, NIR):
the released trainer runs two.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from msreid.config import load_config, loss_kwargs
from msreid.losses import compute_losses, official_fused_scores
from msreid.models import MultiStreamNet, build_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "official_reference.safetensors"
PRESET = ROOT / "experiments" / "presets" / "official.yaml"
SPECTRA = ("rgb", "nir")
P, K = 4, 2  # identities x samples per identity in the batch
NUM_CLASSES = 6
SIZE = (64, 128)  # (H, W): feature maps 4 x 8 with last stride 1
INPUT_SEED = 20260518
DTYPE = torch.float64
PROBE_BN = "streams.rgb.backbone.bn1"  # whose running statistics the fixture holds


def seeded_tensor(name: str, shape: Iterable[int], dtype: torch.dtype = DTYPE) -> Tensor:
    """A deterministic value for the parameter or buffer ``name`` of this shape.

    The generator is seeded by sha256(name); the distribution is picked from the
    name so activations stay of order 1 through 16 residual blocks in train and
    eval mode (the last BatchNorm of each residual branch, ``bn3``, scales by
    about 0.2), the CAMs' sigmoids are far from saturating and the max map has
    no exact ties. Integer buffers (``num_batches_tracked``) are 0.
    """
    shape = tuple(shape)
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    gen = torch.Generator().manual_seed(seed)
    normal = torch.randn(shape, generator=gen, dtype=torch.float64)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        value = 0.1 * normal
    elif leaf == "running_var":
        value = 1.0 + 0.1 * normal.abs()
    elif len(shape) == 1 and leaf == "weight":  # BatchNorm scale
        value = (0.2 if name.endswith(".bn3.weight") else 1.0) * (1.0 + 0.1 * normal)
    elif len(shape) == 1:  # BatchNorm shift, classifier bias
        value = 0.1 * normal
    else:  # conv / linear weights: He scaling by fan-in
        fan_in = normal[0].numel()
        value = normal * (2.0 / fan_in) ** 0.5
    return value.to(dtype)


def fill_seeded(module: nn.Module, rename: Callable[[str], str] = str) -> list[str]:
    """Set every parameter and buffer of ``module`` to ``seeded_tensor(rename(name), ...)``.

    ``rename`` maps the module's state-dict names to the names that seed the
    values (the authors' names to ours). Returns the seeding names in order.
    """
    used = []
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            key = rename(name)
            tensor.copy_(seeded_tensor(key, tensor.shape, tensor.dtype))
            used.append(key)
    return used


def images() -> dict[str, Tensor]:
    """The P x K batch's images {spectrum: [B, 3, H, W]} in float64, from INPUT_SEED."""
    gen = torch.Generator().manual_seed(INPUT_SEED)
    return {s: torch.randn(P * K, 3, *SIZE, generator=gen, dtype=DTYPE) for s in SPECTRA}


def labels() -> Tensor:
    """[0, 0, 1, 1, ...]: P identities, K samples each, as the P x K sampler yields."""
    return torch.arange(P).repeat_interleave(K)


def our_model(stem_relu: bool | None = None) -> MultiStreamNet:
    """The official preset's network (resnet50 and its model settings), seeded, float64.

    stem_relu: None = the preset's; True / False override it.
    """
    m = load_config(PRESET).model
    model = build_model(m.backbone, SPECTRA, NUM_CLASSES, last_stride_1=m.last_stride_1,
                        neck=m.neck, head=m.head, embedding=m.embedding, embed_at=m.embed_at,
                        stem_relu=m.stem_relu if stem_relu is None else stem_relu).to(DTYPE)
    fill_seeded(model)
    return model


def our_loss_kwargs() -> dict:
    return loss_kwargs(load_config(PRESET).loss)


def grad_probes(named_grads: Iterable[tuple[str, Tensor]]) -> tuple[list[str], Tensor]:
    """(names, [n, 2]): per parameter its gradient's norm and its dot with a seeded direction.

    Two numbers per parameter instead of 2 x 25 M: a gradient that differs
    anywhere moves the random projection (almost surely).
    """
    names, rows = [], []
    for name, grad in named_grads:
        direction = seeded_tensor("probe:" + name, grad.shape)
        names.append(name)
        rows.append(torch.stack([grad.norm(), (grad * direction).sum()]))
    return names, torch.stack(rows)


def our_outputs(model: MultiStreamNet) -> dict[str, Tensor]:
    """What the fixture records for the authors' model, computed by ours.

    Eval mode first (the test feature from the seeded running statistics), then
    one training-mode forward and backward of the preset's objective.
    """
    x, y = images(), labels()
    model.eval()
    with torch.no_grad():
        test_feature = model.embed(x)
    model.train()
    model.zero_grad()
    out = model(x, return_cams=True)
    loss = compute_losses(out, y, **our_loss_kwargs())["loss"]
    loss.backward()
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    _, probes = grad_probes(named)
    bn = model.get_submodule(PROBE_BN)
    return {
        "test_feature": test_feature,
        "logits": torch.stack([s.detach() for s in out.scores]),
        "necked": torch.stack([n.detach() for n in out.necked]),
        "cams": torch.stack([c.detach() for c in out.cams]),
        "fused": official_fused_scores([c.detach() for c in out.cams]),
        "loss": loss.detach().reshape(1),
        "grad_probes": probes,
        "probe_bn_running_mean": bn.running_mean.detach().clone(),
        "probe_bn_running_var": bn.running_var.detach().clone(),
    }


def our_param_names(model: MultiStreamNet) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def fixture_metadata(**values) -> dict[str, str]:
    """safetensors metadata (str -> str): every value JSON-encoded."""
    return {k: json.dumps(v) for k, v in values.items()}
