"""Missing-modality subsets and per-challenge tables, checked against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from msreid.errors import UserError
from msreid.evaluation import (
    RankResult,
    challenge_table,
    evaluate_subsets,
    spectrum_subsets,
    subset_name,
    subset_table,
)


def test_spectrum_subsets_order_and_names():
    subsets = spectrum_subsets(["rgb", "nir", "tir"])
    assert subsets == [("rgb",), ("nir",), ("tir",), ("rgb", "nir"), ("rgb", "tir"),
                       ("nir", "tir"), ("rgb", "nir", "tir")]
    assert [subset_name(s) for s in subsets] == ["r", "n", "t", "rn", "rt", "nt", "rnt"]
    assert spectrum_subsets(("tir", "rgb")) == [("rgb",), ("tir",), ("rgb", "tir")]  # canonical order
    assert [subset_name(s) for s in spectrum_subsets(["rgb", "nir"])] == ["r", "n", "rn"]  # RGBN300
    with pytest.raises(UserError, match="distinct names"):
        spectrum_subsets(["rgb", "thermal"])


def test_subset_table_rows_and_columns():
    results = {
        "r": RankResult(np.array([0.5, 1.0]), 0.4, 0.2, 2, 1),
        "rn": RankResult(np.array([1.0, 1.0]), 0.9, 0.8, 3, 0),
    }
    table = subset_table(results)
    assert list(table.columns) == ["subset", "spectra", "mAP", "mINP", "R1", "R5", "R10",
                                   "num_valid", "num_skipped"]
    assert list(table["subset"]) == ["r", "rn"]
    assert list(table["spectra"]) == ["rgb", "rgb+nir"]
    assert list(table["mAP"]) == [0.4, 0.9] and list(table["R1"]) == [0.5, 1.0]
    assert list(table["num_skipped"]) == [1, 0]
    assert np.isnan(table["R5"]).all()  # cmc shorter than 5


def test_evaluate_subsets_uses_each_subset():
    # RGBNT201-style hand case (see test_rgbnt201_self_match_removed): with the "rgb"
    # features mAP = 2/3; with any subset containing "nir" each query's positive is
    # nearest (features on two well separated directions), so mAP = 1.
    hard = np.array([[1, 0], [0, 1], [0.8, 0.6], [0.6, 0.8]], dtype=np.float32)
    easy = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    seen = []

    def features_for(subset):
        seen.append(subset)
        f = easy if "nir" in subset else hard
        return f, f

    ids, cams = [0, 0, 1, 1], [0, 1, 1, 0]
    results = evaluate_subsets(features_for, ["rgb", "nir"], ids, ids, cams, cams, max_rank=4)
    assert seen == [("rgb",), ("nir",), ("rgb", "nir")]
    assert list(results) == ["r", "n", "rn"]
    assert results["r"].mAP == pytest.approx(2 / 3, abs=1e-6)
    assert results["n"].mAP == pytest.approx(1.0) and results["rn"].mAP == pytest.approx(1.0)


def test_challenge_table_hand_computed():
    # 1-D features, plain squared Euclidean (normalize=False). Gallery at 0..5, ids
    # 1 2 1 2 1 2, camera 1; queries on camera 0.
    # q0 at 0.1, id 1, "night": order g0 g1 g2 g3 g4 g5, positives at 1, 3, 5:
    #   AP = (1 + 2/3 + 3/5)/3 = 34/45, INP = 3/5.
    # q1 at 5.1, id 2, "night": mirror image: AP = 34/45, INP = 3/5.
    # q2 at 1.2, id 1, "normal": order g1 (.2) g2 (.8) g0 (1.2) g3 g4 g5, positives at
    #   2, 3, 5: AP = (1/2 + 2/3 + 3/5)/3 = 53/90, INP = 3/5, first rank 2.
    # q3, id 7, "normal": no match, skipped. q4: no tag, left out.
    gallery = np.arange(6, dtype=np.float32)[:, None]
    query = np.array([[0.1], [5.1], [1.2], [3.0], [0.0]], dtype=np.float32)
    g_ids, q_ids = [1, 2, 1, 2, 1, 2], [1, 2, 1, 7, 1]
    g_cams, q_cams = [1] * 6, [0] * 5
    tags = ["night", "night", "normal", "normal", None]
    table = challenge_table(query, gallery, q_ids, g_ids, q_cams, g_cams, tags,
                            normalize=False, max_rank=10)
    assert list(table["challenge"]) == ["night", "normal"]
    assert list(table["num_queries"]) == [2, 2]
    assert table["mAP"].tolist() == pytest.approx([34 / 45, 53 / 90])
    assert table["mINP"].tolist() == pytest.approx([3 / 5, 3 / 5])
    assert table["R1"].tolist() == [1.0, 0.0] and table["R5"].tolist() == [1.0, 1.0]
    assert table["num_valid"].tolist() == [2, 1] and table["num_skipped"].tolist() == [0, 1]


def test_challenge_table_without_tags():
    f = np.eye(3, dtype=np.float32)
    args = (f, f, [0, 0, 1], [0, 0, 1], [0, 1, 0], [0, 1, 0])
    assert challenge_table(*args, None) is None
    assert challenge_table(*args, [None, float("nan"), None]) is None
    with pytest.raises(UserError, match="q_challenges: expected 3 tags"):
        challenge_table(*args, ["a"])
