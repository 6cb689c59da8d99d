"""What a trial and a benchmark leave in MLflow for the UI: names, descriptions, context tags,
final metrics in % at step 0, the manifest as a dataset, the checkpoint as a LoggedModel linked to
its metrics, tables with log_table, the landing link. A local SQLite store in tmp_path."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from msreid.tracking import entities, runs, ui
from msreid.tracking.store import ensure_experiment
from msreid.tracking.tables import cell_metrics, metric_key, to_html

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "ui")
    return uri, exp, runs.client_for(uri)


def test_artifacts_stay_beside_the_database(store, tmp_path):
    uri, exp, client = store
    location = client.get_experiment(exp).artifact_location
    assert location == (tmp_path / "mlartifacts" / "ui").as_uri()
    run, _ = runs.get_or_create_parent(client, exp, "b")
    runs.log_text(client, run, "x", "a.txt")
    assert (tmp_path / "mlartifacts" / "ui" / run / "artifacts" / "a.txt").read_text() == "x"


def test_names_keys_and_description():
    assert runs.modality_label(["rgb"]) == "RGB"
    assert runs.modality_label(["rgb", "nir", "tir"]) == "RGB-N-T"
    assert runs.modality_label(["nir", "tir"]) == "NIR-T"
    cells = [("table3", "RGB-N-T MSN", "R50"), ("table5", "baseline (MSN)", "RGBNT100")]
    name = runs.trial_run_name(["rgb", "nir", "tir"], "msn", "resnet50", 1, cells)
    assert name == "RGB-N-T MSN resnet50 · s1 · table3+table5"
    assert runs.cell_key(cells[0]) == "table3 / RGB-N-T MSN / R50"
    note = runs.trial_description(cells, "rgbnt100", "/d/m", 1, 2)
    assert note.startswith("**Cell** table3 / RGB-N-T MSN / R50 (also table5 / baseline (MSN) / "
                           "RGBNT100)")
    assert "seed 1, 2 epoch(s)" in note and "best validation mAP" in note
    assert metric_key("table5", "+ L_hsc + L_caid", "RGBNT100", "mAP_std") == \
        "table5/plus L_hsc plus L_caid/RGBNT100/mAP_std"
    assert metric_key("t", "a:b (c)", "d", "R1") == "t/a_b _c_/d/R1"


def test_percent_conversion():
    got = runs.in_percent({"test/mAP": 0.412345678, "test/R10": 0.5, "best_val/mAP": 0.25,
                        "val/mINP": 0.125, "train/loss": 1.5, "best_epoch": 3, "test/Rx": 0.5,
                        "lr": float("nan"), "flag": True, "s": "x"})
    assert got == {"test/mAP": 41.2346, "test/R10": 50.0, "best_val/mAP": 25.0, "val/mINP": 12.5,
                   "train/loss": 1.5, "best_epoch": 3.0, "test/Rx": 0.5}
    # the selection's margin and resolution are mAP differences; the rest are counts and flags
    assert runs.in_percent({"selection/margin": 0.0054, "selection/resolution": 0.125,
                            "selection/within_noise": 1.0, "selection/val_queries": 8,
                            "val/queries": 8}) == {
        "selection/margin": 0.54, "selection/resolution": 12.5, "selection/within_noise": 1.0,
        "selection/val_queries": 8.0, "val/queries": 8.0}


def test_context_tags_without_dirty_suffix():
    tags = runs.context_tags(ROOT)
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert tags[runs.TAG_GIT_COMMIT] == head and len(head) == 40
    assert tags[runs.TAG_GIT_DIRTY] in ("true", "false")


def test_trial_entities_in_the_store(store, tmp_path):
    uri, exp, client = store
    parent, _ = runs.get_or_create_parent(client, exp, "b")
    child, _ = runs.get_or_create_child(client, exp, parent, "k-s0", "RGB MSN r · s0 · t3",
                                     tags={**runs.context_tags(ROOT), runs.TAG_NOTE: "hello"})
    fingerprint = "ab" * 32  # a sha256 hex digest
    dataset = entities.manifest_dataset("rgbnt100", str(tmp_path / "manifest"), fingerprint, 12)
    parts = entities.log_dataset_inputs(client, child, dataset)
    ckpt = tmp_path / "ckpt"
    note = entities.model_description("t3 / RGB / r", "best val", 3, str(ckpt), child)
    model_id = entities.log_checkpoint_model(client, exp, child, "RGB MSN r s0: t3", str(ckpt),
                                             {"model.backbone": "r"}, note)
    runs.log_final_metrics(client, child, runs.in_percent({"test/mAP": 0.5}), model_id=model_id,
                           dataset=(parts["test"].name, dataset.digest))
    runs.log_final_metrics(client, child, runs.in_percent({"best_val/mAP": 0.25}),
                           model_id=model_id, dataset=(parts["validation"].name, dataset.digest))
    run = client.get_run(child)
    assert run.data.tags["mlflow.note.content"] == "hello"
    assert run.data.tags["mlflow.source.git.commit"] == runs.git_commit(ROOT)
    assert run.data.metrics == {"test/mAP": 50.0, "best_val/mAP": 25.0}
    assert [m.step for m in client.get_metric_history(child, "test/mAP")] == [0]
    # One input per context the manifest served, each named after its split (MLflow keeps one
    # input per name and digest).
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["test", "train", "validation"]
    for split, inp in inputs.items():
        assert inp.digest == fingerprint[:36] and inp.name == f"rgbnt100/{split}"
        assert json.loads(inp.source) == {"uri": str(tmp_path / "manifest")}
        assert json.loads(inp.profile)["fingerprint"] == fingerprint
    model = client.get_logged_model(model_id)
    assert model.source_run_id == child and str(model.status) == "READY"
    assert entities.checkpoint_of(client, model_id) == str(ckpt)
    described = model.tags["mlflow.note.content"]
    assert "**Cell** t3 / RGB / r" in described and "epoch 3" in described
    assert str(ckpt) in described and child in described
    assert {m.key: (m.value, m.dataset_name) for m in model.metrics} == {
        "test/mAP": (50.0, "rgbnt100/test"), "best_val/mAP": (25.0, "rgbnt100/validation")}
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    version = entities.register_model(client, "msreid t3 / RGB: MSN", model_id, child)
    assert str(version) == "1"
    assert model_id in client.get_model_version("msreid-t3-RGB-MSN", "1").source


def test_log_table_replaces_instead_of_appending(store):
    uri, exp, client = store
    run, _ = runs.get_or_create_parent(client, exp, "b")
    entities.log_table(client, run, pd.DataFrame({"a": [1, 2]}), "tables/t.json")
    entities.log_table(client, run, pd.DataFrame({"a": [3]}), "tables/t.json")
    path = client.download_artifacts(run, "tables/t.json")
    assert json.loads(Path(path).read_text())["data"] == [[3]]
    logged = json.loads(client.get_run(run).data.tags["mlflow.loggedArtifacts"])
    assert logged == [{"path": "tables/t.json", "type": "table"}]


def test_breakdowns_in_percent(store, tmp_path):
    uri, exp, client = store
    run, _ = runs.get_or_create_parent(client, exp, "b")
    pd.DataFrame({"subset": ["r"], "spectra": ["rgb"], "mAP": [0.5], "R1": [0.25],
                  "num_valid": [4]}).to_csv(tmp_path / "missing_modality.csv", index=False)
    assert entities.log_breakdowns(client, run, tmp_path) == ["tables/missing_modality.json"]
    table = json.loads(Path(client.download_artifacts(run, "tables/missing_modality.json")).read_text())
    assert table["columns"] == ["subset", "spectra", "mAP", "R1", "num_valid"]
    assert table["data"] == [["r", "rgb", 50.0, 25.0, 4]]


def test_evaluation_csvs_in_percent_two_decimals(tmp_path):
    (tmp_path / "in").mkdir()
    pd.DataFrame({"rank": [1, 2], "cmc": [0.123456, 1 / 3]}).to_csv(tmp_path / "in" / "cmc.csv",
                                                                     index=False)
    pd.DataFrame({"subset": ["r"], "mAP": [0.1234567], "mINP": [0.5], "num_valid": [4]}).to_csv(
        tmp_path / "in" / "missing_modality.csv", index=False)
    cmc = entities.percent_csv(tmp_path / "in" / "cmc.csv", tmp_path)
    assert cmc.read_text().splitlines() == ["rank,cmc", "1,12.35", "2,33.33"]
    mm = entities.percent_csv(tmp_path / "in" / "missing_modality.csv", tmp_path)
    assert mm.read_text().splitlines() == ["subset,mAP,mINP,num_valid", "r,12.35,50.0,4"]


def _suite():
    from msreid.grid import Level, Suite, TableSpec

    table = TableSpec(name="table5", title="Δ T5", metrics=("mAP",), row_label="Model",
                      column_label="Dataset", rows=(Level(name="+ L_caid", set={"a": 1}),
                                                   Level(name="msn", set={"a": 2})),
                      columns=(Level(name="RGBNT100"),), base=Level(name="", dataset="d"))
    return Suite(name="s", preset="p", tables=(table,))


def test_parent_cell_metrics_and_utf8_html():
    from msreid.tracking.tables import TrialResult, assemble_table

    suite = _suite()
    table = suite.tables[0]
    cell = ("table5", "+ L_caid", "RGBNT100")
    results = [TrialResult(cells=(cell,), seed=s, metrics={"test/mAP": v})
               for s, v in ((0, 40.0), (1, 44.0))]
    frames = {"table5": assemble_table(table, results)}
    got = cell_metrics(suite, frames)
    # mean(40, 44) = 42, sample std = sqrt(2 * 2^2 / 1) = 2.828...; the empty cell is left out.
    assert got.keys() == {"table5/plus L_caid/RGBNT100/mAP", "table5/plus L_caid/RGBNT100/mAP_std"}
    assert got["table5/plus L_caid/RGBNT100/mAP"] == pytest.approx(42.0)
    assert got["table5/plus L_caid/RGBNT100/mAP_std"] == pytest.approx(math.sqrt(8))
    page = to_html(table, frames["table5"])
    assert '<meta charset="utf-8">' in page and "Δ T5" in page


def test_landing_link_and_view(store):
    uri, exp, client = store
    url = ui.landing_url("http://127.0.0.1:5000", exp)
    parts = urlsplit(url)
    assert parts.netloc == "127.0.0.1:5000" and parts.path == "/"
    route, _, query = parts.fragment.partition("?")
    assert route == f"/experiments/{exp}/runs"
    assert parse_qs(query) == {"workflowType": ["machine_learning"], "compareRunsMode": ["CHART"],
                               "viewStateShareKey": [ui.SHARE_KEY]}
    ui.install_landing_view(client, exp)
    tags = client.get_experiment(exp).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState." + ui.SHARE_KEY])
    assert view["searchFilter"] == "tags.`msreid.kind` = 'trial'"
    assert "tags.`msreid.cell`" in view["selectedColumns"]
    assert [c["metricKey"] for c in view["compareRunCharts"] if c["type"] == "BAR"][0] == "test/mAP"
    assert ui.ui_base("http://head:5000/") == "http://head:5000"
    assert ui.ui_base("https://admin:secret@head:5000/mlflow/") == "https://head:5000/mlflow"
    assert ui.ui_base(uri) == "http://127.0.0.1:5000"


def test_msreid_ui_prints_the_link(store, capsys):
    from msreid.cli import main

    uri, exp, client = store
    parent, _ = runs.get_or_create_parent(client, exp, "smoke-1")
    assert main(["ui", "--experiment", "ui", "--tracking-uri", uri, "--port", "5123"]) == 0
    out = capsys.readouterr().out
    assert ui.landing_url("http://127.0.0.1:5123", exp) in out
    assert ui.run_url("http://127.0.0.1:5123", exp, parent, "artifacts/tables") in out
    assert "viewStateShareKey" not in out.replace(ui.landing_url("http://127.0.0.1:5123", exp), "")
    # Once a benchmark installed its table views, `msreid ui` prints them again.
    suite = _suite()
    runs.set_tags(client, parent, {runs.TAG_BENCHMARK: "smoke-1"})
    links = ui.install_table_views(client, exp, "smoke-1", suite, "http://127.0.0.1:5123")
    assert main(["ui", "--experiment", "ui", "--tracking-uri", uri, "--port", "5123"]) == 0
    out = capsys.readouterr().out
    assert list(links.values()) == [ui.landing_url("http://127.0.0.1:5123", exp,
                                                   "msreid-smoke-1-table5")]
    assert f"table5 of smoke-1: {links['Δ T5']}" in out
    assert ui.run_url("http://h", exp, parent, "/artifacts/tables/") == \
        f"http://h/#/experiments/{exp}/runs/{parent}/artifacts/tables?workflowType=machine_learning"
    assert main(["ui", "--experiment", "nope", "--tracking-uri", uri]) == 0
    assert "run `make benchmark` first" in capsys.readouterr().out


def test_system_metrics_only_when_asked(store):
    uri, exp, client = store
    off, _ = runs.get_or_create_parent(client, exp, "off")
    with entities.system_metrics(uri, off, enabled=False):
        time.sleep(1.5)
    on, _ = runs.get_or_create_parent(client, exp, "on")
    with entities.system_metrics(uri, on, enabled=True, interval_s=0.5):
        time.sleep(2.5)
    assert client.get_run(off).data.metrics == {}
    assert "system/cpu_utilization_percentage" in client.get_run(on).data.metrics


def test_benchmark_flags_register_and_system_metrics():
    import importlib.util

    spec = importlib.util.spec_from_file_location("full_benchmark",
                                                  ROOT / "experiments" / "full_benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.build_parser().parse_args(["--register", "--system-metrics"])
    assert (args.register, args.system_metrics) == (True, True)
    args = script.build_parser().parse_args([])
    assert (args.register, args.system_metrics) == (False, False)


def test_old_runs_in_fractions_read_as_percent(store):
    uri, exp, client = store
    old, _ = runs.get_or_create_parent(client, exp, "old")  # logged before msreid.units existed
    runs.log_metrics(client, old, {"test/mAP": 0.25, "best_epoch": 3})
    new, _ = runs.get_or_create_parent(client, exp, "new")
    runs.set_tags(client, new, {runs.TAG_UNITS: "percent"})
    runs.log_metrics(client, new, {"test/mAP": 25.0, "best_epoch": 3})
    assert runs.stored_in_percent(client.get_run(old)) == {"test/mAP": 25.0, "best_epoch": 3.0}
    assert runs.stored_in_percent(client.get_run(new)) == {"test/mAP": 25.0, "best_epoch": 3.0}
