"""Print what a manifest holds: tuples, ids and cameras per split, spectra, challenges, statistics.

The numbers come from plain functions (``split_summary``,
``challenge_counts``, ``dataset_statistics``, ``summarize``) so code and
tests can use them without parsing text. Only the small columns are read,
never the image bytes.

Example:
  msreid inspect manifests/rgbnt100
"""

from __future__ import annotations

import argparse

import pandas as pd
import pyarrow as pa

from msreid.data.schema import SPLITS, manifest_info, read_manifest, verify_manifest

SUMMARY_COLUMNS = ["split", "pid", "camera", "scene", "challenge"]


def _frame(table: pa.Table) -> pd.DataFrame:
    cols = [c for c in SUMMARY_COLUMNS if c in table.column_names]
    return table.select(cols).to_pandas()


def split_summary(table: pa.Table) -> pd.DataFrame:
    """Per split (rows train, query, gallery): ``tuples``, ``ids``, ``cameras`` (distinct counts)."""
    df = _frame(table)
    out = pd.DataFrame({
        "tuples": df.groupby("split").size(),
        "ids": df.groupby("split")["pid"].nunique(),
        "cameras": df.groupby("split")["camera"].nunique(),
    })
    return out.reindex([s for s in SPLITS if s in out.index]).astype(int)


def challenge_counts(table: pa.Table) -> pd.DataFrame:
    """Tuples per challenge tag (rows) and split (columns); empty when nothing is tagged."""
    df = _frame(table).dropna(subset=["challenge"])
    if df.empty:
        return pd.DataFrame()
    counts = df.groupby(["challenge", "split"]).size().unstack("split", fill_value=0)
    return counts.reindex(columns=[s for s in SPLITS if s in counts.columns]).astype(int)


def _stats_row(df: pd.DataFrame) -> dict[str, float]:
    views = df.groupby("pid")["camera"].nunique()
    per_id = df.groupby("pid").size()
    return {"ids": int(df["pid"].nunique()), "tuples": int(len(df)),
            "views_min": int(views.min()), "views_mean": float(views.mean()),
            "views_max": int(views.max()), "tuples_per_id_min": int(per_id.min()),
            "tuples_per_id_mean": float(per_id.mean()), "tuples_per_id_max": int(per_id.max())}


def dataset_statistics(table: pa.Table) -> pd.DataFrame:
    """The paper's dataset table: ids, tuples, views (cameras) and tuples per id, min/mean/max.

    Rows: each split present, then ``train+gallery`` (the whole dataset: the
    query is drawn from the gallery in RGBN300 / RGBNT100 and equals it in
    RGBNT201, so it is not added again).
    """
    df = _frame(table)
    rows = {s: _stats_row(df[df["split"] == s]) for s in SPLITS if (df["split"] == s).any()}
    both = df[df["split"].isin(["train", "gallery"])]
    if not both.empty:
        rows["train+gallery"] = _stats_row(both)
    return pd.DataFrame.from_dict(rows, orient="index")


def summarize(table: pa.Table) -> dict:
    """Everything ``msreid inspect`` prints, as data.

    Keys: ``layout``, ``spectra``, ``fingerprint`` (from the table's metadata,
    None if absent), ``splits`` (split_summary), ``challenges``
    (challenge_counts), ``statistics`` (dataset_statistics).
    """
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return {
        "layout": meta.get("msreid.layout"),
        "spectra": tuple(s for s in meta.get("msreid.spectra", "").split(",") if s),
        "fingerprint": meta.get("msreid.fingerprint"),
        "splits": split_summary(table),
        "challenges": challenge_counts(table),
        "statistics": dataset_statistics(table),
    }


def format_split_table(splits: pd.DataFrame) -> str:
    return splits.to_string()


def format_summary(summary: dict, num_rows: int, path: str) -> str:
    """The text ``msreid inspect`` prints."""
    stats = summary["statistics"].copy()
    for c in ("views_mean", "tuples_per_id_mean"):
        stats[c] = stats[c].map(lambda v: f"{v:.1f}")
    challenges = summary["challenges"]
    lines = [
        f"manifest   {path}",
        f"layout     {summary['layout']}",
        f"spectra    {', '.join(summary['spectra'])}",
        f"tuples     {num_rows}",
        f"fingerprint {summary['fingerprint']}",
        "",
        "per split:",
        format_split_table(summary["splits"]),
        "",
        "challenges: " + ("none" if challenges.empty else ""),
    ]
    if not challenges.empty:
        lines.append(challenges.to_string())
    lines += ["", "dataset statistics (views = distinct cameras per id):", stats.to_string()]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST",
                        help="manifest directory or URI (file://, s3://, gs://) written by "
                        "`msreid ingest`")


def main(args: argparse.Namespace) -> int:
    info = manifest_info(args.manifest)
    checked = verify_manifest(args.manifest)  # UserError naming any damaged part file
    table = read_manifest(args.manifest, columns=SUMMARY_COLUMNS)
    print(format_summary(summarize(table), info.num_rows, info.path))
    print(f"\nchecksums  {checked} part file(s) match _SHA256SUMS" if checked else
          "\nchecksums  none recorded (version-1 manifest): re-run `msreid ingest --overwrite`")
    return 0
