"""Saved views of MLflow 3.17's runs page: one per benchmark table, one per alpha search.

A view is what the UI's "Share" button stores as the experiment tag
``mlflow.sharedViewState.<key>`` and loads from ``?viewStateShareKey=<key>`` (read from the UI's
JavaScript bundle and checked in headless Chromium, tests/test_mlflow_ui.py). What each view does:

* **filter**: the trial runs of one benchmark invocation that feed one table, by the tag
  ``msreid.row.<table>`` every such run carries (a run shared by Table 3 and Table 5 carries
  both), so Table 5 shows exactly its rows. The parent run carries no row tag.
* **order** by run name, not by start time: ordered by start time the UI also fetches the parent
  of every listed child and shows it as "Additional runs".
* **group** by that row tag: one group per table row (seeds averaged), named by the row.
* **columns**: the row, ours, the paper's number (``paper/<table>/<metric>``) and the seed spread
  (``seeds/<metric>_min|_max|_std``, logged when the cell has more than one seed).
* **charts**: a difference table (one column per row label: ours, paper, spread side by side),
  one bar chart per metric with ours, the paper and the seed min/max as bars of the same row,
  and per-epoch curves (validation mAP, training loss) overlaid across rows, x = the ``epoch``
  metric. MLflow's bar cards draw no category axis: the row shows on hover and in the
  difference table; the parent's ``figures/<table>.png`` is the labelled figure for a paper.

The alpha view: the trials of one ``tune_alpha`` run, a scatter of ``loss.alpha`` against
validation mAP and a parallel-coordinates chart of the same.
"""

from __future__ import annotations

from msreid.tracking.runs import TAG_BENCHMARK, TAG_KIND, TAG_SEED, row_tag

SHARE_TAG_PREFIX = "mlflow.sharedViewState."
ORDER_BY_NAME = "tags.`mlflow.runName`"  # not attributes.start_time: that also lists parents
PAPER_PREFIX = "paper/"
SPREAD_PREFIX = "seeds/"
CURVES = ("val/mAP", "train/loss")
ALPHA_PARAM = "loss.alpha"
ALPHA_METRIC = "best_val/mAP"


def column(kind: str, key: str) -> str:
    """The UI's canonical column key: ``metrics.`test/mAP```."""
    return f"{kind}.`{key}`"


def quote(value: str) -> str:
    """A string literal of MLflow's search syntax."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def paper_metric(table: str, metric: str) -> str:
    """The metric holding the paper's value of a run's row in ``table``: ``paper/table3/mAP``."""
    return f"{PAPER_PREFIX}{table}/{metric}"


def spread_metrics(metric: str) -> tuple[str, str, str]:
    """The seed spread of a run's cell: ``seeds/mAP_min``, ``seeds/mAP_max``, ``seeds/mAP_std``."""
    return tuple(f"{SPREAD_PREFIX}{metric}_{s}" for s in ("min", "max", "std"))


def section(uuid: str, name: str) -> dict:
    return {"uuid": uuid, "name": name, "display": True, "isReordered": False, "deleted": False,
            "isGenerated": False}


def _card(kind: str, uuid: str, section_id: str, **fields) -> dict:
    return {"uuid": uuid, "type": kind, "metricSectionId": section_id, "deleted": False,
            "isGenerated": False, "runsCountToCompare": 200, **fields}


def bar_card(uuid: str, section_id: str, metrics: list[str], title: str) -> dict:
    """Bars of ``metrics`` side by side for each shown run or group."""
    return _card("BAR", uuid, section_id, metricKey=metrics[0], displayName=title,
                 **({"selectedMetricKeys": metrics} if len(metrics) > 1 else {}))


def curve_card(uuid: str, section_id: str, metric: str) -> dict:
    """A per-epoch line chart of ``metric`` with the ``epoch`` metric on the x axis."""
    return _card("LINE", uuid, section_id, metricKey=metric, displayName=f"{metric} by epoch",
                 xAxisKey="metric", selectedXAxisMetricKey="epoch", useGlobalXaxisKey=False,
                 xAxisScaleType="linear", scaleType="linear", lineSmoothness=0,
                 useGlobalLineSmoothing=False, range={}, displayPoints=True)


def difference_card(uuid: str, section_id: str, title: str) -> dict:
    """A table with one column per shown run or group (its name on top) and a row per metric."""
    return _card("DIFFERENCE", uuid, section_id, chartName=title,
                 compareGroups=["Model metrics"], showChangeFromBaseline=False,
                 showDifferencesOnly=False, baselineColumnUuid="")


def covered(charts: list[dict], metric_keys: list[str] | tuple[str, ...]) -> list[dict]:
    """``charts`` plus a deleted card for every other metric of the runs: the UI adds a chart (and
    a section) for each metric no card names, which would bury the view's own charts."""
    named = {c.get("metricKey") for c in charts}
    extra = [{**bar_card(f"hidden-{i}", "hidden", [key], key), "deleted": True}
             for i, key in enumerate(sorted(set(metric_keys) - named))]
    return charts + extra


def _base_state(search: str, columns: list[str], sections: list[dict], charts: list[dict],
                group_tag: str | None, metric_keys=()) -> dict:
    state = {"searchFilter": search, "orderByKey": ORDER_BY_NAME, "orderByAsc": True,
             "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": True,
             "isAccordionReordered": True,  # keep the sections in the view's order
             "compareRunSections": sections, "compareRunCharts": covered(charts, metric_keys)}
    if group_tag:
        state["groupBy"] = {"aggregateFunction": "average",
                            "groupByKeys": [{"mode": "tag", "groupByData": group_tag}]}
    return state


def trials_filter(benchmark: str, extra: str = "") -> str:
    """The search filter of one benchmark's (or alpha search's) trial runs."""
    query = f"tags.`{TAG_KIND}` = 'trial' and tags.`{TAG_BENCHMARK}` = {quote(benchmark)}"
    return f"{query} and {extra}" if extra else query


def table_view_state(benchmark: str, table: str, metrics: tuple[str, ...], title: str,
                     metric_keys=()) -> dict:
    """The saved view of one table of benchmark ``benchmark`` (see the module docstring);
    ``metric_keys``: the other metrics its runs hold (kept out of the view by ``covered``)."""
    tag = row_tag(table)
    sec_cmp, sec_curves = f"{table}-compare", f"{table}-curves"
    columns = [column("tags", tag), column("tags", TAG_SEED)]
    charts = [difference_card(f"{table}-diff", sec_cmp, f"{title}: ours vs paper (%), by row")]
    for i, metric in enumerate(metrics):
        ours = f"test/{metric}"
        low, high, std = spread_metrics(metric)
        columns += [column("metrics", m) for m in (ours, paper_metric(table, metric), std)]
        charts.append(bar_card(f"{table}-bar-{i}", sec_cmp,
                               [ours, paper_metric(table, metric), low, high],
                               f"{metric} (%): ours, paper, seed min / max"))
    charts += [curve_card(f"{table}-curve-{i}", sec_curves, m) for i, m in enumerate(CURVES)]
    sections = [section(sec_cmp, f"{title}: ours beside the paper (%)"),
                section(sec_curves, "Per-epoch curves across rows (seeds averaged)")]
    search = trials_filter(benchmark, f"tags.`{tag}` LIKE '%'")
    return _base_state(search, columns, sections, charts, tag, metric_keys)


def alpha_view_state(search_name: str, metric_keys=()) -> dict:
    """The saved view of one alpha search: ``loss.alpha`` against validation mAP."""
    sec = "alpha-sweep"
    charts = [_card("SCATTER", "alpha-scatter", sec,
                    xaxis={"key": ALPHA_PARAM, "type": "PARAM"},
                    yaxis={"key": ALPHA_METRIC, "type": "METRIC"}),
              _card("PARALLEL", "alpha-parallel", sec, selectedParams=[ALPHA_PARAM],
                    selectedMetrics=[ALPHA_METRIC, "test/mAP"], showAllRuns=True)]
    columns = [column("params", ALPHA_PARAM), column("tags", TAG_SEED),
               column("metrics", ALPHA_METRIC), column("metrics", "test/mAP")]
    return _base_state(trials_filter(search_name), columns,
                       [section(sec, f"Alpha search {search_name}: loss.alpha vs {ALPHA_METRIC} (%)")],
                       charts, None, metric_keys)


def view_key(*parts: str) -> str:
    """A share key from free text (the experiment tag key allows letters, digits, - _ . /)."""
    text = "-".join(parts)
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text)[:200]
