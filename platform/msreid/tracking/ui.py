"""Print the link that opens the MLflow UI on a benchmark's cells; with --serve, also serve the UI.

  msreid ui                                   # links for ./mlflow.db, experiment msreid-benchmark
  msreid ui --serve                           # ... then serve the UI on 127.0.0.1:5000 (`make ui`)

The landing link is one URL that opens an experiment's runs view ready to compare cells (MLflow
3.17's web app, read from its JavaScript bundle):

* ``?workflowType=machine_learning`` opens the model-training mode (runs, charts) instead of the
  GenAI "Overview / Traces" page; the experiment tag ``mlflow.experimentKind`` =
  ``custom_model_development`` makes that mode the experiment's default as well.
* ``compareRunsMode=CHART`` opens the chart view beside the runs list.
* ``viewStateShareKey=<key>`` loads a view stored as the experiment tag
  ``mlflow.sharedViewState.<key>`` (what the UI's "Share" button writes): the search filter, the
  table's columns, which runs are shown, and the charts. Ours shows the trial runs (not the
  parents), columns for the cell tag, dataset, model and test metrics, every run (the UI's default
  hides all but the first 10), and one bar chart per test metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from mlflow.tracking import MlflowClient

from msreid.errors import UserError
from msreid.tracking import views
from msreid.tracking.runs import TAG_BENCHMARK, TAG_CELL, TAG_KIND, TAG_SEED, children, client_for, find_runs
from msreid.tracking.store import resolve_tracking_uri

SHARE_KEY = "msreid-cells"
SHARE_TAG_PREFIX = views.SHARE_TAG_PREFIX
KIND_TAG = "mlflow.experimentKind"
KIND_ML = "custom_model_development"
DEFAULT_UI = "http://127.0.0.1:5000"  # what `make ui` serves
CHART_METRICS = ("test/mAP", "test/R1", "test/R5", "test/R10", "test/mINP", "best_val/mAP")
SECTION_ID = "msreid-cells-section"
SECTION_NAME = "Cells (%): test set and selected validation"


def ui_base(tracking_uri: str, default: str = DEFAULT_UI) -> str:
    """The UI address for a tracking URI: the server itself for http(s), else ``make ui``'s."""
    if tracking_uri.startswith(("http://", "https://")):
        parts = urlsplit(tracking_uri)
        host = parts.netloc.rpartition("@")[2]  # never print credentials given in the URI
        return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
    return default


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key


def bar_chart(metric: str, uuid: str, max_runs: int = 200) -> dict:
    """A bar-chart card of the UI (one bar per shown run)."""
    return {"uuid": uuid, "type": "BAR", "metricKey": metric, "displayName": metric,
            "runsCountToCompare": max_runs, "metricSectionId": SECTION_ID, "deleted": False,
            "isGenerated": False}


def landing_view_state(metrics: tuple[str, ...] = CHART_METRICS) -> dict:
    """The shared view: trial runs, readable columns, all runs shown, a bar chart per metric."""
    columns = [_column("tags", TAG_CELL), _column("tags", TAG_SEED),
               _column("attributes", "Dataset"), _column("attributes", "Models")]
    columns += [_column("metrics", m) for m in metrics]
    return {
        "searchFilter": f"tags.`{TAG_KIND}` = 'trial'",
        "orderByKey": "attributes.start_time", "orderByAsc": False,
        "selectedColumns": columns,
        "runsHiddenMode": "SHOW_ALL",
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": TAG_CELL}]},
        "hideEmptyCharts": True,
        "compareRunSections": [{"uuid": SECTION_ID, "name": SECTION_NAME, "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False}],
        "compareRunCharts": [bar_chart(m, f"msreid-bar-{i}") for i, m in enumerate(metrics)],
    }


def install_landing_view(client: MlflowClient, experiment_id: str, key: str = SHARE_KEY) -> None:
    """Store the landing view on the experiment and make model training its default mode."""
    client.set_experiment_tag(experiment_id, SHARE_TAG_PREFIX + key, json.dumps(landing_view_state()))
    client.set_experiment_tag(experiment_id, KIND_TAG, KIND_ML)


def landing_url(base: str, experiment_id: str, key: str | None = SHARE_KEY) -> str:
    """The link that opens the experiment's runs view on the landing view."""
    query = {"workflowType": "machine_learning", "compareRunsMode": "CHART"}
    if key:
        query["viewStateShareKey"] = key
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def run_url(base: str, experiment_id: str, run_id: str, page: str = "") -> str:
    """The page of one run in model-training mode; ``page`` e.g. ``artifacts/tables/table3.html``
    (the parent's tables)."""
    where = f"/{page.strip('/')}" if page else ""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{where}"
            "?workflowType=machine_learning")


def table_view_key(benchmark: str, table: str) -> str:
    """The share key of one table's view of one benchmark: ``msreid-<benchmark>-<table>``."""
    return views.view_key("msreid", benchmark, table)


def alpha_view_key(search: str) -> str:
    """The share key of one alpha search's view."""
    return views.view_key("msreid", search, "alpha")


def _metric_keys(client: MlflowClient, experiment_id: str, parent: str | None) -> list[str]:
    if not parent:
        return []
    return sorted({k for run in children(client, experiment_id, parent) for k in run.data.metrics})


def install_table_views(client: MlflowClient, experiment_id: str, benchmark: str, suite, base: str,
                        parent: str | None = None) -> dict[str, str]:
    """One saved view per table of ``suite`` (msreid.tracking.views); returns
    ``{table title: link}``. With ``parent``, its children's other metrics are kept out of the
    view (call it again once the trials have logged)."""
    keys = _metric_keys(client, experiment_id, parent)
    links = {}
    for table in suite.tables:
        key = table_view_key(benchmark, table.name)
        title = table.title.split(":")[0] or table.name
        state = views.table_view_state(benchmark, table.name, tuple(table.metrics), title, keys)
        client.set_experiment_tag(experiment_id, SHARE_TAG_PREFIX + key, json.dumps(state))
        links[table.title or table.name] = landing_url(base, experiment_id, key)
    client.set_experiment_tag(experiment_id, KIND_TAG, KIND_ML)
    return links


def install_alpha_view(client: MlflowClient, experiment_id: str, search: str, base: str,
                       parent: str | None = None) -> str:
    """The saved view of one alpha search; returns its link."""
    key = alpha_view_key(search)
    state = views.alpha_view_state(search, _metric_keys(client, experiment_id, parent))
    client.set_experiment_tag(experiment_id, SHARE_TAG_PREFIX + key, json.dumps(state))
    client.set_experiment_tag(experiment_id, KIND_TAG, KIND_ML)
    return landing_url(base, experiment_id, key)


def saved_view_links(client: MlflowClient, experiment_id: str, name: str,
                     base: str) -> dict[str, str]:
    """``{view: link}`` of the saved views of benchmark or alpha search ``name`` (``table3``,
    ``alpha``, ...), as installed by ``install_table_views`` / ``install_alpha_view``."""
    prefix = SHARE_TAG_PREFIX + views.view_key("msreid", name) + "-"
    tags = client.get_experiment(experiment_id).tags
    return {key[len(prefix):]: landing_url(base, experiment_id, key[len(SHARE_TAG_PREFIX):])
            for key in sorted(tags) if key.startswith(prefix) and "-" not in key[len(prefix):]}


def print_links(client: MlflowClient, experiment: str, base: str) -> bool:
    """Install the landing view and print its link, then the saved views and tables of the latest
    benchmark and the latest alpha search."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        print(f"no MLflow experiment {experiment!r} yet: run `make benchmark` first")
        return False
    install_landing_view(client, exp.experiment_id)
    print(f"Compare the cells of {experiment!r}: {landing_url(base, exp.experiment_id)}")
    for kind in ("benchmark", "tune_alpha"):
        latest = find_runs(client, exp.experiment_id, {TAG_KIND: kind})[:1]
        for run in latest:
            name = run.data.tags.get(TAG_BENCHMARK, "")
            for view, link in saved_view_links(client, exp.experiment_id, name, base).items():
                print(f"{'Alpha search' if view == 'alpha' else view} of {name}: {link}")
            if kind == "benchmark":
                print(f"Tables of benchmark {name}: "
                      f"{run_url(base, exp.experiment_id, run.info.run_id, 'artifacts/tables')}")
    return True


def server_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """``mlflow server`` for a store (artifacts of a SQLite store are read where they were
    written, beside the database)."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    # One worker: uvicorn's default 4 on a loaded 2-core machine start slowly, and its supervisor
    # killed a worker that missed a health check ("Child process died"); one person's UI needs one.
    return [str(mlflow_bin), "server", "--backend-store-uri", tracking_uri,
            "--host", host, "--port", str(port), "--workers", "1"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``msreid ui``."""
    parser.add_argument("--experiment", default="msreid-benchmark", help="MLflow experiment name")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--host", default="127.0.0.1", help="--serve: address to bind")
    parser.add_argument("--port", type=int, default=5000, help="--serve: port")
    parser.add_argument("--serve", action="store_true",
                        help="then serve the UI for a SQLite store (replaces this process)")


def main(args: argparse.Namespace) -> int:
    """Print the landing link; with --serve, exec ``mlflow server`` on the store."""
    uri = resolve_tracking_uri(args.tracking_uri)
    served = uri.startswith("sqlite:///")
    if args.serve and not served:
        raise UserError(f"--serve serves a SQLite store; {uri} is already served: open its UI")
    base = f"http://{args.host}:{args.port}" if served else ui_base(uri)
    if not served or Path(uri[len("sqlite:///"):]).is_file():
        print_links(client_for(uri), args.experiment, base)
    else:
        print(f"no MLflow store at {uri} yet: run `make benchmark` first")
    if args.serve:
        sys.stdout.flush()
        command = server_command(uri, args.host, args.port)
        os.execv(command[0], command)
    return 0
