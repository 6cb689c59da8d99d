"""Benchmark tables: mean +- std over seeds beside the paper's numbers, with the difference.

Input is plain data (one ``TrialResult`` per finished trial), so the driver
(from Tune results) and ``msreid report`` (from MLflow runs) build the tables
with the same code. Metrics arrive in % (``test/mAP`` = 41.2346, as MLflow holds
them: ``runs.in_percent`` of the fractions the training reports), like the paper.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from msreid.grid import CellId, Suite, TableSpec, expand_cells
from msreid.tracking.paper import paper_value

METRIC_PREFIX = "test/"
"""Table cells are the test-set metrics of the checkpoint the trial's run.selection chose."""

PROTOCOLS = {
    "validation": "checkpoint selected on validation ids held out of the train ids",
    "final": "trained on all train ids, final checkpoint (the paper's protocol)",
}
"""How each run.selection is named in table titles."""

TITLE_KEYS = ("model.backbone", "run.selection", "data.modality_dropout")
"""The flat config keys a TrialResult carries (what the titles report)."""

WITHIN_NOISE = "selection/within_noise"
"""1.0 when a trial's best and runner-up validation mAP were less than one query's worth apart."""

NOISE_NOTE = ("selection within noise: in that many seeds the best and the runner-up validation "
              "mAP differed by less than one validation query's worth (1/queries), so a float-level "
              "change (thread count, worker count) may select the other epoch and move the test "
              "numbers (docs/TRAINING.md, run.selection_rule)")
"""The footnote of a table with such a cell."""


@dataclass(frozen=True)
class TrialResult:
    """What one finished trial contributes to the tables (metrics in %).

    config: the trial's flat config values the titles report (``model.backbone``,
    ``run.selection``), as trained; missing keys read as unknown (backbone) or
    ``validation`` (the only protocol of runs logged before it existed).
    """

    cells: tuple[CellId, ...]
    seed: int
    metrics: dict[str, float]
    config: dict[str, str] = field(default_factory=dict)


def cell_values(cell_id: CellId, metric: str, results: list[TrialResult]) -> list[float]:
    """Values of ``test/<metric>`` (in %) over seeds for one cell, in seed order."""
    values = []
    for res in sorted(results, key=lambda r: r.seed):
        value = res.metrics.get(METRIC_PREFIX + metric)
        if cell_id in res.cells and value is not None and not math.isnan(value):
            values.append(float(value))
    return values


def noisy_seeds(cell_id: CellId, results: list[TrialResult]) -> int:
    """How many of the cell's trials selected their checkpoint within noise (``WITHIN_NOISE``)."""
    return sum(1 for r in results if cell_id in r.cells and r.metrics.get(WITHIN_NOISE, 0.0) >= 0.5)


def trained_as(flat: dict) -> dict[str, str]:
    """The config values a TrialResult carries for the titles, from a flat trial config."""
    return {k: str(flat[k]) for k in TITLE_KEYS if k in flat}


def cell_trained(cell_id: CellId, results: list[TrialResult]) -> tuple[str, str]:
    """(backbone, selection) the cell's trials ran with; ``", "``-joined when they differ."""
    mine = [r.config for r in results if cell_id in r.cells]
    backbone = sorted({str(c.get("model.backbone", "?")) for c in mine})
    selection = sorted({str(c.get("run.selection", "validation")) for c in mine})
    return ", ".join(backbone), ", ".join(selection)


def cell_dropout(cell_id: CellId, results: list[TrialResult]) -> str:
    """The data.modality_dropout the cell's trials ran with (``", "``-joined when they differ)."""
    values = sorted({float(r.config.get("data.modality_dropout", 0.0))
                     for r in results if cell_id in r.cells})
    return ", ".join(f"{v:g}" for v in values)


def assemble_table(table: TableSpec, results: list[TrialResult],
                   suite_set: dict | None = None) -> pd.DataFrame:
    """One line per cell: labels, ``seeds``, ``backbone`` and ``selection`` as trained, then
    per metric ``<m>``, ``<m>_std``, ``<m>_paper``, ``<m>_diff`` (ours - paper), all in %,
    ``modality_dropout`` as trained and ``noisy_seeds`` (:func:`noisy_seeds`).

    ``std`` is the sample standard deviation over seeds (ddof=1; NaN for one seed).
    """
    lines = []
    for cell in expand_cells(table, suite_set):
        line: dict = {table.row_label: cell.id[1], table.column_label: cell.id[2]}
        line["backbone"], line["selection"] = cell_trained(cell.id, results)
        line["modality_dropout"] = cell_dropout(cell.id, results)
        seeds = 0
        for metric in table.metrics:
            values = cell_values(cell.id, metric, results)
            seeds = max(seeds, len(values))
            mean = float(np.mean(values)) if values else math.nan
            std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
            paper = paper_value(cell.paper, metric)
            paper = math.nan if paper is None else paper
            line.update({metric: mean, f"{metric}_std": std, f"{metric}_paper": paper,
                         f"{metric}_diff": mean - paper})
        line["seeds"] = seeds
        line["noisy_seeds"] = noisy_seeds(cell.id, results)
        lines.append(line)
    frame = pd.DataFrame(lines)
    order = [table.row_label, table.column_label, "seeds", "backbone", "selection"] + [
        f"{m}{s}" for m in table.metrics for s in ("", "_std", "_paper", "_diff")] + [
        "modality_dropout", "noisy_seeds"]
    return frame[order]


def _fmt(value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def display_frame(table: TableSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Strings for people: ``41.2 ± 0.5`` (or ``41.2`` for one seed), paper value, signed diff."""
    out = frame[[table.row_label, table.column_label, "seeds"]].copy()
    if _has_dropout(frame):  # only tables that trained with missing spectra get the column
        out["modality dropout"] = frame["modality_dropout"]
    for m in table.metrics:
        ours = [_fmt(v) + ("" if math.isnan(s) else f" ± {s:.1f}")
                if not math.isnan(v) else "n/a" for v, s in zip(frame[m], frame[f"{m}_std"])]
        out[m] = ours
        out[f"{m} paper"] = [_fmt(v) for v in frame[f"{m}_paper"]]
        out[f"Δ{m}"] = [_fmt(v, signed=True) for v in frame[f"{m}_diff"]]
    if _has_noise(frame):  # the mark: only tables with such a cell get the column
        out["selection"] = [f"within noise in {int(n)}/{int(s)} seeds" if n else ""
                            for n, s in zip(frame["noisy_seeds"], frame["seeds"])]
    return out


def _has_dropout(frame: pd.DataFrame) -> bool:
    return "modality_dropout" in frame and any(
        v not in ("", "0") for v in frame["modality_dropout"].astype(str))


def _has_noise(frame: pd.DataFrame) -> bool:
    return "noisy_seeds" in frame and bool((frame["noisy_seeds"] > 0).any())


def _values(column: pd.Series) -> list[str]:
    """Distinct non-empty values of comma-joined cells, in first-seen order."""
    seen: list[str] = []
    for text in column:
        for value in str(text).split(", "):
            if value and value not in seen:
                seen.append(value)
    return seen


def caption(table: TableSpec, frame: pd.DataFrame) -> str:
    """The table's title plus what the numbers are: protocol, backbone(s) trained, seeds.

    Read from the trials (``frame``), not from the grid: a suite that swaps the
    backbones (smoke) or the protocol (paper) is described as it ran.
    """
    if frame.empty or not frame["backbone"].astype(bool).any():
        return f"{table.title}; no finished trials"
    protocols = "; ".join(PROTOCOLS.get(s, s) for s in _values(frame["selection"]))
    backbones = _values(frame["backbone"])
    seeds = sorted({int(n) for n in frame["seeds"] if n > 0}) or [0]
    count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    noun = "backbone" if len(backbones) == 1 else "backbones"
    plural = "" if seeds == [1] else "s"
    return (f"{table.title}; {protocols}; {noun} trained: {', '.join(backbones)}; "
            f"{count} seed{plural} per cell")


def to_markdown(table: TableSpec, frame: pd.DataFrame) -> str:
    """A GitHub-markdown table with its caption (:func:`caption`) as a bold line."""
    shown = display_frame(table, frame)
    header = [str(c) for c in shown.columns]
    lines = [f"**{caption(table, frame)}**", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    if _has_noise(frame):
        lines += ["", f"*{NOISE_NOTE}*"]
    return "\n".join(lines) + "\n"


def to_html(table: TableSpec, frame: pd.DataFrame) -> str:
    """A standalone UTF-8 HTML page: caption + table (the charset is declared: '±' and 'Δ' would
    otherwise show as mojibake in the MLflow artifact viewer)."""
    body = display_frame(table, frame).to_html(index=False, border=1)
    title = html.escape(caption(table, frame))
    note = f"<p><i>{html.escape(NOISE_NOTE)}</i></p>\n" if _has_noise(frame) else ""
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
            f"<body>\n<h3>{title}</h3>\n{body}\n{note}</body></html>\n")


_KEY_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. /")


def metric_key(*parts: str) -> str:
    """A valid MLflow metric key from free text parts joined by '/' ('+' reads 'plus'; any other
    character MLflow refuses becomes '_')."""
    text = "/".join(" ".join(p.replace("+", " plus ").split()) for p in parts)
    return "".join(ch if ch in _KEY_OK else "_" for ch in text)[:250]


def cell_metrics(suite: Suite, frames: dict[str, pd.DataFrame]) -> dict[str, float]:
    """Every table cell as parent-run metrics: ``<table>/<row>/<column>/<metric>`` = mean over
    seeds (%) and ``.../<metric>_std`` beside it (absent for one seed); empty cells are left out."""
    out = {}
    for name, frame in frames.items():
        table = suite.table(name)
        for line in frame.to_dict("records"):
            for metric in table.metrics:
                for suffix in ("", "_std"):
                    value = line[metric + suffix]
                    if not math.isnan(value):
                        key = metric_key(name, str(line[table.row_label]),
                                         str(line[table.column_label]), metric + suffix)
                        out[key] = float(value)
    return out


def to_csv(frame: pd.DataFrame) -> str:
    """The numeric frame as CSV (NaN as empty)."""
    return frame.to_csv(index=False, float_format="%.4f")


def assemble_suite(suite: Suite, results: list[TrialResult]) -> dict[str, pd.DataFrame]:
    """``{table name: frame}`` for every table of the suite, in suite order."""
    return {t.name: assemble_table(t, results, suite.set) for t in suite.tables}


def suite_markdown(suite: Suite, frames: dict[str, pd.DataFrame]) -> str:
    """All tables of the suite as one markdown document (what the driver prints)."""
    return "\n".join(to_markdown(suite.table(name), frame) for name, frame in frames.items())


def run_checks(suite: Suite, frames: dict[str, pd.DataFrame]) -> list[tuple[bool, str]]:
    """Evaluate the suite's checks: ``[(passed, message)]``; a check on a missing table is skipped."""
    outcome = []
    for check in suite.checks:
        if check.table not in frames:
            continue
        table = suite.table(check.table)
        frame = frames[check.table]
        for column in frame[table.column_label].unique():
            sub = frame[frame[table.column_label] == column].set_index(table.row_label)
            ours = sub[check.metric].get(check.row, math.nan)
            others = {r: sub[check.metric].get(r, math.nan) for r in check.above}
            ok = not math.isnan(ours) and all(not math.isnan(v) and ours > v for v in others.values())
            detail = ", ".join(f"{r} {_fmt(v)}" for r, v in others.items())
            outcome.append((ok, f"{check.table} [{column}] {check.row} {check.metric} "
                                f"{_fmt(ours)} > {detail}: {'PASS' if ok else 'FAIL'}"))
    return outcome
