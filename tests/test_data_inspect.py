"""msreid inspect numbers (summarize) on the Market-style fixture, computed by hand."""

from __future__ import annotations

import pytest

from msreid.data.ingest import ingest
from msreid.data.inspect import SUMMARY_COLUMNS, summarize
from msreid.data.schema import read_manifest
from test_data_fixtures import make_market


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    root = make_market(tmp / "d", ("rgb", "nir"))
    (root / "challenges.csv").write_text(
        "file,challenge\n"
        "bounding_box_train/0003_c001_00001.jpg,glare\n"
        "bounding_box_train/0007_c001_00001.jpg,glare\n"
        "bounding_box_test/0012_c004_00001.jpg,black_night\n")
    ingest("rgbn300", root, tmp / "m")
    return summarize(read_manifest(str(tmp / "m"), columns=SUMMARY_COLUMNS))


def test_split_summary(summary):
    # train: ids 3 (c1, c2) and 7 (c1, c3, c3) -> 5 tuples, 2 ids, cameras {1, 2, 3}
    # query: 10 (c1), 12 (c4); gallery: 10 (c1, c2), 12 (c4) -> cameras {1, 2, 4}
    assert summary["splits"].to_dict("index") == {
        "train": {"tuples": 5, "ids": 2, "cameras": 3},
        "query": {"tuples": 2, "ids": 2, "cameras": 2},
        "gallery": {"tuples": 3, "ids": 2, "cameras": 3},
    }
    assert (summary["layout"], summary["spectra"]) == ("rgbn300", ("rgb", "nir"))
    assert len(summary["fingerprint"]) == 64


def test_challenge_counts(summary):
    counts = summary["challenges"]
    assert counts.loc["glare"].to_dict() == {"train": 2, "gallery": 0}
    assert counts.loc["black_night"].to_dict() == {"train": 0, "gallery": 1}


def test_dataset_statistics(summary):
    stats = summary["statistics"]
    # train views per id: 3 -> {c1, c2} = 2, 7 -> {c1, c3} = 2; tuples per id 2 and 3
    assert stats.loc["train"].to_dict() == {
        "ids": 2, "tuples": 5, "views_min": 2, "views_mean": 2.0, "views_max": 2,
        "tuples_per_id_min": 2, "tuples_per_id_mean": 2.5, "tuples_per_id_max": 3}
    # gallery: 10 -> 2 views / 2 tuples, 12 -> 1 view / 1 tuple
    assert stats.loc["gallery", "views_mean"] == 1.5
    # train+gallery: views [2, 2, 2, 1] -> mean 7/4; tuples per id [2, 3, 2, 1] -> 8 tuples, mean 2
    row = stats.loc["train+gallery"]
    assert (row["ids"], row["tuples"], row["views_min"], row["views_mean"], row["views_max"]) == (
        4, 8, 1, 1.75, 2)
    assert (row["tuples_per_id_min"], row["tuples_per_id_mean"], row["tuples_per_id_max"]) == (1, 2.0, 3)
