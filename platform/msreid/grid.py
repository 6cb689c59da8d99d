"""Benchmark grids as data: YAML tables -> cells -> trials (cell x seed).

Two kinds of YAML file live in ``experiments/grids/`` (format in
docs/BENCHMARK.md):

* a *table* (``table3_rgbnt100.yaml``): ``rows`` x ``columns`` of levels, each
  level a name plus config overrides (``set``, flat dotted keys of
  ``msreid.config``), an optional ``dataset`` and the coordinates of the
  paper's published cell (``paper_backbone``, ``paper_row``);
* a *suite* (``smoke.yaml``, ``paper.yaml``): which tables to run, with which
  training preset, seeds, suite-wide overrides, trial resources and checks.

A cell's overrides are merged table < column < row < suite (later wins).
Cells with identical (dataset, overrides) share one trial per seed (Table 5's
"baseline (MSN)" is Table 3's "RGB-N-T MSN"), as in the paper. A trial key
is a hash of (dataset, overrides, seed): stable when cells are added, so
``--resume`` and MLflow look-ups keep working after a grid edit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from msreid.errors import UserError

CellId = tuple[str, str, str]
"""(table name, row name, column name)."""


@dataclass(frozen=True)
class Level:
    """One row or column of a table."""

    name: str = field(metadata={"help": "label printed in the table"})
    set: dict[str, Any] = field(default_factory=dict,
                                metadata={"help": "config overrides, flat dotted keys"})
    dataset: str | None = field(default=None, metadata={"help": "dataset (manifest layout) name"})
    paper_backbone: str | None = field(default=None, metadata={"help": "paper column label"})
    paper_row: str | None = field(default=None, metadata={"help": "paper row label"})


@dataclass(frozen=True)
class TableSpec:
    """A table of the benchmark: rows x columns of cells, metrics shown per cell."""

    name: str = field(metadata={"help": "short id, e.g. table3"})
    title: str = field(metadata={"help": "caption printed above the table"})
    rows: tuple[Level, ...] = field(metadata={"help": "row levels, in print order"})
    columns: tuple[Level, ...] = field(metadata={"help": "column levels, in print order"})
    metrics: tuple[str, ...] = field(default=("mAP", "R1", "R5", "R10"),
                                     metadata={"help": "metric names (test/<name>)"})
    row_label: str = field(default="Row", metadata={"help": "header of the row column"})
    column_label: str = field(default="Column", metadata={"help": "header of the column column"})
    paper_table: str | None = field(default=None, metadata={"help": "key in paper_tables.yaml"})
    base: Level = field(default_factory=lambda: Level(name=""),
                        metadata={"help": "table-wide overrides / dataset / paper keys"})


@dataclass(frozen=True)
class Cell:
    """One table cell: what to train, and where the paper's number is."""

    id: CellId
    dataset: str
    overrides: dict[str, Any]
    paper: tuple[str, str, str, str] | None  # (paper table, dataset, backbone, row)


@dataclass(frozen=True)
class TrialSpec:
    """One Tune trial: a dataset, a seed and config overrides, feeding >= 0 table cells.

    The benchmark makes one per distinct (dataset, effective config, seed), with a stable
    ``key``; an alpha search leaves ``key`` empty (the trial makes ``<prefix>-<Tune trial id>``)
    and names in ``searched`` the keys Tune samples. The spec crosses Tune's param space as
    ``to_dict()`` (JSON-able: Tune stores it for ``--resume``; a searched value may be a Tune
    domain there) and comes back with ``from_dict``.
    """

    key: str  # stable trial id (trial_key); "" = "<prefix>-<Tune trial id>", made by the trial
    dataset: str
    seed: int
    overrides: dict[str, Any]  # flat dotted config keys
    cells: tuple[CellId, ...] = ()
    label: str = ""  # progress-table / error name; "" = the searched values or the key
    prefix: str = "trial"
    searched: dict[str, Any] = field(default_factory=dict)  # flat keys Tune samples

    def to_dict(self) -> dict[str, Any]:
        """The spec as a Tune param-space value (lists for tuples); inverse of ``from_dict``."""
        return {"key": self.key, "dataset": self.dataset, "seed": self.seed,
                "overrides": dict(self.overrides), "cells": [list(c) for c in self.cells],
                "label": self.label, "prefix": self.prefix, "searched": dict(self.searched)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSpec:
        """The spec of a Tune trial's ``config["trial"]``; UserError on a missing or unknown key."""
        names = {f.name for f in fields(cls)}
        missing, unknown = sorted(names - set(d)), sorted(set(d) - names)
        if missing or unknown:
            raise UserError(f"a Tune trial's spec {d!r} has missing key(s) {missing} and unknown "
                            f"key(s) {unknown}; it was made by another msreid version: start a "
                            "new run (without --resume)")
        return cls(key=str(d["key"]), dataset=str(d["dataset"]), seed=int(d["seed"]),
                   overrides=dict(d["overrides"]), cells=tuple(tuple(c) for c in d["cells"]),
                   label=str(d["label"]), prefix=str(d["prefix"]), searched=dict(d["searched"]))


def cell_label(cell: CellId, seed: int) -> str:
    """Readable trial name: the cell's 'table | row | column' and the seed."""
    table, row, column = cell
    return f"{table} | {row} | {column} | seed {seed}"


@dataclass(frozen=True)
class Check:
    """A sanity check on the assembled results: ``row`` beats every row in ``above``."""

    table: str
    metric: str
    row: str
    above: tuple[str, ...]


@dataclass(frozen=True)
class MatrixCheck:
    """A check on the query x gallery spectrum matrices: does ``row`` raise the mean
    off-diagonal ``metric`` over ``against`` by more than the seed spread (per column)?"""

    table: str
    row: str
    against: str
    metric: str = "mAP"


@dataclass(frozen=True)
class Suite:
    """A benchmark: tables, training preset, seeds and how trials are packed."""

    name: str
    preset: str
    tables: tuple[TableSpec, ...]
    seeds: tuple[int, ...] = (0,)
    set: dict[str, Any] = field(default_factory=dict)
    trial_resources: tuple[dict[str, float], ...] = ({"CPU": 1.0},)  # placement-group bundles
    max_concurrent_trials: int = 0
    max_failures: int = 1
    checks: tuple[Check, ...] = ()
    source: str = ""
    synth: dict[str, Any] = field(default_factory=dict)  # SynthSpec fields of the synthetic default data
    matrix_checks: tuple[MatrixCheck, ...] = ()

    def table(self, name: str) -> TableSpec:
        """The table called ``name``."""
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"grid file {path} does not exist; see docs/BENCHMARK.md for the format")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"grid file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"grid file {path}: expected a mapping at the top level")
    return data


_LEVEL_KEYS = {"name", "set", "dataset", "paper_backbone", "paper_row"}


def _level(raw: Any, where: str, need_name: bool = True) -> Level:
    if isinstance(raw, str):
        return Level(name=raw)
    if not isinstance(raw, dict) or ("name" not in raw and need_name):
        raise UserError(f"{where}: expected a mapping with at least `name`, got {raw!r}")
    unknown = set(raw) - _LEVEL_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_LEVEL_KEYS)}")
    overrides = raw.get("set") or {}
    if not isinstance(overrides, dict):
        raise UserError(f"{where}.set: expected a mapping of dotted config keys, got {overrides!r}")
    return Level(name=str(raw.get("name", "")), set=dict(overrides), dataset=raw.get("dataset"),
                 paper_backbone=raw.get("paper_backbone"), paper_row=raw.get("paper_row"))


def _levels(raw: Any, where: str) -> tuple[Level, ...]:
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: expected a non-empty list of levels")
    levels = tuple(_level(item, f"{where}[{i}]") for i, item in enumerate(raw))
    names = [lv.name for lv in levels]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: level names must be unique, got {names}")
    return levels


def load_table(path: str | Path) -> TableSpec:
    """Read a table grid YAML file (see the module docstring)."""
    path = Path(path)
    data = _read_yaml(path)
    for key in ("name", "rows", "columns"):
        if key not in data:
            raise UserError(f"grid file {path}: missing field `{key}`")
    base = _level({k: data[k] for k in _LEVEL_KEYS - {"name"} if k in data}, f"{path}",
                  need_name=False)
    return TableSpec(
        name=str(data["name"]), title=str(data.get("title", data["name"])),
        rows=_levels(data["rows"], f"{path}: rows"),
        columns=_levels(data["columns"], f"{path}: columns"),
        metrics=tuple(data.get("metrics", ("mAP", "R1", "R5", "R10"))),
        row_label=str(data.get("row_label", "Row")),
        column_label=str(data.get("column_label", "Column")),
        paper_table=data.get("paper_table"), base=base)


def _select(table: TableSpec, axis: str, raw: Any, where: str) -> TableSpec:
    """Keep the named rows/columns (strings) and/or add new ones (mappings), in the given order."""
    by_name = {lv.name: lv for lv in getattr(table, axis)}
    chosen = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            if item not in by_name:
                raise UserError(f"{where}[{i}]: table {table.name} has no {axis[:-1]} {item!r}; "
                                f"it has {list(by_name)}")
            chosen.append(by_name[item])
        else:
            chosen.append(_level(item, f"{where}[{i}]"))
    return TableSpec(**{**table.__dict__, axis: tuple(chosen)})


def _bundles(raw: Any, where: str) -> tuple[dict[str, float], ...]:
    """``{CPU: 1}`` or ``[{CPU: 1}, {CPU: 1}]`` -> placement-group bundles (CPU/GPU upper-cased).

    A trial's first bundle runs the trial function (and a local-mode training);
    further bundles are for the tasks it starts (Ray Data decoding, the
    manifest loading), which Tune schedules inside the trial's placement group.
    """
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(b, dict) and b for b in items):
        raise UserError(f"{where}: expected a mapping like {{CPU: 1, GPU: 0.5}} or a list of them")
    try:
        return tuple({str(k).upper() if str(k).lower() in ("cpu", "gpu") else str(k): float(v)
                      for k, v in b.items()} for b in items)
    except (TypeError, ValueError):
        raise UserError(f"{where}: resource amounts must be numbers, got {raw!r}") from None


def load_suite(path: str | Path) -> Suite:
    """Read a suite YAML file; table files are resolved relative to it."""
    path = Path(path)
    data = _read_yaml(path)
    for key in ("name", "preset", "tables"):
        if key not in data:
            raise UserError(f"suite file {path}: missing field `{key}`")
    tables = []
    for i, entry in enumerate(data["tables"]):
        entry = {"grid": entry} if isinstance(entry, str) else entry
        table = load_table(path.parent / entry["grid"])
        for axis in ("rows", "columns"):
            if axis in entry:
                table = _select(table, axis, entry[axis], f"{path}: tables[{i}].{axis}")
        tables.append(table)
    checks = tuple(Check(table=c["table"], metric=c.get("metric", "mAP"), row=c["row"],
                         above=tuple(c["above"])) for c in data.get("checks", []))
    try:
        matrix_checks = tuple(MatrixCheck(**c) for c in data.get("matrix_checks", []))
    except TypeError as exc:
        raise UserError(f"suite file {path}: matrix_checks: {exc}; each entry needs table, row, "
                        "against (and optionally metric)") from None
    resources = _bundles(data.get("trial_resources") or {"CPU": 1}, f"{path}: trial_resources")
    synth = data.get("synth") or {}
    if not isinstance(synth, dict):
        raise UserError(f"suite file {path}: `synth` must be a mapping of SynthSpec fields "
                        f"(e.g. {{variant: hard, ids: 30}}), got {synth!r}")
    return Suite(name=str(data["name"]), preset=str(data["preset"]), tables=tuple(tables),
                 seeds=tuple(int(s) for s in data.get("seeds", [0])),
                 set=dict(data.get("set") or {}), trial_resources=resources,
                 max_concurrent_trials=int(data.get("max_concurrent_trials", 0)),
                 max_failures=int(data.get("max_failures", 1)), checks=checks, source=str(path),
                 synth=dict(synth), matrix_checks=matrix_checks)


def expand_cells(table: TableSpec, suite_set: dict[str, Any] | None = None) -> list[Cell]:
    """All cells of ``table``, row-major; overrides merged table < column < row < suite."""
    cells = []
    for row in table.rows:
        for column in table.columns:
            levels = (table.base, column, row)
            overrides: dict[str, Any] = {}
            for level in levels:
                overrides.update(level.set)
            overrides.update(suite_set or {})
            dataset = row.dataset or column.dataset or table.base.dataset
            if not dataset:
                raise UserError(f"table {table.name}: cell ({row.name}, {column.name}) has no "
                                "`dataset`; set it on the table, its rows or its columns")
            backbone = row.paper_backbone or column.paper_backbone or table.base.paper_backbone
            paper_row = row.paper_row or column.paper_row or table.base.paper_row
            paper = None
            if table.paper_table and backbone and paper_row:
                paper = (table.paper_table, dataset, backbone, paper_row)
            cells.append(Cell(id=(table.name, row.name, column.name), dataset=dataset,
                              overrides=overrides, paper=paper))
    return cells


def restrict_suite(suite: Suite, datasets: set[str]) -> tuple[Suite, list[str]]:
    """The suite without the rows, columns and tables that have no cell on ``datasets``.

    Returns the restricted suite and a note per dropped table / level.
    """
    tables, notes = [], []
    for table in suite.tables:
        cells = expand_cells(table, suite.set)
        runs = {c.id[1:] for c in cells if c.dataset in datasets}
        rows = tuple(r for r in table.rows if any(k[0] == r.name for k in runs))
        cols = tuple(c for c in table.columns if any(k[1] == c.name for k in runs))
        missing = sorted({c.dataset for c in cells} - datasets)
        if not rows:
            notes.append(f"{table.name} skipped: no data for {', '.join(missing)}")
            continue
        if len(rows) < len(table.rows) or len(cols) < len(table.columns):
            notes.append(f"{table.name}: cells on {', '.join(missing)} left out (no data)")
        tables.append(TableSpec(**{**table.__dict__, "rows": rows, "columns": cols}))
    return Suite(**{**suite.__dict__, "tables": tuple(tables)}), notes


def trial_key(dataset: str, overrides: dict[str, Any], seed: int) -> str:
    """Stable id of a trial: ``<dataset>-<sha1(overrides)[:10]>-s<seed>``."""
    blob = json.dumps({"dataset": dataset, "overrides": overrides}, sort_keys=True, default=str)
    return f"{dataset}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}-s{seed}"


def expand_trials(suite: Suite, datasets: set[str] | None = None) -> list[TrialSpec]:
    """Trials of ``suite`` (cells x seeds, identical cells merged), in grid order.

    ``datasets``: keep only cells on these datasets (None keeps all).
    """
    merged: dict[str, dict] = {}
    for table in suite.tables:
        for cell in expand_cells(table, suite.set):
            if datasets is not None and cell.dataset not in datasets:
                continue
            for seed in suite.seeds:
                key = trial_key(cell.dataset, cell.overrides, seed)
                entry = merged.setdefault(key, {"dataset": cell.dataset, "seed": seed,
                                                "overrides": cell.overrides, "cells": []})
                entry["cells"].append(cell.id)
    return [TrialSpec(key=k, dataset=v["dataset"], seed=v["seed"], overrides=v["overrides"],
                      cells=tuple(v["cells"]), label=cell_label(v["cells"][0], v["seed"]))
            for k, v in merged.items()]


def suite_to_dict(suite: Suite) -> dict:
    """A JSON-able description of the suite (logged on the parent run for `msreid report`)."""
    def level(lv: Level) -> dict:
        return dict(lv.__dict__)

    def table(t: TableSpec) -> dict:
        d = dict(t.__dict__)
        d.update(rows=[level(r) for r in t.rows], columns=[level(c) for c in t.columns],
                 metrics=list(t.metrics), base=level(t.base))
        return d

    d = dict(suite.__dict__)
    d.update(tables=[table(t) for t in suite.tables], seeds=list(suite.seeds),
             trial_resources=[dict(b) for b in suite.trial_resources],
             checks=[dict(c.__dict__, above=list(c.above)) for c in suite.checks],
             matrix_checks=[dict(c.__dict__) for c in suite.matrix_checks])
    return d


def suite_from_dict(d: dict) -> Suite:
    """Inverse of ``suite_to_dict``."""
    def level(x: dict) -> Level:
        return Level(**x)

    def table(x: dict) -> TableSpec:
        return TableSpec(**{**x, "rows": tuple(level(r) for r in x["rows"]),
                            "columns": tuple(level(c) for c in x["columns"]),
                            "metrics": tuple(x["metrics"]), "base": level(x["base"])})

    return Suite(**{**d, "tables": tuple(table(t) for t in d["tables"]),
                    "seeds": tuple(d["seeds"]),
                    "trial_resources": tuple(d["trial_resources"]),
                    "checks": tuple(Check(**{**c, "above": tuple(c["above"])}) for c in d["checks"]),
                    "matrix_checks": tuple(MatrixCheck(**c) for c in d.get("matrix_checks", []))})
