"""`msreid ingest --out`: never the dataset, never a folder of other files (issue 11, data loss).

Each case snapshots the bytes of every file under tmp_path before the call and
checks afterwards that nothing was deleted or changed.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from msreid.cli import main as cli_main
from msreid.data import ingest as ingest_mod
from msreid.data.ingest import ingest
from msreid.data.schema import read_manifest
from msreid.errors import UserError
from test_data_fixtures import make_market

RGBNT100 = ("rgb", "nir", "tir")


def snapshot(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


def refused(tmp_path: Path, root: Path, out: Path, needle: str, overwrite: bool = True) -> str:
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as info:
        ingest("rgbnt100", root, out, overwrite=overwrite)
    assert needle in str(info.value), str(info.value)
    assert snapshot(tmp_path) == before  # nothing deleted, nothing added (no temp dirs)
    return str(info.value)


def test_out_equal_to_root_is_refused(tmp_path):
    root = make_market(tmp_path / "DATA", RGBNT100)
    refused(tmp_path, root, root, "is the dataset folder --root")


def test_out_parent_of_root_is_refused(tmp_path):
    root = make_market(tmp_path / "P" / "DATA" / "rgbir", RGBNT100)
    refused(tmp_path, tmp_path / "P" / "DATA", tmp_path / "P", "contains the dataset")
    refused(tmp_path, root, tmp_path / "P" / "DATA", "contains the dataset")  # --root at rgbir/


def test_out_inside_root_is_refused(tmp_path):
    root = make_market(tmp_path / "DATA", RGBNT100)
    refused(tmp_path, root, root / "manifest", "is inside the dataset")
    refused(tmp_path, root, root / "query", "is inside the dataset")


def test_symlink_to_root_is_refused(tmp_path):
    root = make_market(tmp_path / "DATA", RGBNT100)
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    msg = refused(tmp_path, root, tmp_path / "link", "is the dataset folder")
    assert str(root) in msg  # the resolved path is shown


def test_folder_of_other_files_is_refused_even_with_overwrite(tmp_path):
    root = make_market(tmp_path / "DATA", RGBNT100)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    msg = refused(tmp_path, root, out, "not a msreid manifest")
    assert "notes.txt" in msg and "sub/" in msg


def test_manifest_plus_other_file_is_refused(tmp_path):
    root = make_market(tmp_path / "DATA", RGBNT100)
    ingest("rgbnt100", root, tmp_path / "m")
    (tmp_path / "m" / "README").write_text("keep me")
    refused(tmp_path, root, tmp_path / "m", "README")


def test_foreign_parquet_is_not_a_manifest(tmp_path):
    root = make_market(tmp_path / "DATA", RGBNT100)
    (tmp_path / "out").mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "out" / "part-00000.parquet")
    refused(tmp_path, root, tmp_path / "out", "part-00000.parquet (no msreid metadata)")
    (tmp_path / "out" / "part-00000.parquet").write_bytes(b"garbage")
    from msreid.data.schema import foreign_entries
    assert foreign_entries(tmp_path / "out") == ["part-00000.parquet (not a readable Parquet file)"]


def test_previous_manifest_needs_overwrite_then_is_replaced(tmp_path):
    root = make_market(tmp_path / "DATA", RGBNT100)
    ingest("rgbnt100", root, tmp_path / "m")
    refused(tmp_path, root, tmp_path / "m", "pass --overwrite", overwrite=False)
    data_before = snapshot(root)
    ingest("rgbnt100", root, tmp_path / "m", overwrite=True)
    assert snapshot(root) == data_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DATA", "m"]  # no temp dirs left
    assert read_manifest(str(tmp_path / "m")).num_rows == 10


def test_folder_changed_during_ingest_is_not_replaced(tmp_path, monkeypatch):
    """A file dropped into --out while ingest reads the dataset is not deleted."""
    root = make_market(tmp_path / "DATA", RGBNT100)
    ingest("rgbnt100", root, tmp_path / "m")
    real_write = ingest_mod.write_parts

    def write_then_intrude(table, directory, metadata):
        (tmp_path / "m" / "late.txt").write_text("arrived during ingest")
        return real_write(table, directory, metadata)

    monkeypatch.setattr(ingest_mod, "write_parts", write_then_intrude)
    with pytest.raises(UserError, match="late.txt"):
        ingest("rgbnt100", root, tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "late.txt").read_text() == "arrived during ingest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DATA", "m"]


def test_cli_out_equal_root_exits_2_and_keeps_the_data(tmp_path, capsys):
    root = make_market(tmp_path / "DATA", RGBNT100)
    before = snapshot(root)
    code = cli_main(["ingest", "--layout", "rgbnt100", "--root", str(root), "--out", str(root),
                     "--overwrite"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("msreid ingest: error: --out ") and "is the dataset folder" in err
    assert snapshot(root) == before
