"""Ingest of every released layout from tiny fixtures: counts, ids, labels, cameras, pixels."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from msreid.data import ingest as ingest_mod
from msreid.data.decode import decode_row
from msreid.data.ingest import ingest
from msreid.data.schema import MANIFEST_SCHEMA, manifest_files, manifest_info, read_manifest
from msreid.errors import UserError
from test_data_fixtures import (
    COLOURS,
    MSVR310_DIRS,
    RGBNT201_DIRS,
    decode_file,
    make_market,
    make_msvr310,
    make_rgbnt201,
)


def rows_of(table):
    return table.to_pylist()


def by_split(rows, split):
    return [r for r in rows if r["split"] == split]


def test_rgbnt100_nested_in_rgbir(tmp_path):
    data = make_market(tmp_path / "RGBNT100" / "rgbir", ("rgb", "nir", "tir"))
    info = ingest("rgbnt100", tmp_path / "RGBNT100", tmp_path / "m")
    assert (info.layout, info.spectra, info.num_rows) == ("rgbnt100", ("rgb", "nir", "tir"), 10)
    rows = rows_of(read_manifest(str(tmp_path / "m")))
    # MARKET_TUPLES: train 5 (ids 3, 7), query 2 (ids 10, 12), gallery 3 (ids 10, 12)
    assert [len(by_split(rows, s)) for s in ("train", "query", "gallery")] == [5, 2, 3]
    train = by_split(rows, "train")
    assert [(r["pid"], r["label"], r["camera"]) for r in train] == [
        (3, 0, 0), (3, 0, 1), (7, 1, 0), (7, 1, 2), (7, 1, 2)]  # cameras on disk 1,2,1,3,3
    assert [(r["pid"], r["label"], r["camera"]) for r in by_split(rows, "query")] == [
        (10, None, 0), (12, None, 3)]
    assert {r["scene"] for r in rows} == {None} and {r["challenge"] for r in rows} == {None}
    assert train[0]["files"] == ["bounding_box_train/0003_c001_00001.jpg"]
    # boxes: three 256-wide pieces of a 768x128 image, all in blob 0
    assert [(train[0][f"{s}_src"], train[0][f"{s}_box"]) for s in ("rgb", "nir", "tir")] == [
        (0, [0, 0, 256, 128]), (0, [256, 0, 512, 128]), (0, [512, 0, 768, 128])]
    for r in rows:
        ref = decode_file(data / r["files"][0])  # reference: PIL on the released file, sliced
        got = decode_row(r, ("rgb", "nir", "tir"))
        for i, s in enumerate(("rgb", "nir", "tir")):
            assert got[s].shape == (128, 256, 3) and got[s].dtype == np.uint8
            np.testing.assert_array_equal(got[s], ref[:, 256 * i:256 * (i + 1)])
            # right piece in the right place: mean colour of the fixture piece (+ ramp <= 31)
            assert np.abs(got[s].mean(axis=(0, 1)) - np.array(COLOURS[s])).max() < 20


def test_rgbn300_has_no_tir(tmp_path):
    make_market(tmp_path / "d", ("rgb", "nir"))
    ingest("rgbn300", tmp_path / "d", tmp_path / "m")
    table = read_manifest(str(tmp_path / "m"))
    row = table.slice(0, 1).to_pylist()[0]
    assert (row["rgb_box"], row["nir_box"]) == ([0, 0, 256, 128], [256, 0, 512, 128])
    assert row["tir_src"] is None and row["tir_box"] is None
    assert manifest_info(str(tmp_path / "m")).spectra == ("rgb", "nir")
    assert table.schema.equals(MANIFEST_SCHEMA, check_metadata=False)


def test_rgbnt201_query_equals_gallery(tmp_path):
    data = make_rgbnt201(tmp_path / "ds")
    ingest("rgbnt201", tmp_path / "ds", tmp_path / "m")
    rows = rows_of(read_manifest(str(tmp_path / "m")))
    # train_171: 3 tuples (ids 1, 1, 4); test: 3 tuples, each once as query and once as gallery
    assert [len(by_split(rows, s)) for s in ("train", "query", "gallery")] == [3, 3, 3]
    assert [(r["pid"], r["label"], r["camera"]) for r in by_split(rows, "train")] == [
        (1, 0, 0), (1, 0, 2), (4, 1, 1)]  # cam1, cam3, cam2 -> 0, 2, 1
    q, g = by_split(rows, "query"), by_split(rows, "gallery")
    assert [r["files"] for r in q] == [r["files"] for r in g]
    assert [(r["pid"], r["camera"]) for r in q] == [(100, 0), (100, 1), (105, 3)]
    assert q[0]["files"] == ["test/RGB/000100_cam1_0_00.jpg", "test/NI/000100_cam1_0_00.jpg",
                             "test/TI/000100_cam1_0_00.jpg"]
    for r in rows:
        got = decode_row(r, ("rgb", "nir", "tir"))
        for s, d in RGBNT201_DIRS.items():
            ref = decode_file(data / r["files"][0].replace("/RGB/", f"/{d}/"))
            assert ref.shape == (128, 64, 3)
            np.testing.assert_array_equal(got[s], ref)


def test_msvr310_scene_and_camera(tmp_path):
    data = make_msvr310(tmp_path / "d")
    ingest("msvr310", tmp_path / "d", tmp_path / "m")
    rows = rows_of(read_manifest(str(tmp_path / "m")))
    assert [len(by_split(rows, s)) for s in ("train", "query", "gallery")] == [3, 1, 2]
    # 0094_s023_v1_007 -> id 94, scene 23, camera 1 (char 11, already 0-based)
    assert [(r["pid"], r["label"], r["scene"], r["camera"]) for r in rows] == [
        (94, 0, 23, 1), (94, 0, 23, 2), (101, 1, 5, 0),
        (200, None, 11, 3),
        (200, None, 11, 4), (200, None, 12, 3)]
    assert rows[0]["files"][2] == "bounding_box_train/0094/th/0094_s023_v1_007.jpg"
    got = decode_row(rows[3], ("tir",))
    np.testing.assert_array_equal(got["tir"], decode_file(data / "query3/0200/th/0200_s011_v3_002.jpg"))
    assert set(MSVR310_DIRS) == {"rgb", "nir", "tir"}


@pytest.mark.parametrize("beside_rgbir", [False, True])
def test_challenge_sidecar(tmp_path, beside_rgbir):
    data = make_market(tmp_path / "d" / "rgbir", ("rgb", "nir", "tir"))
    sidecar = (tmp_path / "d" if beside_rgbir else data) / "challenges.csv"
    sidecar.write_text("file,challenge\n"
                       "bounding_box_train/0003_c001_00001.jpg,glare\n"
                       "query/0010_c001_00001.jpg,black_night\n"
                       "bounding_box_test/0010_c001_00001.jpg,black_night\n")
    info = ingest("rgbnt100", tmp_path / "d", tmp_path / "m")
    rows = rows_of(read_manifest(str(tmp_path / "m"), columns=["split", "files", "challenge"]))
    tagged = {r["files"][0]: r["challenge"] for r in rows if r["challenge"] is not None}
    assert tagged == {"bounding_box_train/0003_c001_00001.jpg": "glare",
                      "query/0010_c001_00001.jpg": "black_night",
                      "bounding_box_test/0010_c001_00001.jpg": "black_night"}
    # the sidecar is part of the fingerprint
    sidecar.write_text(sidecar.read_text().replace("glare", "shadow"))
    assert ingest("rgbnt100", tmp_path / "d", tmp_path / "m2").fingerprint != info.fingerprint


def test_fingerprint_changes_with_bytes_and_is_stable(tmp_path):
    data = make_market(tmp_path / "a", ("rgb", "nir"))
    f1 = ingest("rgbn300", data, tmp_path / "m1").fingerprint
    assert ingest("rgbn300", data, tmp_path / "m2").fingerprint == f1
    path = data / "query" / "0010_c001_00001.jpg"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 1  # a bit inside the entropy-coded data, just before the EOI marker
    path.write_bytes(bytes(raw))
    assert ingest("rgbn300", data, tmp_path / "m3").fingerprint != f1


def test_plan_parts():
    # 4 MiB groups of 40,000-byte rows: 4,194,304 // 40,000 = 104 rows; 128 MiB / 4 MiB = 32 groups
    assert ingest_mod.plan_parts(40_000) == (104, 104 * 32)
    assert ingest_mod.plan_parts(10 << 20) == (1, 32)  # rows larger than a group: one per group


def test_file_uri_parts_and_row_groups(tmp_path, monkeypatch):
    make_market(tmp_path / "d", ("rgb", "nir", "tir"))
    # 1-byte groups -> 1 row per group; 4-byte files -> 4 groups = 4 rows per part:
    # 10 rows -> parts of 4, 4, 2 rows
    monkeypatch.setattr(ingest_mod, "TARGET_ROW_GROUP_BYTES", 1)
    monkeypatch.setattr(ingest_mod, "TARGET_FILE_BYTES", 4)
    ingest("rgbnt100", tmp_path / "d", tmp_path / "m")
    files = manifest_files(str(tmp_path / "m"))
    assert [f.rsplit("/", 1)[1] for f in files] == [f"part-0000{i}.parquet" for i in range(3)]
    meta = [pq.ParquetFile(f).metadata for f in files]
    assert [(m.num_rows, m.num_row_groups) for m in meta] == [(4, 4), (4, 4), (2, 2)]
    uri = (tmp_path / "m").as_uri()
    assert uri.startswith("file://")
    table = read_manifest(uri, columns=["split", "pid"])
    # rows keep the written order across parts: train ids 3,3,7,7,7, query 10,12, gallery 10,10,12
    assert table.column("pid").to_pylist() == [3, 3, 7, 7, 7, 10, 12, 10, 10, 12]
    assert manifest_info(uri).num_rows == 10
    # Selected global rows across parts and groups, in the asked order, repeats kept:
    # rows 9, 0, 5, 9 are gallery 12, train 3, query 10, gallery 12 (the list above).
    picked = read_manifest(uri, columns=["split", "pid"], rows=[9, 0, 5, 9])
    assert picked.column("pid").to_pylist() == [12, 3, 10, 12]
    assert picked.column("split").to_pylist() == ["gallery", "train", "query", "gallery"]
    assert read_manifest(uri, columns=["pid"], rows=[]).num_rows == 0
    with pytest.raises(UserError, match=r"row 10 is out of range \(0\.\.9\)"):
        read_manifest(uri, rows=[10])


def test_decode_row_accepts_pandas_rows(tmp_path):
    data = make_market(tmp_path / "d", ("rgb", "nir"))
    ingest("rgbn300", data, tmp_path / "m")
    row = read_manifest(str(tmp_path / "m")).to_pandas().iloc[0].to_dict()  # numpy arrays inside
    got = decode_row(row, ("nir",))
    ref = decode_file(data / row["files"][0])
    np.testing.assert_array_equal(got["nir"], ref[:, 256:512])
    with pytest.raises(KeyError, match="tir"):
        decode_row(row, ("tir",))


def test_overwrite_replaces_existing_manifest(tmp_path):
    make_market(tmp_path / "d", ("rgb", "nir"))
    out = tmp_path / "m"
    ingest("rgbnt100", make_market(tmp_path / "d3", ("rgb", "nir", "tir")), out)
    ingest("rgbn300", tmp_path / "d", out, overwrite=True)
    assert manifest_info(str(out)).layout == "rgbn300"
    (tmp_path / "d3").rename(tmp_path / "gone")
    assert sorted(p.name for p in out.iterdir()) == ["_SHA256SUMS", "part-00000.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "gone", "m"]  # no temp dirs left


def test_piece_size_auto_for_synthetic_sizes(tmp_path):
    data = make_market(tmp_path / "d", ("rgb", "nir", "tir"), piece_size=(128, 64))
    ingest("rgbnt100", data, tmp_path / "m", piece_size="auto")
    row = read_manifest(str(tmp_path / "m")).slice(0, 1).to_pylist()[0]
    assert row["tir_box"] == [256, 0, 384, 64]  # third 128-wide piece of a 384x64 image


def test_uniform_other_size_suggests_piece_size(tmp_path):
    data = make_market(tmp_path / "d", ("rgb", "nir"), piece_size=(128, 64))
    with pytest.raises(UserError, match=r"every image is 256x64.*--piece-size auto \(here 128x64\)"):
        ingest("rgbn300", data, tmp_path / "m")
    ingest("rgbn300", data, tmp_path / "m", piece_size=(128, 64))
    assert read_manifest(str(tmp_path / "m")).num_rows == 10
