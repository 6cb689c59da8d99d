"""The query x gallery spectrum matrix: diagonal = missing-modality rows, off-diagonal cells
against a slow per-query reference written here, the seed summary by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from msreid.evaluation import (
    cross_spectral_matrix,
    evaluate_subsets,
    matrix_table,
    mean_std_over_seeds,
    spectrum_subsets,
    subset_name,
    subset_table,
)
from msreid.evaluation.cross_spectral import cell_value, off_diagonal_mean
from msreid.train.evaluate import rank_features, spectrum_matrix
from msreid.train.sampling import RowMeta


def _reference(query, gallery, q_ids, g_ids, q_keys, g_keys, max_rank=10):
    """One query at a time, in plain python: squared euclidean on L2-normalised rows, same id
    + same camera (or scene) removed, ties by gallery index. Returns (mAP, mINP, cmc)."""
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    aps, inps, firsts = [], [], []
    for i in range(len(qn)):
        items = []
        for j in range(len(gn)):
            if g_ids[j] == q_ids[i] and g_keys[j] == q_keys[i]:
                continue
            d = float(sum((float(a) - float(b)) ** 2 for a, b in zip(qn[i], gn[j])))
            items.append((d, j))
        items.sort()
        ranks = [r + 1 for r, (_, j) in enumerate(items) if g_ids[j] == q_ids[i]]
        if not ranks:
            continue
        aps.append(sum((m + 1) / r for m, r in enumerate(ranks)) / len(ranks))
        inps.append(len(ranks) / ranks[-1])
        firsts.append(ranks[0])
    cmc = [sum(f <= k + 1 for f in firsts) / len(firsts) for k in range(max_rank)]
    return float(np.mean(aps)), float(np.mean(inps)), cmc


@pytest.fixture(scope="module")
def data():
    """12 queries, 30 gallery items, 6 ids, 3 cameras, 3 scenes; per-subset features that
    differ (each subset's features are its own noisy copy), so every pair differs."""
    rng = np.random.default_rng(0)
    q_ids, g_ids = np.repeat(np.arange(6), 2), np.repeat(np.arange(6), 5)
    q_cams, g_cams = rng.integers(0, 3, 12), rng.integers(0, 3, 30)
    q_scenes, g_scenes = rng.integers(0, 3, 12), rng.integers(0, 3, 30)
    centers = rng.normal(size=(6, 8))
    feats = {}
    for s in spectrum_subsets(["rgb", "nir", "tir"]):
        noise = 1.5 / len(s)
        feats[subset_name(s)] = (
            (centers[q_ids] + noise * rng.normal(size=(12, 8))).astype(np.float32),
            (centers[g_ids] + noise * rng.normal(size=(30, 8))).astype(np.float32))
    return dict(q_ids=q_ids, g_ids=g_ids, q_cams=q_cams, g_cams=g_cams, q_scenes=q_scenes,
                g_scenes=g_scenes, feats=feats)


def _matrix(data, scenes=False):
    extra = (data["q_scenes"], data["g_scenes"]) if scenes else ()
    return cross_spectral_matrix(lambda s: data["feats"][subset_name(s)], ["rgb", "nir", "tir"],
                                 data["q_ids"], data["g_ids"], data["q_cams"], data["g_cams"],
                                 *extra, max_rank=10)


@pytest.mark.parametrize("scenes", [False, True])
def test_diagonal_equals_the_missing_modality_rows_exactly(data, scenes):
    matrix = _matrix(data, scenes)
    extra = (data["q_scenes"], data["g_scenes"]) if scenes else ()
    rows = evaluate_subsets(lambda s: data["feats"][subset_name(s)], ["rgb", "nir", "tir"],
                            data["q_ids"], data["g_ids"], data["q_cams"], data["g_cams"],
                            *extra, max_rank=10)
    assert list(matrix)[:7] == [("r", k) for k in ["r", "n", "t", "rn", "rt", "nt", "rnt"]]
    assert len(matrix) == 49
    for key, res in rows.items():
        diag = matrix[key, key]
        assert (diag.mAP, diag.mINP, diag.num_valid, diag.num_skipped) == \
            (res.mAP, res.mINP, res.num_valid, res.num_skipped)
        assert np.array_equal(diag.cmc, res.cmc)
    # and the CSV's diagonal is the missing-modality table's row, in %, to 2 decimals
    table, mm = matrix_table(matrix), subset_table(rows)
    for _, row in mm.iterrows():
        k = row["subset"]
        for m in ("mAP", "R1", "R5", "R10", "mINP"):
            assert cell_value(table, k, k, m) == round(100 * row[m], 2)


@pytest.mark.parametrize("scenes", [False, True])
def test_off_diagonal_cells_match_a_slow_reference(data, scenes):
    matrix = _matrix(data, scenes)
    keys = ("q_scenes", "g_scenes") if scenes else ("q_cams", "g_cams")
    checked = 0
    for (qa, gb), res in matrix.items():
        if qa == gb:
            continue
        m_ap, m_inp, cmc = _reference(data["feats"][qa][0], data["feats"][gb][1], data["q_ids"],
                                      data["g_ids"], data[keys[0]], data[keys[1]])
        assert res.mAP == pytest.approx(m_ap, abs=1e-9), (qa, gb)
        assert res.mINP == pytest.approx(m_inp, abs=1e-9), (qa, gb)
        assert list(res.cmc) == pytest.approx(cmc), (qa, gb)
        checked += 1
    assert checked == 42
    # the pairs really differ (a matrix that ignored the gallery subset would pass nothing above)
    assert len({round(r.mAP, 9) for r in matrix.values()}) > 20


def test_two_spectra_give_a_3_by_3_matrix(data):
    matrix = cross_spectral_matrix(lambda s: data["feats"][subset_name(s)], ["rgb", "nir"],
                                   data["q_ids"], data["g_ids"], data["q_cams"], data["g_cams"])
    assert list(matrix) == [(a, b) for a in ("r", "n", "rn") for b in ("r", "n", "rn")]


def test_trainer_path_diagonal_is_rank_features(data):
    """train.evaluate.spectrum_matrix (rows in any order) -> the diagonal is rank_features'."""
    n_q, n_g = 12, 30
    query, gallery = np.arange(n_q), np.arange(n_q, n_q + n_g)
    labels = RowMeta(split=np.array(["query"] * n_q + ["gallery"] * n_g),
                     pid=np.concatenate([data["q_ids"], data["g_ids"]]),
                     camera=np.concatenate([data["q_cams"], data["g_cams"]]),
                     scene=np.full(n_q + n_g, -1), challenge=np.full(n_q + n_g, None))
    perm = np.random.default_rng(1).permutation(n_q + n_g)  # batches out of manifest order
    import torch
    feats = {k: torch.from_numpy(np.concatenate([q, g])[perm]) for k, (q, g) in data["feats"].items()}
    matrix = spectrum_matrix(feats, ("rgb", "nir", "tir"), perm, query, gallery, labels)
    for k in feats:
        ref = rank_features(feats[k], perm, query, gallery, labels)
        assert matrix[k, k].mAP == ref.mAP and np.array_equal(matrix[k, k].cmc, ref.cmc)
    direct = _matrix(data)
    assert matrix["nt", "rnt"].mAP == pytest.approx(direct["nt", "rnt"].mAP, abs=1e-12)


def test_mean_std_over_seeds_by_hand():
    a = pd.DataFrame({"query": ["r", "r"], "gallery": ["r", "n"], "mAP": [50.0, 10.0],
                      "R1": [60.0, 20.0], "R5": [1.0, 1.0], "R10": [1.0, 1.0], "mINP": [1.0, 1.0]})
    b = a.assign(mAP=[54.0, 12.0])
    out = mean_std_over_seeds([a, b])
    assert list(out["query"]) == ["r", "r"] and list(out["gallery"]) == ["r", "n"]
    assert list(out["mAP"]) == [52.0, 11.0]
    # sample std of {50, 54}: sqrt(((-2)^2 + 2^2) / 1) = 2.83; of {10, 12}: 1.41
    assert list(out["mAP_std"]) == [2.83, 1.41]
    assert list(out["R1_std"]) == [0.0, 0.0] and list(out["seeds"]) == [2, 2]
    assert math.isnan(mean_std_over_seeds([a])["mAP_std"][0])  # one seed: no spread
    assert off_diagonal_mean(out) == 11.0


def test_matrix_table_is_in_percent_rounded():
    from msreid.evaluation import RankResult

    res = RankResult(np.array([0.123456, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.987654]),
                     0.333333, 0.1, 3, 0)
    table = matrix_table({("r", "n"): res})
    assert list(table.columns) == ["query", "gallery", "mAP", "R1", "R5", "R10", "mINP"]
    assert table.iloc[0].tolist() == ["r", "n", 33.33, 12.35, 50.0, 98.77, 10.0]


@pytest.mark.timeout(180)
def test_cost_script_runs_as_documented_at_a_tiny_size():
    """perf/cross_spectral_cost.py (docs/PERFORMANCE.md) as a user runs it, tiny sizes."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "perf" / "cross_spectral_cost.py"),
                          "--backbone", "test_resnet", "--size", "32", "64", "--sample", "4",
                          "--batch", "4", "--scale", "40", "120", "16", "--pairs", "6"],
                         capture_output=True, text=True, timeout=170, cwd=root)
    assert out.returncode == 0, out.stderr
    assert "42 off-diagonal rankings (the matrix's cost; 6 timed)" in out.stdout
    assert "ratio extra / baseline, wall:" in out.stdout
