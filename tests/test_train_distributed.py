"""msreid.train.distributed: 2 gloo workers with DDP take the 1-worker step of the global batch.

A two-stream toy model (linear -> BatchNorm per stream, shared classifier
shapes as MultiStreamNet's outputs) trained with the identification, the
official (batch-SUM) coherence and the batch-hard triplet losses. The global
batch holds 2 ids x 4 tuples, so each worker's share holds ONE id: without
the gather its triplet loss has no negatives at all.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gloo_ranks import run_on_two_ranks
from msreid.losses import compute_losses
from msreid.models import StreamOutput
from msreid.models.sync_batchnorm import convert_sync_batchnorm
from msreid.train.distributed import gather_outputs, sync_bn_wanted

LOSS = dict(hsc_alpha=1.0, hsc_variant="official", triplet_margin=0.3)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.streams = nn.ModuleList(
            nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5)) for _ in range(2))
        self.classifiers = nn.ModuleList(nn.Linear(5, 3, bias=False) for _ in range(2))

    def forward(self, x: torch.Tensor) -> StreamOutput:
        feats = [s(x[:, j]) for j, s in enumerate(self.streams)]
        return StreamOutput(feats, [c(f) for c, f in zip(self.classifiers, feats)], None)


def _data():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(8, 2, 6, generator=g)
    labels = torch.tensor([0, 0, 0, 0, 2, 2, 2, 2])  # P x K = 2 x 4: one id per worker share
    return x, labels


def _step(model: nn.Module, x, labels, gather: bool) -> dict:
    out = model(x)
    if gather:
        out, labels = gather_outputs(out, labels)
    terms = compute_losses(out, labels, **LOSS)
    terms["loss"].backward()
    return {"terms": {k: float(v.detach()) for k, v in terms.items()},
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


def _rank_results(rank: int) -> dict:
    x, labels = _data()
    share = slice(4 * rank, 4 * rank + 4)
    res = {}
    for gather in (True, False):
        torch.manual_seed(0)
        model = DistributedDataParallel(convert_sync_batchnorm(Toy(), "cpu"))
        res[gather] = _step(model, x[share], labels[share], gather)
        res[gather]["grads"] = {n.removeprefix("module."): g
                                for n, g in res[gather]["grads"].items()}
    return res


@pytest.fixture(scope="module")
def two_workers() -> dict:
    return run_on_two_ranks(_rank_results)


@pytest.mark.timeout(300)
def test_gathered_ddp_step_is_the_one_worker_step(two_workers):
    x, labels = _data()
    torch.manual_seed(0)
    single = _step(Toy(), x, labels, gather=False)  # one process, the whole global batch
    assert single["terms"]["triplet"] > 0.1  # two ids: the hard negatives matter
    for rank in (0, 1):
        got = two_workers[rank][True]
        for k, v in single["terms"].items():  # every worker evaluates the global loss
            assert got["terms"][k] == pytest.approx(v, rel=1e-5), (rank, k)
        for name, g in single["grads"].items():  # DDP's average == the 1-worker gradient
            assert torch.allclose(got["grads"][name], g, rtol=1e-4, atol=1e-6), (rank, name)


@pytest.mark.timeout(300)
def test_without_the_gather_each_share_misses_the_other_id(two_workers):
    x, labels = _data()
    torch.manual_seed(0)
    single = _step(Toy(), x, labels, gather=False)
    local = two_workers[0][False]
    assert local["terms"]["triplet"] == 0.0  # one id per share: no valid anchor
    assert not all(torch.allclose(local["grads"][n], g, rtol=1e-3, atol=1e-5)
                   for n, g in single["grads"].items())


def test_sync_bn_setting():
    assert [sync_bn_wanted("auto", w) for w in (1, 2)] == [False, True]
    assert sync_bn_wanted("true", 1) and not sync_bn_wanted("false", 4)


def test_gather_is_the_identity_without_a_process_group():
    x, labels = _data()
    out = Toy()(x)
    got, got_labels = gather_outputs(out, labels)
    assert got is out and got_labels is labels
