"""Both selection rules on the same trials: test mAP and its seed spread per cell (issue 23).

Reads a finished benchmark from MLflow whose trials logged a test curve at every
validated epoch (``--set run.test_curve_every=1`` with ``run.eval_every=1``).
For every trial and every rule of ``msreid.evaluation.selection`` it selects an
epoch on the logged ``val/mAP`` curve, as the training loop would with that
``run.selection_rule`` (tolerance: one validation query's worth), and reads the
test mAP of that epoch's weights from ``test_curve/mAP``: a paired comparison,
one training per trial for all rules. ``--every N`` keeps only the validations
a run with ``run.eval_every=N`` would have made (training does not depend on it).

    python experiments/full_benchmark.py --preset hard --name hard-sel \\
        --set run.eval_every=1 --set run.test_curve_every=1
    python experiments/selection_rules.py hard-sel [--every 2] [--tracking-uri URI]

Prints, per cell and rule, test mAP mean ± sample std over seeds (%), the epoch each
seed selected, and how many seeds selected within noise; then per rule the mean of
the cells' std (the seed spread).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict

import numpy as np

from msreid.evaluation import selection
from msreid.tracking import runs
from msreid.tracking.store import resolve_tracking_uri


def validated(epochs: list[int], every: int) -> list[int]:
    """The epochs a run with ``run.eval_every=every`` validates: every N-th and the last."""
    last = max(epochs)
    return [e for e in epochs if (e + 1) % every == 0 or e == last]


def trial_outcomes(val: dict[int, float], test: dict[int, float], num_queries: int,
                   every: int = 1) -> dict[str, tuple[int, float]]:
    """``{rule: (selected epoch, its test mAP)}`` from one trial's curves (epoch -> value)."""
    epochs = validated(sorted(val), every)
    missing = [e for e in epochs if e not in test]
    if missing:
        raise SystemExit(f"no test_curve/mAP at epoch(s) {missing}: train with "
                         "--set run.test_curve_every=1")
    scores = [val[e] for e in epochs]
    tolerance = selection.resolution(num_queries)
    out = {}
    for rule in selection.RULES:
        chosen = epochs[selection.select(scores, rule, tolerance)]
        out[rule] = (chosen, test[chosen])
    out["within_noise"] = (int(selection.within_noise(scores, num_queries)), math.nan)
    return out


def _curve(client, run_id: str, key: str, scale: float) -> dict[int, float]:
    return {int(m.step): m.value * scale for m in client.get_metric_history(run_id, key)}


def load_trials(uri: str, experiment: str, name: str) -> list[dict]:
    """Every finished trial of benchmark ``name``: cell, seed, val curve (fractions, as the
    selection sees it), test curve (%), validation queries."""
    client = runs.client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} at {uri}")
    parents = runs.find_runs(client, exp.experiment_id,
                             {runs.TAG_KIND: "benchmark", runs.TAG_BENCHMARK: name})
    if not parents:
        raise SystemExit(f"no benchmark {name!r} in experiment {experiment!r} at {uri}")
    trials = []
    for child in runs.children(client, exp.experiment_id, parents[0].info.run_id):
        metrics = child.data.metrics
        if child.info.status != "FINISHED" or "selection/val_queries" not in metrics:
            continue
        rid = child.info.run_id
        val_scale = 0.01 if child.data.tags.get(runs.TAG_UNITS) == "percent" else 1.0
        trials.append({"cell": " / ".join(json.loads(child.data.tags[runs.TAG_CELLS])[0]),
                       "seed": int(child.data.tags[runs.TAG_SEED]),
                       "val": _curve(client, rid, "val/mAP", val_scale),
                       "test": _curve(client, rid, "test_curve/mAP", 100.0),
                       "queries": int(metrics["selection/val_queries"])})
    return sorted(trials, key=lambda t: (t["cell"], t["seed"]))


def _mean_std(values: list[float]) -> str:
    std = f" ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else ""
    return f"{np.mean(values):.1f}{std}"


def report(trials: list[dict], every: int) -> str:
    """The markdown table (see the module docstring)."""
    by_cell: dict[str, list[dict]] = defaultdict(list)
    for t in trials:
        by_cell[t["cell"]].append({**t, "out": trial_outcomes(t["val"], t["test"], t["queries"],
                                                              every)})
    lines = ["| cell | rule | test mAP (%) | selected epoch per seed | seeds within noise |",
             "|---|---|---|---|---|"]
    spread: dict[str, list[float]] = defaultdict(list)
    for cell, items in by_cell.items():
        noisy = sum(i["out"]["within_noise"][0] for i in items)
        for rule in selection.RULES:
            values = [i["out"][rule][1] for i in items]
            if len(values) > 1:
                spread[rule].append(float(np.std(values, ddof=1)))
            chosen = ", ".join(str(i["out"][rule][0]) for i in items)
            lines.append(f"| {cell} | {rule} | {_mean_std(values)} | {chosen} | "
                         f"{noisy}/{len(items)} |")
    lines.append("")
    lines += [f"{rule}: mean seed std over {len(v)} cells {np.mean(v):.2f} points"
              for rule, v in spread.items() if v]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="benchmark name (full_benchmark.py --name)")
    parser.add_argument("--every", type=int, default=1,
                        help="use only the validations of run.eval_every=N (default 1)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default as full_benchmark.py)")
    parser.add_argument("--experiment", default="msreid-benchmark", help="MLflow experiment")
    args = parser.parse_args()
    trials = load_trials(resolve_tracking_uri(args.tracking_uri), args.experiment, args.name)
    if not trials:
        raise SystemExit(f"benchmark {args.name!r} has no finished trial with selection/* "
                         "metrics")
    print(report(trials, args.every))


if __name__ == "__main__":
    main()
