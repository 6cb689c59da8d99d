"""The query x gallery spectrum matrix in MLflow: a trial's heatmap, the parent's mean +- std.

A trial's final test writes ``cross_spectral.csv`` (``msreid.evaluation.cross_spectral``);
the trial logs it under ``evaluation/`` and its mAP heatmap under ``figures/``. The
parent run gets, per grid cell, the mean +- std over seeds of every pair
(``cross_spectral/<cell>.csv`` and ``.png``, and ``cross_spectral/all.md``), assembled
from the children's CSVs alone, so ``msreid report`` rebuilds it the same way.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import pandas as pd

from msreid.evaluation.cross_spectral import (
    MATRIX_METRICS,
    check_matrix_table,
    compare_matrices,
    mean_std_over_seeds,
    pivot,
)
from msreid.tracking import runs
from msreid.tracking.figures import pyplot

CSV_ARTIFACT = "evaluation/cross_spectral.csv"
"""Where a trial run keeps its matrix."""

PARENT_DIR = "cross_spectral"
"""Where the parent run keeps the per-cell mean +- std matrices."""

SHORT_TO_LABEL = {"r": "R", "n": "N", "t": "T"}


def subset_label(key: str) -> str:
    """``"rnt"`` -> ``"R+N+T"`` (axis labels: readable, one spectrum letter each)."""
    return "+".join(SHORT_TO_LABEL.get(ch, ch) for ch in key)


def heatmap(frame: pd.DataFrame, out: str | Path, title: str, std: pd.DataFrame | None = None,
            metric: str = "mAP") -> Path:
    """Draw the ``metric`` matrix of ``frame`` (query rows x gallery columns, in %) as a PNG.

    Every cell is annotated with its value (and ``+- std`` when ``std``, a pivot of the
    same shape, is given); the diagonal (same spectra on both sides) is outlined.
    """
    grid = pivot(frame, metric)
    plt = pyplot()
    n = len(grid.columns)
    fig, ax = plt.subplots(figsize=(1.0 + 0.95 * n, 0.9 + 0.8 * len(grid)), dpi=100)
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=100)
    for i, qa in enumerate(grid.index):
        for j, gb in enumerate(grid.columns):
            value = float(grid.loc[qa, gb])
            text = f"{value:.1f}" if math.isfinite(value) else "-"
            if std is not None and math.isfinite(float(std.loc[qa, gb])):
                text += f"\n±{float(std.loc[qa, gb]):.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if value > 60 else "white")
            if qa == gb:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5,
                                           edgecolor="red"))
    ax.set_xticks(range(n), [subset_label(c) for c in grid.columns], rotation=45, ha="right")
    ax.set_yticks(range(len(grid)), [subset_label(r) for r in grid.index])
    ax.set(xlabel="gallery spectra", ylabel="query spectra", title=title)
    fig.colorbar(image, ax=ax, label=f"{metric} (%)", fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)


def trial_heatmap(csv_path: str | Path, out: str | Path) -> Path | None:
    """The heatmap of a trial's ``cross_spectral.csv`` (None when the file is absent)."""
    if not Path(csv_path).is_file():
        return None
    frame = check_matrix_table(pd.read_csv(csv_path), str(csv_path))
    return heatmap(frame, out, "query x gallery spectra, test mAP (%)")


def cell_slug(cell) -> str:
    """A file name for a (table, row, column) cell: ``table3__RGB-N-T_MSN__test_resnet``."""
    return "__".join(re.sub(r"[^A-Za-z0-9.+-]+", "_", str(part)).strip("_") for part in cell)


def _trial_matrix(client, run_id: str) -> pd.DataFrame | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, CSV_ARTIFACT, tmp)
        except Exception:  # noqa: BLE001 (MLflow raises several types for a missing artifact)
            return None
        return check_matrix_table(pd.read_csv(path), f"run {run_id}: {CSV_ARTIFACT}")


def cell_seed_matrices(client, experiment_id: str, parent_id: str) -> dict[tuple, list[pd.DataFrame]]:
    """``{cell: [one matrix table per seed]}`` from the FINISHED children's ``cross_spectral.csv``.

    A trial feeding several cells (shared trials) counts in each; cells in the order
    first seen. Children without the file (one-spectrum runs, older msreid) are skipped.
    """
    per_cell: dict[tuple, list[pd.DataFrame]] = {}
    for child in runs.children(client, experiment_id, parent_id):
        if child.info.status != "FINISHED":
            continue
        frame = _trial_matrix(client, child.info.run_id)
        if frame is None:
            continue
        for cell in json.loads(child.data.tags.get(runs.TAG_CELLS, "[]")):
            per_cell.setdefault(tuple(cell), []).append(frame)
    return per_cell


def cell_matrices(client, experiment_id: str, parent_id: str) -> dict[tuple, pd.DataFrame]:
    """``{cell: mean +- std over seeds}`` of :func:`cell_seed_matrices`."""
    return summarize(cell_seed_matrices(client, experiment_id, parent_id))


def summarize(per_cell: dict[tuple, list[pd.DataFrame]]) -> dict[tuple, pd.DataFrame]:
    """``{cell: mean_std_over_seeds(its per-seed matrices)}``."""
    return {cell: mean_std_over_seeds(frames) for cell, frames in per_cell.items()}


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.2f}" + (f" ± {std:.2f}" if math.isfinite(std) else "")


def run_matrix_checks(suite, per_cell: dict[tuple, list[pd.DataFrame]]) -> list[tuple[bool, str]]:
    """The suite's ``matrix_checks``, per column of their table: ``[(passed, message)]``.

    PASS only when ``row``'s mean off-diagonal metric beats ``against``'s by more than the
    seed spread (``MatrixComparison.spread``); the all-spectra diagonal cell's change (what
    the treatment costs where nothing is missing) is printed beside it, never checked.
    """
    out = []
    for check in suite.matrix_checks:
        columns = dict.fromkeys(c[2] for c in per_cell if c[0] == check.table)
        for column in columns:
            treated = per_cell.get((check.table, check.row, column), [])
            baseline = per_cell.get((check.table, check.against, column), [])
            if not treated or not baseline:
                out.append((False, f"{check.table} [{column}] {check.row} vs {check.against}: "
                                   "no spectrum matrix for one of them: FAIL"))
                continue
            c = compare_matrices(treated, baseline, check.metric)
            verdict = "PASS" if c.passed else (
                "FAIL (needs >= 2 seeds per model)" if not math.isfinite(c.spread)
                else "FAIL (the difference is within the seed spread)" if c.off_diff > 0
                else "FAIL (no gain)")
            full = subset_label(c.full_key)
            out.append((c.passed, (
                f"{check.table} [{column}] mean off-diagonal {c.metric}: {check.row} "
                f"{_fmt(c.off[0], c.off_std[0])} vs {check.against} {_fmt(c.off[1], c.off_std[1])} "
                f"({c.seeds[0]} vs {c.seeds[1]} seeds): {c.off_diff:+.2f}, seed spread "
                f"{c.spread:.2f}: {verdict}; cost on the full {full} diagonal cell: "
                f"{_fmt(c.full[0], c.full_std[0])} vs {_fmt(c.full[1], c.full_std[1])} = "
                f"{c.full_diff:+.2f} (seed spread {c.full_spread:.2f})")))
    return out


def matrix_markdown(cell, summary: pd.DataFrame, metric: str = "mAP") -> str:
    """One cell's matrix as a markdown table: ``mean ± std`` (%) per (query, gallery)."""
    means, stds = pivot(summary, metric), pivot(summary, f"{metric}_std")
    seeds = int(summary["seeds"].max()) if len(summary) else 0
    head = [f"**{runs.cell_key(cell)}**: test {metric} (%), query spectra (rows) x gallery "
            f"spectra (columns), mean ± std over {seeds} seed(s)", "",
            "| query \\ gallery | " + " | ".join(subset_label(c) for c in means.columns) + " |",
            "|---" * (len(means.columns) + 1) + "|"]
    for qa in means.index:
        cells = []
        for gb in means.columns:
            m, s = float(means.loc[qa, gb]), float(stds.loc[qa, gb])
            cells.append(f"{m:.2f}" + (f" ± {s:.2f}" if math.isfinite(s) else ""))
        head.append(f"| {subset_label(qa)} | " + " | ".join(cells) + " |")
    return "\n".join(head) + "\n"


def all_markdown(matrices: dict[tuple, pd.DataFrame]) -> str:
    """Every cell's matrix, one after the other ('' when there is none)."""
    return "\n".join(matrix_markdown(cell, summary) for cell, summary in matrices.items())


def write_matrices(matrices: dict[tuple, pd.DataFrame], out: str | Path) -> list[Path]:
    """``<cell>.csv`` (all metrics, mean and std) and ``<cell>.png`` (mAP heatmap) per cell,
    and ``all.md``, into directory ``out``; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for cell, summary in matrices.items():
        slug = cell_slug(cell)
        summary.to_csv(out / f"{slug}.csv", index=False)
        std = pivot(summary, "mAP_std")
        written += [out / f"{slug}.csv",
                    heatmap(summary, out / f"{slug}.png", runs.cell_key(cell), std=std)]
    if matrices:
        (out / "all.md").write_text(all_markdown(matrices))
        written.append(out / "all.md")
    return written


def log_parent_matrices(client, experiment_id: str,
                        parent_id: str) -> dict[tuple, list[pd.DataFrame]]:
    """Assemble the per-cell matrices from the children and log their mean +- std under
    ``cross_spectral/`` of the parent run; returns the per-seed matrices of every cell."""
    per_cell = cell_seed_matrices(client, experiment_id, parent_id)
    with tempfile.TemporaryDirectory() as tmp:
        runs.log_files(client, parent_id, write_matrices(summarize(per_cell), tmp), PARENT_DIR)
    return per_cell


__all__ = ["CSV_ARTIFACT", "MATRIX_METRICS", "PARENT_DIR", "all_markdown", "cell_matrices",
           "cell_seed_matrices", "heatmap", "log_parent_matrices", "matrix_markdown",
           "run_matrix_checks", "summarize", "trial_heatmap", "write_matrices"]
