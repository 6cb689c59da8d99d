"""experiments/full_benchmark.py and tune_alpha.py fail fast and clearly, before any compute."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("script", ["full_benchmark", "tune_alpha"])
def test_unreachable_tracking_server_stops_before_any_compute(script, tmp_path, monkeypatch,
                                                              capsys):
    monkeypatch.setenv("MSREID_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    port = free_port()
    code = load_script(script).main(["--tracking-uri", f"http://127.0.0.1:{port}"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in err
    assert not (tmp_path / "cache").exists()  # no synthetic data generated
    assert not (tmp_path / "ray_results").exists()  # no Tune experiment started


def test_bad_grid_value_is_one_clear_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "t.yaml").write_text(
        "name: t\ndataset: rgbnt100\ncolumns: [C]\n"
        "rows: [{name: R, set: {loss.ablation: hamnet, data.spectra: [rgb]}}]\n")
    (tmp_path / "s.yaml").write_text("name: s\npreset: smoke\ntables: [t.yaml]\n")
    monkeypatch.chdir(tmp_path)
    code = load_script("full_benchmark").main(["--preset", str(tmp_path / "s.yaml")])
    assert code == 2
    err = capsys.readouterr().err
    assert "cell t / R / C" in err and "loss.ablation=hamnet needs >= 2 spectra" in err
    assert not (tmp_path / "mlflow.db").exists()  # config errors come before the store
    assert not (tmp_path / "ray_results").exists()
