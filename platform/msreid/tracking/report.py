"""Rebuild a benchmark's tables from MLflow alone (parent run + its children).

  msreid report --experiment msreid-benchmark            # the latest benchmark
  msreid report --experiment msreid-benchmark --run RUN_ID --format csv --out tables/

The parent run stores the suite (``suite.json``); each child run carries the
cells it feeds (tag ``msreid.cells``), its seed and its final ``test/*``
metrics. Numbers are the test set evaluated with the checkpoint selected by
validation mAP, in %, mean +- std over seeds, beside the paper's. The query x gallery
spectrum matrix of every cell (mean +- std over seeds) follows, rebuilt from the
children's ``evaluation/cross_spectral.csv`` (``--out``: ``cross_spectral/<cell>.csv/.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from msreid.errors import UserError
from msreid.grid import suite_from_dict
from msreid.tracking import tables
from msreid.tracking.store import check_reachable, resolve_tracking_uri
from msreid.tracking.tables import TrialResult, assemble_suite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``msreid report``."""
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--run", default=None, help="parent run id (default: the latest benchmark)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///<cwd>/mlflow.db, the store `make ui` serves)")
    parser.add_argument("--format", choices=("md", "csv", "html"), default="md",
                        help="what to print (md: every table; csv/html: one block per table)")
    parser.add_argument("--out", default=None, help="also write <table>.md/.csv/.html here")


def find_parent(client, experiment: str, run_id: str | None):
    """(experiment id, parent Run): ``run_id``, or the newest benchmark parent of the experiment."""
    from msreid.tracking import runs  # imports MLflow: only when the command runs, not for --help

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"MLflow experiment {experiment!r} not found at {client.tracking_uri}; "
                        "check --experiment / --tracking-uri")
    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception:
            raise UserError(f"run {run_id} not found in {client.tracking_uri}") from None
        return exp.experiment_id, run
    parents = runs.find_runs(client, exp.experiment_id, {runs.TAG_KIND: "benchmark"})
    if not parents:
        raise UserError(f"experiment {experiment!r} has no benchmark run; run "
                        "experiments/full_benchmark.py first")
    return exp.experiment_id, parents[0]


def rebuild(client, experiment_id: str, parent):
    """(suite, frames) of a parent run, from its suite.json and its finished children."""
    from mlflow.artifacts import load_text  # MLflow only when the command runs, not for --help

    from msreid.tracking import runs

    try:
        text = load_text(f"runs:/{parent.info.run_id}/suite.json")
    except Exception:
        raise UserError(f"run {parent.info.run_id} has no suite.json artifact: it is not a "
                        "benchmark parent run") from None
    suite = suite_from_dict(json.loads(text))
    results = []
    for child in runs.children(client, experiment_id, parent.info.run_id):
        tags = child.data.tags
        if child.info.status != "FINISHED" or "test/mAP" not in child.data.metrics:
            continue
        cells = tuple(tuple(c) for c in json.loads(tags.get(runs.TAG_CELLS, "[]")))
        params = child.data.params  # the trial's config as trained (strings)
        config = tables.trained_as(params)
        results.append(TrialResult(cells=cells, seed=int(tags[runs.TAG_SEED]),
                                   metrics=runs.stored_in_percent(child), config=config))
    return suite, assemble_suite(suite, results)


def main(args: argparse.Namespace) -> int:
    """Print (and optionally write) the tables of a benchmark run."""
    import mlflow  # only when the command runs, not for --help

    from msreid.tracking import cross_spectral
    from msreid.tracking.runs import client_for

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"no MLflow store at {uri}; pass --tracking-uri or run from the "
                        "directory holding mlflow.db")
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)  # for runs:/ artifact URIs
    client = client_for(uri)
    experiment_id, parent = find_parent(client, args.experiment, args.run)
    suite, frames = rebuild(client, experiment_id, parent)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        table = suite.table(name)
        rendered = {"md": tables.to_markdown(table, frame), "csv": tables.to_csv(frame),
                    "html": tables.to_html(table, frame)}
        if out:
            for ext, text in rendered.items():
                (out / f"{name}.{ext}").write_text(text)
        if args.format != "md":
            print(rendered[args.format])
    matrices = cross_spectral.cell_matrices(client, experiment_id, parent.info.run_id)
    if out and matrices:
        cross_spectral.write_matrices(matrices, out / "cross_spectral")
    if args.format == "md":
        print(tables.suite_markdown(suite, frames), end="")
        if matrices:
            print("\n" + cross_spectral.all_markdown(matrices), end="")
    return 0
