"""msreid.models.sync_batchnorm: 2 gloo processes on CPU == one process over the global batch.

Three ways to the same numbers: ours on 2 processes (each holding a share of
the global batch), ``nn.BatchNorm`` in one process over the whole batch, and
batch normalisation written out by hand in float64 (Ioffe & Szegedy 2015,
Alg. 1; running variance unbiased, as torch documents).
"""

from __future__ import annotations

import copy

import pytest
import timm.layers
import torch
from torch import nn

from gloo_ranks import run_on_two_ranks
from msreid.models.sync_batchnorm import (
    CpuSyncBatchNorm,
    CpuSyncBatchNormAct,
    batch_moments,
    convert_sync_batchnorm,
)

EPS = 1e-5
# global batch [N, C, *]; rank 0 takes the first `cut` samples, rank 1 the rest
CASES = {
    "1d_flat": dict(shape=(8, 5), cut=4, momentum=0.1),
    "1d_seq": dict(shape=(6, 3, 7), cut=2, momentum=None),  # unequal shares, cumulative average
    "2d": dict(shape=(8, 4, 5, 3), cut=4, momentum=0.3),
}
STEPS = 2


def _case_data(name: str) -> dict:
    """Per step: input x, loss weights r (loss = sum(y * r)); the layer's weight and bias."""
    c = CASES[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    ch = c["shape"][1]
    return {
        "x": [torch.randn(c["shape"], generator=g) * 3 + 1.5 for _ in range(STEPS)],
        "r": [torch.randn(c["shape"], generator=g) for _ in range(STEPS)],
        "weight": torch.rand(ch, generator=g) + 0.5, "bias": torch.randn(ch, generator=g),
    }


def _run_layer(bn: nn.Module, data: dict, part: slice) -> dict:
    """Train steps on x[part] (loss sum(y * r)); outputs, gradients and the running stats."""
    out = {"y": [], "dx": [], "dw": [], "db": []}
    for x, r in zip(data["x"], data["r"]):
        xs = x[part].clone().requires_grad_(True)
        y = bn(xs)
        (y * r[part]).sum().backward()
        out["y"].append(y.detach())
        out["dx"].append(xs.grad)
        out["dw"].append(bn.weight.grad.clone())
        out["db"].append(bn.bias.grad.clone())
        bn.weight.grad = bn.bias.grad = None
    out["running"] = (bn.running_mean.clone(), bn.running_var.clone(),
                      int(bn.num_batches_tracked))
    bn.eval()
    out["eval_y"] = bn(data["x"][0][part]).detach()
    return out


def _make(cls, name: str, data: dict) -> nn.Module:
    c = CASES[name]
    bn = cls(c["shape"][1], eps=EPS, momentum=c["momentum"])
    with torch.no_grad():
        bn.weight.copy_(data["weight"])
        bn.bias.copy_(data["bias"])
    return bn


def _moments_check(rank: int) -> dict:
    """batch_moments of a synced layer: global mean/var and the gradient of the summed objective."""
    g = torch.Generator().manual_seed(3)
    x, a, b = torch.randn(6, 4, generator=g), torch.randn(4, generator=g), torch.randn(4, generator=g)
    part = slice(0, 2) if rank == 0 else slice(2, 6)
    xs = x[part].clone().requires_grad_(True)
    mean, var = batch_moments(CpuSyncBatchNorm(4), xs)
    ((mean * a).sum() + (var * b).sum()).backward()
    return {"mean": mean.detach(), "var": var.detach(), "dx": xs.grad}


def _rank_results(rank: int) -> dict:
    res = {}
    for name, c in CASES.items():
        part = slice(0, c["cut"]) if rank == 0 else slice(c["cut"], c["shape"][0])
        data = _case_data(name)
        res[name] = _run_layer(_make(CpuSyncBatchNorm, name, data), data, part)
    res["moments"] = _moments_check(rank)
    return res


@pytest.fixture(scope="module")
def two_ranks() -> dict:
    """Results of both gloo ranks (one spawn for every case)."""
    return run_on_two_ranks(_rank_results)


def _by_hand(name: str, data: dict) -> dict:
    """Batch norm written out in float64 with autograd; running stats updated by hand."""
    c = CASES[name]
    ch = c["shape"][1]
    dims = [0] + list(range(2, len(c["shape"])))
    view = [1, ch] + [1] * (len(c["shape"]) - 2)
    w = data["weight"].double().requires_grad_(True)
    b = data["bias"].double().requires_grad_(True)
    rm, rv = torch.zeros(ch, dtype=torch.float64), torch.ones(ch, dtype=torch.float64)
    out = {"y": [], "dx": [], "dw": [], "db": []}
    for step, (x, r) in enumerate(zip(data["x"], data["r"])):
        x = x.double().requires_grad_(True)
        n = x.numel() // ch
        mean = x.sum(dims) / n
        var = ((x - mean.view(view)) ** 2).sum(dims) / n
        y = (x - mean.view(view)) / torch.sqrt(var.view(view) + EPS) * w.view(view) + b.view(view)
        (y * r.double()).sum().backward()
        out["y"].append(y.detach())
        out["dx"].append(x.grad)
        out["dw"].append(w.grad.clone())
        out["db"].append(b.grad.clone())
        w.grad = b.grad = None
        m = 1.0 / (step + 1) if c["momentum"] is None else c["momentum"]
        rm = (1 - m) * rm + m * mean.detach()
        rv = (1 - m) * rv + m * var.detach() * n / (n - 1)
    out["running"] = (rm, rv, STEPS)
    x0 = data["x"][0].double()
    out["eval_y"] = ((x0 - rm.view(view)) / torch.sqrt(rv.view(view) + EPS) * w.detach().view(view)
                     + b.detach().view(view))
    return out


def _close(a, b, what):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, what
    err = (a - b).abs().max().item()
    assert err <= 2e-6 * max(1.0, b.abs().max().item()), f"{what}: max error {err:.2e}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(CASES))
def test_two_gloo_ranks_equal_one_process_and_the_formula(two_ranks, name):
    data = _case_data(name)
    torch_bn = {"1d_flat": nn.BatchNorm1d, "1d_seq": nn.BatchNorm1d, "2d": nn.BatchNorm2d}[name]
    single = _run_layer(_make(torch_bn, name, data), data, slice(None))
    hand = _by_hand(name, data)
    ranks = [two_ranks[0][name], two_ranks[1][name]]
    for step in range(STEPS):
        for key in ("y", "dx"):  # per sample: the two shares, concatenated
            ours = torch.cat([ranks[0][key][step], ranks[1][key][step]])
            _close(ours, single[key][step], f"{name} step {step} {key} vs nn.BatchNorm")
            _close(ours, hand[key][step], f"{name} step {step} {key} vs formula")
        for key in ("dw", "db"):  # per rank: local sums, which DDP's all-reduce adds up
            ours = ranks[0][key][step] + ranks[1][key][step]
            _close(ours, single[key][step], f"{name} step {step} {key} vs nn.BatchNorm")
            _close(ours, hand[key][step], f"{name} step {step} {key} vs formula")
    for rank in ranks:  # both ranks hold the global running statistics
        for i, what in enumerate(("running_mean", "running_var")):
            _close(rank["running"][i], single["running"][i], f"{name} {what} vs nn.BatchNorm")
            _close(rank["running"][i], hand["running"][i], f"{name} {what} vs formula")
        assert rank["running"][2] == single["running"][2] == STEPS
    eval_y = torch.cat([ranks[0]["eval_y"], ranks[1]["eval_y"]])  # eval: running stats
    _close(eval_y, single["eval_y"], f"{name} eval output vs nn.BatchNorm")
    _close(eval_y, hand["eval_y"], f"{name} eval output vs formula")


@pytest.mark.timeout(300)
def test_batch_moments_are_the_global_batch_moments_with_summed_gradients(two_ranks):
    g = torch.Generator().manual_seed(3)
    x, a, b = torch.randn(6, 4, generator=g), torch.randn(4, generator=g), torch.randn(4, generator=g)
    x = x.double().requires_grad_(True)
    mean, var = x.mean(0), ((x - x.mean(0)) ** 2).mean(0)
    # each rank's objective holds the global moments: the gradient is of their sum (2x)
    (2 * ((mean * a.double()).sum() + (var * b.double()).sum())).backward()
    r0, r1 = two_ranks[0]["moments"], two_ranks[1]["moments"]
    for r in (r0, r1):
        _close(r["mean"], mean.detach(), "mean")
        _close(r["var"], var.detach(), "var")
    _close(torch.cat([r0["dx"], r1["dx"]]), x.grad, "d(moments)/dx")


def test_without_a_process_group_the_layer_is_batchnorm():
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(3, momentum=0.2)
    ours = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3, momentum=0.2)), "cpu")[0]
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 2, 2)
    assert torch.equal(ours(x), ref(x))
    assert torch.equal(ours.running_var, ref.running_var)
    m = batch_moments(ours, x.mean((2, 3)))
    assert torch.allclose(m[1], x.mean((2, 3)).var(0, unbiased=False))


def _model() -> nn.Module:
    act = timm.layers.BatchNormAct2d(4, act_layer=nn.ReLU, momentum=0.05)
    neck = nn.BatchNorm1d(6, eps=1e-3)
    neck.bias.requires_grad_(False)
    return nn.Sequential(nn.Conv2d(3, 4, 1), act, nn.Sequential(nn.BatchNorm2d(4)),
                         nn.Flatten(), nn.Linear(4, 6), neck).eval()


@pytest.mark.parametrize("device_type, plain, with_act",
                         [("cpu", CpuSyncBatchNorm, CpuSyncBatchNormAct),
                          ("cuda", nn.SyncBatchNorm, timm.layers.SyncBatchNormAct)])
def test_converter_keeps_parameters_buffers_and_modes(device_type, plain, with_act):
    model = _model()
    model[1].running_mean.fill_(0.25)
    before = {n: t for n, t in [*model.named_parameters(), *model.named_buffers()]}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    ref = copy.deepcopy(model)
    converted = convert_sync_batchnorm(model, device_type)
    assert type(converted[1]) is with_act and isinstance(converted[1].act, nn.ReLU)
    assert type(converted[2][0]) is plain and type(converted[5]) is plain
    after = {n: t for n, t in [*converted.named_parameters(), *converted.named_buffers()]}
    assert after.keys() == before.keys()
    assert all(after[n] is before[n] for n in before)  # the same tensors, not copies
    assert {n: p.requires_grad for n, p in converted.named_parameters()} == grads
    assert converted[1].momentum == 0.05 and converted[5].eps == 1e-3
    assert not any(m.training for m in converted.modules())
    if device_type == "cpu":  # no process group: outputs as before, in eval and training mode
        x = torch.randn(5, 3, 1, 1)
        assert torch.equal(converted(x), ref(x))
        assert torch.equal(converted.train()(x), ref.train()(x))
        assert torch.equal(converted[5].running_var, ref[5].running_var)
