"""The paper's published numbers (Tables 2-5), read from ``msreid/reference/paper_tables.yaml``."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

PaperKey = tuple[str, str, str, str]
"""(paper table, dataset, backbone label, row label),
e.g. ("table3", "rgbnt100", "ResNet50", "RGB one-stream")."""


@lru_cache(maxsize=4)
def load_paper_tables(path: str | None = None) -> dict[PaperKey, dict[str, float]]:
    """All published cells: ``{(table, dataset, backbone, row): {"mAP": 41.0, "R1": ..}}`` (in %)."""
    if path is None:
        text = resources.files("msreid.reference").joinpath("paper_tables.yaml").read_text()
    else:
        text = Path(path).read_text()
    data = yaml.safe_load(text)["tables"]
    cells: dict[PaperKey, dict[str, float]] = {}
    for table, spec in data.items():
        for entry in spec["entries"]:
            key = (table, entry["dataset"], entry["backbone"], entry["row"])
            cells[key] = {m: float(entry[m]) for m in spec["metrics"]}
    return cells


def paper_value(key: PaperKey | None, metric: str) -> float | None:
    """The published ``metric`` of the cell at ``key`` (in %), or None when the paper has none."""
    if key is None:
        return None
    return load_paper_tables().get(tuple(key), {}).get(metric)
