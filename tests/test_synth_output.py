"""Synthetic benchmark: output written atomically, bad input, the CLI, ingest round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from msreid.cli import main as cli_main
from msreid.data import synth
from msreid.data.synth import SynthSpec, generate
from msreid.errors import UserError

TINY = SynthSpec(ids=2, cameras=2, tuples_per_id=3, height=16, width=32)


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "ds"
    generate("rgbnt100", out, TINY)
    first = (out / "synth.json").read_text()
    with pytest.raises(UserError, match="--overwrite"):
        generate("rgbnt100", out, SynthSpec(ids=3, cameras=2, tuples_per_id=3, height=16, width=32))
    assert (out / "synth.json").read_text() == first
    root = generate("rgbnt100", out, SynthSpec(ids=3, cameras=2, tuples_per_id=3, height=16,
                                               width=32), overwrite=True)
    assert root == out / "rgbir" and (out / "synth.json").read_text() != first
    assert siblings(out) == ["ds"]  # no temporary or old folder left behind


def test_overwrite_never_replaces_other_files(tmp_path):
    """`msreid synth --out ~ --overwrite` must not delete a home folder (issue 11)."""
    out = tmp_path / "home"
    (out / "docs").mkdir(parents=True)
    (out / "docs" / "thesis.tex").write_text("mine")
    with pytest.raises(UserError, match=r"did not write \(docs\)"):
        generate("rgbnt100", out, TINY, overwrite=True)
    assert (out / "docs" / "thesis.tex").read_text() == "mine"
    # a previous output with one extra file inside a split folder is not ours either
    generate("rgbnt100", tmp_path / "ds", TINY)
    (tmp_path / "ds" / "rgbir" / "query" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="rgbir/query/notes.txt"):
        generate("rgbnt100", tmp_path / "ds", TINY, overwrite=True)
    assert (tmp_path / "ds" / "rgbir" / "query" / "notes.txt").exists()
    assert siblings(out) == ["ds", "home"]


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    real = synth.render_tuple
    monkeypatch.setattr(synth, "render_tuple", broken)
    with pytest.raises(RuntimeError):
        generate("rgbnt100", tmp_path / "ds", TINY)
    assert siblings(tmp_path / "ds") == []


@pytest.mark.parametrize("field,value,message", [
    ("height", 60, "height=60"), ("width", 8, "width=8"), ("ids", 301, "ids=301"),
    ("cameras", 9, "cameras=9"), ("cameras", 1, "cameras=1"), ("tuples_per_id", 1, "tuples_per_id=1"),
])
def test_bad_spec_is_a_user_error(tmp_path, field, value, message):
    with pytest.raises(UserError, match=message):
        generate("rgbnt100", tmp_path / "ds", SynthSpec(**{field: value}))
    assert not (tmp_path / "ds").exists()


def test_unknown_layout(tmp_path):
    with pytest.raises(UserError, match="unknown layout 'msvr310'.*rgbn300, rgbnt100"):
        generate("msvr310", tmp_path / "ds", TINY)


def test_cli_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["synth", "--layout", "rgbn300", "--out", str(out), "--ids", "2",
                     "--cameras", "2", "--tuples-per-id", "3", "--height", "16", "--width", "32"])
    assert code == 0
    text = capsys.readouterr().out
    assert "64x16 (2 spectra of 32x16)" in text
    n_train = len(list((out / "rgbir" / "bounding_box_train").glob("*.jpg")))
    assert any(line.split() == ["bounding_box_train/", str(n_train), "JPEGs"]
               for line in text.splitlines()), text
    # second run without --overwrite: exit 2, one-line error
    assert cli_main(["synth", "--layout", "rgbn300", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_ingest_accepts_output_and_carries_challenges(tmp_path):
    ingest = pytest.importorskip("msreid.data.ingest")
    from msreid.data.schema import read_manifest

    spec = SynthSpec(ids=3, cameras=3, tuples_per_id=6, height=16, width=32, seed=1)
    root = generate("rgbnt100", tmp_path / "ds", spec)
    ingest.ingest("rgbnt100", tmp_path / "ds", tmp_path / "manifest", piece_size=(32, 16))
    table = read_manifest(str(tmp_path / "manifest")).to_pydict()
    tags = {}
    for line in (root / "challenges.csv").read_text().splitlines()[1:]:
        rel, tag = line.split(",")
        tags[rel] = tag
    assert len(table["split"]) == len(tags)  # one row per JPEG, queries included
    by_folder = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    for split, files, challenge, box in zip(table["split"], table["files"], table["challenge"],
                                            table["tir_box"]):
        assert files[0].startswith(by_folder[split] + "/")
        assert challenge == tags[files[0]]
        assert list(box) == [64, 0, 96, 16]  # TIR is the third 32x16 piece
