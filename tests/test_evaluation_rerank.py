"""k-reciprocal re-ranking against a plain port of the reference algorithm (Zhong et al. 2017)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msreid.errors import UserError
from msreid.evaluation import evaluate_features, evaluate_rank, re_ranking


def reference_re_ranking(q, g, k1, k2, lambda_value):
    """The circulated re_ranking(probFea, galFea, k1, k2, lambda_value), loop by loop,
    with V in float32 (the circulated code uses float16) and a stable argsort."""
    feat = np.concatenate([q, g]).astype(np.float32)
    query_num, all_num = len(q), len(feat)
    sq = (feat ** 2).sum(1, keepdims=True)
    original_dist = sq + sq.T - 2 * feat @ feat.T
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist, dtype=np.float32)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    for i in range(all_num):
        forward = initial_rank[i, : k1 + 1]
        backward = initial_rank[forward, : k1 + 1]
        k_reciprocal = forward[np.where(backward == i)[0]]
        expansion = k_reciprocal
        for candidate in k_reciprocal:
            half = int(np.around(k1 / 2.0))
            c_forward = initial_rank[candidate, : half + 1]
            c_backward = initial_rank[c_forward, : half + 1]
            c_reciprocal = c_forward[np.where(c_backward == candidate)[0]]
            if len(np.intersect1d(c_reciprocal, k_reciprocal)) > 2.0 / 3 * len(c_reciprocal):
                expansion = np.append(expansion, c_reciprocal)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    original_dist = original_dist[:query_num]
    if k2 != 1:
        V = np.stack([np.mean(V[initial_rank[i, :k2], :], axis=0) for i in range(all_num)])
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(all_num, dtype=np.float32)
        for k in np.where(V[i, :] != 0)[0]:
            rows = inv_index[k]
            temp_min[rows] += np.minimum(V[i, k], V[rows, k])
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist * lambda_value
    return final[:, query_num:]


def identity_features(seed, nq=12, ng=60, dim=8, n_ids=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    q_ids, g_ids = rng.integers(0, n_ids, nq), rng.integers(0, n_ids, ng)
    q = centres[q_ids] + 0.8 * rng.normal(size=(nq, dim))
    g = centres[g_ids] + 0.8 * rng.normal(size=(ng, dim))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(q), unit(g), q_ids, g_ids, rng.integers(0, 3, nq), rng.integers(0, 3, ng)


@pytest.mark.parametrize("seed,k1,k2,lam", [(0, 20, 6, 0.3), (1, 6, 3, 0.5), (2, 5, 1, 0.0)])
def test_matches_reference(seed, k1, k2, lam):
    q, g, *_ = identity_features(seed)
    ref = reference_re_ranking(q, g, k1, k2, lam)
    ours = re_ranking(torch.from_numpy(q), torch.from_numpy(g), k1=k1, k2=k2, lambda_value=lam)
    assert ours.shape == (len(q), len(g))
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-5)


def test_small_blocks_and_evaluate_features(monkeypatch):
    from msreid.evaluation import rerank

    q, g, qi, gi, qc, gc = identity_features(3)
    ref = reference_re_ranking(q, g, 20, 6, 0.3)
    monkeypatch.setattr(rerank, "_BLOCK_ELEMS", 500)  # a few rows per block everywhere
    np.testing.assert_allclose(re_ranking(q, g).numpy(), ref, atol=2e-5)
    got = evaluate_features(q, g, qi, gi, qc, gc, rerank=True, normalize=False)
    want = evaluate_rank(ref, qi, gi, qc, gc)
    assert got.mAP == pytest.approx(want.mAP, abs=1e-9)
    np.testing.assert_allclose(got.cmc, want.cmc)


def test_bad_parameters():
    with pytest.raises(UserError, match="k1=0"):
        re_ranking(np.ones((2, 3)), np.ones((4, 3)), k1=0)
