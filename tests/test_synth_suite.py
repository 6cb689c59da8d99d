"""The `hard` suite selects the hard synthetic data; the smoke suite keeps the easy default."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from msreid.errors import UserError
from msreid.orchestration.benchmark import BenchmarkOptions, load_benchmark_suite, resolve_manifests

ROOT = Path(__file__).resolve().parents[1]
TINY = {"ids": 3, "cameras": 2, "tuples_per_id": 3, "height": 16, "width": 32}


def synth_json(manifest: str) -> dict:
    # <cache>/synth-rgbnt100-<hash>/manifest beside <...>/released/synth.json
    return json.loads((Path(manifest).parent / "released" / "synth.json").read_text())


@pytest.mark.parametrize("preset,variant", [("hard", "hard"), ("smoke", "easy")])
def test_suite_picks_the_synthetic_variant(preset, variant, tmp_path, monkeypatch):
    monkeypatch.setenv("MSREID_CACHE", str(tmp_path / "cache"))
    opts = BenchmarkOptions(preset=preset, synth=TINY)  # --synth adds to the suite's `synth`
    suite = load_benchmark_suite(opts)
    manifests, _ = resolve_manifests(opts, suite.synth)
    summary = synth_json(manifests["rgbnt100"])
    assert summary["spec"] == {**TINY, "seed": 0, "variant": variant}


def test_hard_suite_has_three_seeds_and_the_fusion_check():
    suite = load_benchmark_suite(BenchmarkOptions(preset="hard"))
    assert suite.seeds == (0, 1, 2) and suite.synth == {"variant": "hard"}
    (check,) = suite.checks
    assert check.row == "RGB-N-T MSN"
    assert set(check.above) == {"RGB one-stream", "NIR one-stream", "TIR one-stream"}


def test_bad_synthetic_option_stops_full_benchmark_before_any_compute(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("MSREID_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("fb", ROOT / "experiments" / "full_benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--preset", "hard", "--synth", '{"variant": "harder"}']) == 2
    assert "variant='harder' is out of range; use easy or hard" in capsys.readouterr().err
    assert script.main(["--preset", "hard", "--synth", '{"size": 3}']) == 2
    assert "unknown key(s) ['size']" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ray_results").exists()


def test_suite_synth_must_be_a_mapping(tmp_path):
    from msreid.grid import load_suite

    (tmp_path / "t.yaml").write_text("name: t\ndataset: rgbnt100\ncolumns: [C]\nrows: [R]\n")
    (tmp_path / "s.yaml").write_text("name: s\npreset: smoke\ntables: [t.yaml]\nsynth: hard\n")
    with pytest.raises(UserError, match="`synth` must be a mapping of SynthSpec fields"):
        load_suite(tmp_path / "s.yaml")


def test_synth_json_takes_the_variant_as_a_string():
    from msreid.data.synth import synth_spec_from_json

    assert synth_spec_from_json('{"variant": "hard", "ids": 5}') == {"variant": "hard", "ids": 5}
    with pytest.raises(UserError, match="variant=1 must be a string: easy or hard"):
        synth_spec_from_json('{"variant": 1}')
