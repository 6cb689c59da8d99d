"""Entries that cannot be read at ingest are offenders listed with all others (issue 11).

Before: a PermissionError escaped as a traceback after one file; folders named
like images, dangling symlinks and symlink loops were skipped silently (exit 0,
same fingerprint); a zero-byte file was named ``<_io.BytesIO object at 0x..>``;
ids shared by train and test were accepted without a word.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from msreid.cli import main as cli_main
from msreid.data.ingest import ingest
from msreid.data.schema import read_manifest
from msreid.errors import UserError
from test_data_fixtures import MARKET_TUPLES, make_market, make_msvr310, market_name

RGBNT100 = ("rgb", "nir", "tir")


def problems(tmp_path: Path, root: Path, layout: str = "rgbnt100") -> str:
    with pytest.raises(UserError) as info:
        ingest(layout, root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    return str(info.value)


def make_unreadable(path: Path, monkeypatch) -> None:
    """chmod 000; as root (which reads anyway: CAP_DAC_OVERRIDE) also make reading it fail
    with the PermissionError a normal user gets from the kernel."""
    path.chmod(0)
    if os.geteuid() == 0:
        real = Path.read_bytes

        def read_bytes(self):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)


def test_every_unreadable_file_is_listed(tmp_path, monkeypatch):
    root = make_market(tmp_path / "d", RGBNT100)
    first = root / "bounding_box_train" / market_name(3, 1, 1)
    second = root / "bounding_box_test" / market_name(10, 2, 2)
    make_unreadable(first, monkeypatch)
    make_unreadable(second, monkeypatch)
    msg = problems(tmp_path, root)
    assert "2 problem(s)" in msg, msg
    assert "bounding_box_train/0003_c001_00001.jpg: cannot be read (permission denied)" in msg
    assert "bounding_box_test/0010_c002_00002.jpg: cannot be read (permission denied)" in msg


def test_folder_named_like_an_image_is_an_offender(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    (root / "bounding_box_train" / market_name(3, 1, 9)).mkdir()
    msg = problems(tmp_path, root)
    assert "bounding_box_train/0003_c001_00009.jpg: is a folder named like an image" in msg


def test_dangling_symlink_and_loop_are_offenders(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    dangling = root / "bounding_box_train" / market_name(7, 1, 8)
    dangling.symlink_to(tmp_path / "gone.jpg")
    loop = root / "bounding_box_train" / market_name(7, 2, 9)
    loop.symlink_to(loop.name)  # points to itself
    msg = problems(tmp_path, root)
    assert "2 problem(s)" in msg, msg
    gone = tmp_path / "gone.jpg"
    assert f"bounding_box_train/0007_c001_00008.jpg: dangling symlink (points to {gone}" in msg
    assert "bounding_box_train/0007_c002_00009.jpg: symlink loop" in msg


@pytest.mark.timeout(60)
def test_fifo_named_like_an_image_is_an_offender_not_a_hang(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    os.mkfifo(root / "query" / market_name(10, 3, 3))  # reading it would wait for a writer
    msg = problems(tmp_path, root)
    assert "query/0010_c003_00003.jpg: is not a regular file (a FIFO, socket or device)" in msg


def test_working_symlink_is_read(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    target = root / "bounding_box_train" / market_name(7, 3, 3)
    target.rename(tmp_path / "elsewhere.jpg")
    target.symlink_to(tmp_path / "elsewhere.jpg")
    ingest("rgbnt100", root, tmp_path / "m")
    assert read_manifest(str(tmp_path / "m")).num_rows == 10


def test_msvr310_dangling_vehicle_folder_link(tmp_path):
    root = make_msvr310(tmp_path / "d")
    (root / "bounding_box_train" / "0777").symlink_to(tmp_path / "nowhere")
    msg = problems(tmp_path, root, "msvr310")
    assert "bounding_box_train/0777: symlink to no folder" in msg


def test_zero_byte_file_is_named(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100)
    (root / "query" / market_name(10, 1, 1)).write_bytes(b"")
    (root / "query" / market_name(12, 4, 1)).write_bytes(b"GIF89a not really")
    msg = problems(tmp_path, root)
    assert "query/0010_c001_00001.jpg: is empty (0 bytes)" in msg
    assert "query/0012_c004_00001.jpg: does not decode as an image (not a format PIL reads)" in msg
    assert "BytesIO" not in msg


SHARED = {**MARKET_TUPLES, "bounding_box_train": [*MARKET_TUPLES["bounding_box_train"], (12, 2, 7)]}


def test_train_id_in_test_split_is_refused(tmp_path):
    root = make_market(tmp_path / "d", RGBNT100, SHARED)
    msg = problems(tmp_path, root)
    assert "1 problem(s)" in msg and "query/0012_c004_00001.jpg: id 12 is also a train id" in msg
    assert "--allow-shared-ids" in msg


def test_allow_shared_ids_warns_and_writes(tmp_path, capsys, caplog):
    root = make_market(tmp_path / "d", RGBNT100, SHARED)
    with caplog.at_level(logging.WARNING, logger="msreid.data.ingest"):
        code = cli_main(["ingest", "--layout", "rgbnt100", "--root", str(root), "--out",
                         str(tmp_path / "m"), "--allow-shared-ids"])
    assert code == 0
    assert "1 id(s) are both train and query/gallery ids (first: [12])" in caplog.text
    rows = read_manifest(str(tmp_path / "m"), columns=["split", "pid"]).to_pylist()
    assert sorted({r["split"] for r in rows if r["pid"] == 12}) == ["gallery", "query", "train"]
