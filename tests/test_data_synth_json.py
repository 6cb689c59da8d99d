"""`--synth JSON` of the experiment scripts: one UserError before anything is created (issue 11)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from msreid.data.synth import synth_spec_from_json
from msreid.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, needle", [
    ('{"ids": 20', "is not valid JSON (Expecting ',' delimiter at character 10)"),
    ("[20]", "expected a JSON object such as"),
    ('{"idz": 20}', "unknown key(s) ['idz']; valid keys are ['ids', 'cameras'"),
    ('{"ids": "20"}', 'ids="20" must be an integer'),
    ('{"ids": 20.5}', "ids=20.5 must be an integer"),
    ('{"seed": true}', "seed=true must be an integer"),
    ('{"cameras": 9}', "cameras=9 is out of range; use 2..8"),
])
def test_bad_synth_json_is_one_user_error(text, needle):
    with pytest.raises(UserError) as info:
        synth_spec_from_json(text)
    assert str(info.value).startswith("--synth") and needle in str(info.value), str(info.value)


def test_valid_overrides_are_returned():
    assert synth_spec_from_json("{}") == {}
    assert synth_spec_from_json('{"ids": 20, "seed": 3}') == {"ids": 20, "seed": 3}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["full_benchmark", "tune_alpha"])
@pytest.mark.parametrize("text", ['{"ids": ', '{"idz": 2}', '{"ids": "many"}'])
def test_scripts_refuse_bad_synth_before_creating_anything(script, text, tmp_path, monkeypatch,
                                                           capsys):
    monkeypatch.setenv("MSREID_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_script(script).main(["--synth", text]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{script}: error: --synth") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, cache, ray_results
