"""CMC / mAP / mINP: hand-computed cases and a slow per-query reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msreid.errors import UserError
from msreid.evaluation import (
    compute_distance_matrix,
    evaluate_features,
    evaluate_rank,
    rank_stats,
    rgbnt201_protocol,
)
from msreid.evaluation import rank as rank_module

# Gallery (index: id, camera): g0 (1, 0), g1 (2, 1), g2 (1, 1), g3 (3, 0), g4 (1, 2), g5 (2, 0)
G_IDS = np.array([1, 2, 1, 3, 1, 2])
G_CAMS = np.array([0, 1, 1, 0, 2, 0])
Q_IDS = np.array([1, 2, 3])
Q_CAMS = np.array([0, 1, 1])
DIST = np.array([
    # A (id 1, cam 0): g0 removed (same id, same cam). Order g2 .15 (pos, rank 1), g1 .2,
    #   g3 .4, g4 .5 (pos, rank 4), g5. AP = (1/1 + 2/4) / 2 = 0.75; INP = 2/4 = 0.5.
    [0.10, 0.20, 0.15, 0.40, 0.50, 0.60],
    # B (id 2, cam 1): g1 removed. Order g3 .1, g4 .5 (tie with g5, smaller index first),
    #   g5 .5 (pos, rank 3), g2, g0. AP = 1/3; INP = 1/3.
    [0.90, 0.50, 0.80, 0.10, 0.50, 0.50],
    # C (id 3, cam 1): g3 (cam 0) at .1 is first: AP = 1, INP = 1.
    [0.30, 0.60, 0.20, 0.10, 0.90, 0.40],
])


def slow_reference(dist, q_ids, g_ids, q_excl, g_excl, max_rank):
    """Obviously correct per-query loop: stable argsort, drop removed items, walk the ranking."""
    cmc_sum, aps, inps, skipped = np.zeros(max_rank), [], [], 0
    for i in range(len(q_ids)):
        order = np.argsort(dist[i], kind="stable")
        kept = [j for j in order if not (g_ids[j] == q_ids[i] and g_excl[j] == q_excl[i])]
        pos_ranks = [r + 1 for r, j in enumerate(kept) if g_ids[j] == q_ids[i]]
        if not pos_ranks:
            skipped += 1
            continue
        aps.append(np.mean([(m + 1) / r for m, r in enumerate(pos_ranks)]))
        inps.append(len(pos_ranks) / pos_ranks[-1])
        cmc_sum += np.arange(1, max_rank + 1) >= pos_ranks[0]
    return cmc_sum / len(aps), float(np.mean(aps)), float(np.mean(inps)), len(aps), skipped


def assert_matches(result, ref):
    cmc, m_ap, m_inp, n_valid, n_skipped = ref
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-12)
    assert result.mAP == pytest.approx(m_ap, abs=1e-12)
    assert result.mINP == pytest.approx(m_inp, abs=1e-12)
    assert (result.num_valid, result.num_skipped) == (n_valid, n_skipped)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hand_computed_three_queries(dtype, ranking_path):
    r = evaluate_rank(DIST.astype(dtype), Q_IDS, G_IDS, Q_CAMS, G_CAMS, max_rank=5)
    # first ranks A 1, B 3, C 1 -> R1 = 2/3, R2 = 2/3, R3.. = 1
    np.testing.assert_allclose(r.cmc, [2 / 3, 2 / 3, 1, 1, 1])
    assert r.mAP == pytest.approx((0.75 + 1 / 3 + 1) / 3)  # 25/36
    assert r.mINP == pytest.approx((0.5 + 1 / 3 + 1) / 3)  # 11/18
    assert (r.num_valid, r.num_skipped) == (3, 0)
    assert r.as_dict("test/") == pytest.approx(
        {"test/mAP": 25 / 36, "test/mINP": 11 / 18, "test/R1": 2 / 3, "test/R5": 1.0,
         "test/R10": float("nan")},
        nan_ok=True)
    assert list(r.as_dict("test/")) == ["test/mAP", "test/mINP", "test/R1", "test/R5", "test/R10"]
    assert len(evaluate_rank(DIST, Q_IDS, G_IDS, Q_CAMS, G_CAMS).cmc) == 50


def test_same_camera_exclusion():
    # Move g1 to camera 2: it is no longer removed for B and becomes a positive.
    # B's order: g3 .1, g1 .5 (pos, rank 2), g4 .5, g5 .5 (pos, rank 4): AP = (1/2 + 2/4)/2 = 0.5
    cams = G_CAMS.copy()
    cams[1] = 2
    r = evaluate_rank(DIST[1:2], Q_IDS[1:2], G_IDS, Q_CAMS[1:2], cams)
    assert r.mAP == pytest.approx(0.5) and r.mINP == pytest.approx(0.5)
    assert r.cmc[0] == 0 and r.cmc[1] == 1


def test_absent_query_id_is_skipped_and_counted():
    dist = np.vstack([DIST, np.zeros((1, 6))])
    r = evaluate_rank(dist, np.append(Q_IDS, 9), G_IDS, np.append(Q_CAMS, 0), G_CAMS, max_rank=5)
    assert (r.num_valid, r.num_skipped) == (3, 1)
    assert r.mAP == pytest.approx(25 / 36)
    with pytest.raises(UserError, match="none of the 1 queries"):
        evaluate_rank(dist[3:], [9], G_IDS, [0], G_CAMS)


def test_msvr310_scene_rule():
    # Query A (id 1, cam 0, scene 5). Scenes of g0..g5: 7, 0, 5, 0, 7, 0.
    # Scene rule removes g2 (same id, scene 5) even though its camera differs, and
    # keeps g0 (same id, same camera, other scene). Order of A: g0 .1 (pos, rank 1),
    # g1 .2, g3 .4, g4 .5 (pos, rank 4): AP = (1 + 2/4)/2 = 0.75, INP = 2/4.
    g_scenes = np.array([7, 0, 5, 0, 7, 0])
    r = evaluate_rank(DIST[:1], Q_IDS[:1], G_IDS, Q_CAMS[:1], G_CAMS,
                      q_scenes=np.array([5]), g_scenes=g_scenes)
    assert r.mAP == pytest.approx(0.75) and r.mINP == pytest.approx(0.5) and r.cmc[0] == 1
    with pytest.raises(UserError, match="give both"):
        evaluate_rank(DIST, Q_IDS, G_IDS, Q_CAMS, G_CAMS, q_scenes=[0, 0, 0])


def test_rgbnt201_self_match_removed():
    # a (id 0, cam 0), b (id 0, cam 1), c (id 1, cam 1), d (id 1, cam 0), unit vectors.
    # a: cos to c .8, d .6, b 0 -> b at rank 3 (a itself removed): AP 1/3; b likewise 1/3.
    # c: d closest (cos .96) -> AP 1; d likewise 1. mAP = (1/3 + 1/3 + 1 + 1)/4 = 2/3.
    # (Counting the query itself would give a: (1/1 + 2/4)/2 = 0.75 instead.)
    feats = np.array([[1, 0], [0, 1], [0.8, 0.6], [0.6, 0.8]], dtype=np.float32)
    r = rgbnt201_protocol(feats, [0, 0, 1, 1], [0, 1, 1, 0], max_rank=4)
    assert r.mAP == pytest.approx(2 / 3, abs=1e-6)
    np.testing.assert_allclose(r.cmc, [0.5, 0.5, 1, 1])
    assert r.mINP == pytest.approx(2 / 3, abs=1e-6)  # INP = P / r_P = AP here (one positive)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_broken_by_gallery_index(dtype, ranking_path):
    # Every distance equal: the ranking is the gallery order. Query (id 1, cam 0);
    # gallery ids 2 1 2 1 on camera 1: positives at ranks 2 and 4 -> AP = (1/2 + 2/4)/2 = 0.5,
    # INP = 2/4. Add -0.0 vs +0.0 (equal floats) to check they tie too.
    dist = np.array([[0.5, 0.5, 0.5, 0.5], [0.0, -0.0, 0.0, -0.0]], dtype=dtype)
    r = evaluate_rank(dist, [1, 1], [2, 1, 2, 1], [0, 0], [1, 1, 1, 1], max_rank=4)
    assert r.mAP == pytest.approx(0.5) and r.mINP == pytest.approx(0.5)
    np.testing.assert_allclose(r.cmc, [0, 1, 1, 1])


def random_case(rng, nq=60, ng=300, dim=16, n_ids=25, n_cams=4):
    """Identity-structured random features; some query ids absent from the gallery."""
    centres = rng.normal(size=(n_ids + 5, dim))
    g_ids = rng.integers(0, n_ids, ng)
    q_ids = rng.integers(0, n_ids + 5, nq)
    g = centres[g_ids] + 1.2 * rng.normal(size=(ng, dim))
    q = centres[q_ids] + 1.2 * rng.normal(size=(nq, dim))
    return (q.astype(np.float32), g.astype(np.float32), q_ids, g_ids,
            rng.integers(0, n_cams, nq), rng.integers(0, n_cams, ng))


@pytest.fixture(params=[1, 2, 4096])
def ranking_path(request, monkeypatch):
    """Run a test with one bin (every item ranked exactly), two bins and many bins."""
    monkeypatch.setattr(rank_module, "_MAX_BINS", request.param)
    return request.param


@pytest.mark.parametrize("seed", [0, 1])
def test_random_against_slow_reference(seed, ranking_path):
    rng = np.random.default_rng(seed)
    q, g, qi, gi, qc, gc = random_case(rng)
    dist = compute_distance_matrix(q, g).numpy()
    ref = slow_reference(dist, qi, gi, qc, gc, 20)
    assert_matches(evaluate_rank(dist, qi, gi, qc, gc, max_rank=20), ref)
    assert_matches(evaluate_features(q, g, qi, gi, qc, gc, max_rank=20, chunk_size=16), ref)
    assert_matches(evaluate_features(torch.from_numpy(q), torch.from_numpy(g), qi, gi, qc, gc,
                                     max_rank=20, metric="cosine"),
                   slow_reference(compute_distance_matrix(q, g, "cosine").numpy(), qi, gi, qc, gc, 20))
    # Many exact ties (distances rounded to 0.05), both float widths, scene rule.
    coarse = np.round(dist * 20) / 20
    qs, gs = rng.integers(0, 3, len(qi)), rng.integers(0, 3, len(gi))
    for dtype in (np.float32, np.float64):
        d = coarse.astype(dtype)
        assert_matches(evaluate_rank(d, qi, gi, qc, gc, max_rank=20, chunk_size=7),
                       slow_reference(d, qi, gi, qc, gc, 20))
        assert_matches(evaluate_rank(d, qi, gi, qc, gc, 20, qs, gs),
                       slow_reference(d, qi, gi, qs, gs, 20))


def test_chunk_size_and_blocks_do_not_change_results(monkeypatch, ranking_path):
    rng = np.random.default_rng(3)
    q, g, qi, gi, qc, gc = random_case(rng, nq=50, ng=200)
    base = rank_stats(compute_distance_matrix(q, g).numpy(), qi, gi, qc, gc)
    monkeypatch.setattr(rank_module, "_BLOCK_ELEMS", 1000)  # force blocks of 5 rows
    for chunk in (1, 7, 50, None):
        r = evaluate_features(q, g, qi, gi, qc, gc, chunk_size=chunk)
        assert r.mAP == pytest.approx(float(base.ap[base.first_rank > 0].mean()), abs=1e-12)
        stats = rank_stats(compute_distance_matrix(q, g).numpy(), qi, gi, qc, gc, chunk_size=chunk)
        for a, b in zip(stats, base):
            np.testing.assert_array_equal(a, b)


def test_bad_input_raises_user_error():
    with pytest.raises(UserError, match="q_ids: expected 3 labels"):
        evaluate_rank(DIST, [1, 2], G_IDS, Q_CAMS, G_CAMS)
    with pytest.raises(UserError, match="metric='manhattan'"):
        evaluate_features(np.ones((3, 4)), np.ones((6, 4)), Q_IDS, G_IDS, Q_CAMS, G_CAMS, metric="manhattan")
    with pytest.raises(UserError, match="NaN"):
        evaluate_features(np.full((3, 4), np.nan), np.ones((6, 4)), Q_IDS, G_IDS, Q_CAMS, G_CAMS)
    with pytest.raises(UserError, match="NaN or inf"):
        evaluate_rank(np.full((3, 6), np.inf), Q_IDS, G_IDS, Q_CAMS, G_CAMS)
    with pytest.raises(UserError, match="non-empty query and gallery"):
        evaluate_rank(np.zeros((3, 0)), Q_IDS, [], Q_CAMS, [])


def test_large_blocks_with_inexact_slot_offsets(monkeypatch):
    # One bin per gallery item and one block of 2,000 rows: slots reach ~6e5, where
    # float32 steps by 1/16, so (row offset + bin) is rounded; the ranks must still
    # match the slow loop. Distances include exact ties, negatives and -0.0 / +0.0.
    monkeypatch.setattr(rank_module, "_ITEMS_PER_BIN", 1)
    monkeypatch.setattr(rank_module, "_BLOCK_ELEMS", 1 << 24)
    rng = np.random.default_rng(5)
    q, g, qi, gi, qc, gc = random_case(rng, nq=2000, ng=300)
    dist = compute_distance_matrix(q, g).numpy()
    dist[::7] = np.round(dist[::7] * 4) / 4 - 0.5
    dist[::11, ::3] = -0.0
    ref = slow_reference(dist, qi, gi, qc, gc, 20)
    assert_matches(evaluate_rank(dist, qi, gi, qc, gc, max_rank=20), ref)
    assert_matches(evaluate_features(q, g, qi, gi, qc, gc, max_rank=20),
                   slow_reference(compute_distance_matrix(q, g).numpy(), qi, gi, qc, gc, 20))
