"""Bad inputs: each gives one clear UserError naming the file, and leaves no output behind."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from msreid.cli import main as cli_main
from msreid.data.ingest import ingest
from msreid.data.schema import read_manifest
from msreid.errors import UserError
from test_data_fixtures import (
    MARKET_TUPLES,
    make_market,
    make_msvr310,
    make_rgbnt201,
    market_name,
    piece,
    save_jpeg,
)

RGBNT100 = ("rgb", "nir", "tir")


def fails(tmp_path: Path, layout: str, root: Path, *needles: str) -> str:
    """Ingest into tmp_path/out must raise a UserError containing every needle and write nothing."""
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError) as info:
        ingest(layout, root, tmp_path / "out")
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out/, no .out.tmp-*
    return message


def test_corrupt_jpeg(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    path = root / "bounding_box_train" / market_name(7, 3, 2)
    path.write_bytes(path.read_bytes()[:300])  # header survives, image data is cut
    msg = fails(tmp_path, "rgbnt100", root, "bounding_box_train/0007_c003_00002.jpg", "does not decode")
    assert "1 problem(s)" in msg


def test_not_an_image(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    (root / "query" / market_name(10, 1, 1)).write_bytes(b"not a jpeg at all")
    fails(tmp_path, "rgbnt100", root, "query/0010_c001_00001.jpg", "does not decode")


def test_wrong_image_size(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    save_jpeg(root / "bounding_box_test" / market_name(12, 4, 1), piece("rgb", 128, 512, 0))
    fails(tmp_path, "rgbnt100", root, "bounding_box_test/0012_c004_00001.jpg",
          "512x128", "768x128")


def test_rgbn300_rejects_three_spectra_images(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)  # 768 wide, RGBN300 needs 512
    msg = fails(tmp_path, "rgbn300", root, "768x128", "512x128")
    assert "10 problem(s)" in msg  # every one of the 10 fixture images


def test_unparsable_name(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    save_jpeg(root / "bounding_box_train" / "car_front.jpg", piece("rgb", 128, 768, 0))
    fails(tmp_path, "rgbnt100", root, "bounding_box_train/car_front.jpg", "does not parse")


def test_id_out_of_range(tmp_path):
    tuples = {**MARKET_TUPLES, "bounding_box_train": MARKET_TUPLES["bounding_box_train"] + [(601, 1, 1)]}
    root = make_market(tmp_path / "d", RGBNT100, tuples)
    fails(tmp_path, "rgbnt100", root, "bounding_box_train/0601_c001_00001.jpg", "id 601 out of range 1..600")


def test_camera_out_of_range(tmp_path):
    tuples = {**MARKET_TUPLES, "bounding_box_test": MARKET_TUPLES["bounding_box_test"] + [(10, 9, 5)]}
    root = make_market(tmp_path / "d", RGBNT100, tuples)
    fails(tmp_path, "rgbnt100", root, "bounding_box_test/0010_c009_00005.jpg", "camera 9 out of range 1..8")


def test_missing_folder(tmp_path):
    tuples = {k: v for k, v in MARKET_TUPLES.items() if k != "query"}
    root = make_market(tmp_path / "d", RGBNT100, tuples)
    fails(tmp_path, "rgbnt100", root, "query/", "missing folder")


def test_empty_split(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100, {**MARKET_TUPLES, "query": []})
    fails(tmp_path, "rgbnt100", root, "query/", "split 'query' is empty")


def test_query_id_absent_from_gallery(tmp_path):
    tuples = {**MARKET_TUPLES, "query": MARKET_TUPLES["query"] + [(55, 2, 1)]}
    root = make_market(tmp_path / "d", RGBNT100, tuples)
    fails(tmp_path, "rgbnt100", root, "query/0055_c002_00001.jpg", "query id 55 has no tuple in the gallery")


def test_every_problem_listed_up_to_twenty(tmp_path):
    # 25 unparsable names + 1 out-of-range camera = 26 problems; 20 listed, "6 more"
    root = make_market(tmp_path / "d", RGBNT100)
    image = piece("rgb", 128, 768, 0)
    for i in range(25):
        save_jpeg(root / "bounding_box_train" / f"x{i:02d}.jpg", image)
    save_jpeg(root / "query" / market_name(10, 0, 9), image)
    msg = fails(tmp_path, "rgbnt100", root, "26 problem(s)", "... and 6 more")
    assert sum(line.startswith("  ") and "does not parse" in line for line in msg.splitlines()) == 20


def test_rgbnt201_missing_spectrum_and_unequal_sizes(tmp_path):
    root = make_rgbnt201(tmp_path / "d")
    (root / "train_171" / "TI" / "000004_cam2_1_00.jpg").unlink()
    save_jpeg(root / "test" / "NI" / "000105_cam4_2_00.jpg", piece("nir", 100, 64, 0))
    msg = fails(tmp_path, "rgbnt201", root,
                "train_171/RGB/000004_cam2_1_00.jpg", "no file of that name in TI/",
                "test/RGB/000105_cam4_2_00.jpg", "differ in size")
    assert "2 problem(s)" in msg  # the test/ tuple serves query and gallery but is reported once


def test_msvr310_folder_id_mismatch(tmp_path):
    root = make_msvr310(tmp_path / "d")
    for d in ("vis", "ni", "th"):
        save_jpeg(root / "bounding_box_test" / "0200" / d / "0201_s011_v1_009.jpg", piece("rgb", 48, 96, 0))
    fails(tmp_path, "msvr310", root, "bounding_box_test/0200/vis/0201_s011_v1_009.jpg", "folder 0200/")


def test_sidecar_names_missing_file(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    (root / "challenges.csv").write_text("file,challenge\nquery/9999_c001_00001.jpg,glare\n")
    fails(tmp_path, "rgbnt100", root, "query/9999_c001_00001.jpg", "no such file")


def test_refuses_non_empty_destination(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=r"not a msreid manifest \(keep.txt\)"):
        ingest("rgbnt100", root, tmp_path / "out", overwrite=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_cli_exit_code_2(tmp_path, capsys):
    root = make_market(tmp_path / "d", RGBNT100, {**MARKET_TUPLES, "query": []})
    code = cli_main(["ingest", "--layout", "rgbnt100", "--root", str(root), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("msreid ingest: error: ") and "split 'query' is empty" in err
    assert not (tmp_path / "out").exists()


def test_cli_success_and_inspect(tmp_path, capsys):
    root = make_market(tmp_path / "d", RGBNT100)
    out = str(tmp_path / "out")
    assert cli_main(["ingest", "--layout", "rgbnt100", "--root", str(root), "--out", out]) == 0
    assert "wrote 10 tuples" in capsys.readouterr().out
    assert cli_main(["inspect", out]) == 0
    text = capsys.readouterr().out
    assert "challenges: none" in text and "tuples     10" in text


def test_read_manifest_rejects_foreign_schema(tmp_path):
    (tmp_path / "m").mkdir()
    schema = pa.schema([pa.field("split", pa.string(), nullable=False), ("pid", pa.int64())])
    table = pa.table({"split": ["train"], "pid": [1]}, schema=schema)
    pq.write_table(table, tmp_path / "m" / "part-00000.parquet")
    with pytest.raises(UserError, match=r"part-00000\.parquet: column 'pid' is int64"):
        read_manifest(str(tmp_path / "m"))
    with pytest.raises(UserError, match="not found"):
        read_manifest(str(tmp_path / "nowhere"))


def test_ingest_refuses_remote_out(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    with pytest.raises(UserError, match="local directories only"):
        ingest("rgbnt100", root, "s3://bucket/m")
    ingest("rgbnt100", (tmp_path / "d").as_uri(), (tmp_path / "m").as_uri())  # file:// is local
    assert read_manifest(str(tmp_path / "m")).num_rows == 10
