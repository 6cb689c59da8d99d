"""Manifest integrity: per-part sha256 recorded at ingest, verified before training reads (issue 11).

Before: a part file with 2,000 bytes zeroed mid-file was read without a word
(the zeroed bytes fall inside stored JPEG blobs) and training exited 0.
"""

from __future__ import annotations

import hashlib
import logging
import shutil

import pyarrow.parquet as pq
import pytest

from msreid.data import ingest as ingest_mod
from msreid.data.ingest import ingest
from msreid.data.schema import META_SCHEMA_VERSION, read_manifest, verify_manifest
from msreid.errors import UserError
from test_data_fixtures import make_market

RGBNT100 = ("rgb", "nir", "tir")


def zero_mid_file(path, n: int = 2000) -> None:
    raw = bytearray(path.read_bytes())
    start = len(raw) // 2 - n // 2
    raw[start:start + n] = bytes(n)
    path.write_bytes(bytes(raw))


@pytest.fixture()
def manifest(tmp_path, monkeypatch):
    """Three part files (4, 4, 2 rows) of the 10-tuple fixture."""
    make_market(tmp_path / "d", RGBNT100)
    monkeypatch.setattr(ingest_mod, "TARGET_ROW_GROUP_BYTES", 1)
    monkeypatch.setattr(ingest_mod, "TARGET_FILE_BYTES", 4)
    ingest("rgbnt100", tmp_path / "d", tmp_path / "m")
    return tmp_path / "m"


def test_checksum_file_is_sha256sum_of_each_part(manifest):
    lines = (manifest / "_SHA256SUMS").read_text().splitlines()
    expected = [f"{hashlib.sha256((manifest / n).read_bytes()).hexdigest()}  {n}"
                for n in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet")]
    assert lines == expected
    assert verify_manifest(str(manifest)) == 3
    assert verify_manifest(manifest.as_uri()) == 3


def test_zeroed_bytes_are_caught_and_named(manifest):
    zero_mid_file(manifest / "part-00001.parquet")
    assert read_manifest(str(manifest)).num_rows == 10  # Parquet itself does not notice
    with pytest.raises(UserError) as err:
        verify_manifest(str(manifest))
    msg = str(err.value)
    assert "1 damaged part file(s)" in msg
    assert "part-00001.parquet: content differs from the checksum recorded at ingest" in msg
    assert "msreid ingest --overwrite" in msg


def test_missing_unlisted_and_absent_checksums(manifest):
    (manifest / "part-00002.parquet").unlink()
    shutil.copy(manifest / "part-00000.parquet", manifest / "part-00009.parquet")
    with pytest.raises(UserError) as err:
        verify_manifest(str(manifest))
    assert "part-00009.parquet: not listed in _SHA256SUMS" in str(err.value)
    assert "part-00002.parquet: listed in _SHA256SUMS but missing" in str(err.value)
    (manifest / "_SHA256SUMS").unlink()
    with pytest.raises(UserError, match="_SHA256SUMS cannot be read"):
        verify_manifest(str(manifest))


def test_single_part_file_is_checked_alone(manifest):
    assert verify_manifest(str(manifest / "part-00001.parquet")) == 1
    zero_mid_file(manifest / "part-00001.parquet")
    with pytest.raises(UserError, match="part-00001.parquet: content differs"):
        verify_manifest(str(manifest / "part-00001.parquet"))


def rewrite_version(manifest, version: str) -> None:
    for part in sorted(manifest.glob("part-*.parquet")):
        table = pq.read_table(part)
        meta = {**table.schema.metadata, META_SCHEMA_VERSION.encode(): version.encode()}
        pq.write_table(table.replace_schema_metadata(meta), part)


def test_version_1_manifest_reads_with_a_warning(manifest, caplog):
    rewrite_version(manifest, "1")
    (manifest / "_SHA256SUMS").unlink()
    with caplog.at_level(logging.WARNING, logger="msreid.data.schema"):
        assert verify_manifest(str(manifest)) == 0
    assert "written before msreid recorded checksums" in caplog.text
    assert read_manifest(str(manifest)).num_rows == 10
    rewrite_version(manifest, "3")
    with pytest.raises(UserError, match="schema version 3, this msreid reads versions 1, 2"):
        read_manifest(str(manifest))


def test_train_refuses_a_damaged_manifest_before_ray(manifest, tmp_path, monkeypatch, capsys):
    """`msreid train` as a user runs it: exit 2 naming the part file; Ray is never started."""
    from pathlib import Path

    from msreid.cli import main as cli_main
    from msreid.train import fit

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start for a damaged manifest")

    monkeypatch.setattr(fit, "init_ray", no_ray)
    zero_mid_file(manifest / "part-00000.parquet")
    preset = Path(__file__).resolve().parents[1] / "experiments" / "presets" / "smoke.yaml"
    code = cli_main(["train", "--config", str(preset), f"data.manifest={manifest}",
                     "--storage", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert "part-00000.parquet: content differs from the checksum recorded at ingest" in err
    assert not (tmp_path / "runs").exists()


def test_inspect_reports_checksums_and_refuses_damage(manifest, capsys):
    from msreid.cli import main as cli_main

    assert cli_main(["inspect", str(manifest)]) == 0
    assert "checksums  3 part file(s) match _SHA256SUMS" in capsys.readouterr().out
    zero_mid_file(manifest / "part-00002.parquet")
    assert cli_main(["inspect", str(manifest)]) == 2
    assert "part-00002.parquet: content differs" in capsys.readouterr().err


def test_perf_script_runs_as_documented(tmp_path):
    """perf/manifest_verify.py (docs/PERFORMANCE.md) at a tiny size, as a user runs it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "perf" / "manifest_verify.py"), "--work",
                          str(tmp_path / "w"), "--ids", "2", "--tuples-per-id", "3", "--repeats", "1"],
                         capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "PYTHONPATH": str(root / "platform")})
    assert "ratio verified / read" in out.stdout, out.stdout + out.stderr


def test_sha256sum_checks_the_manifest_as_documented(manifest):
    """docs/DATA.md: `cd MANIFEST && sha256sum -c _SHA256SUMS`."""
    import subprocess

    out = subprocess.run(["sha256sum", "-c", "_SHA256SUMS"], cwd=manifest, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.count(": OK") == 3, out.stdout + out.stderr
    zero_mid_file(manifest / "part-00000.parquet")
    out = subprocess.run(["sha256sum", "-c", "_SHA256SUMS"], cwd=manifest, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "part-00000.parquet: FAILED" in out.stdout
