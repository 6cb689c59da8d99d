"""The alpha search's answer with its uncertainty: seeds per alpha, mean +- std, the verdict.

Plain pandas / numpy (and matplotlib for the chart); nothing here talks to Ray
or MLflow. The trials' table has one row per trial: ``alpha``, ``seed``,
``phase`` (``search`` or ``repeat``), ``status``, ``epochs``, ``val/mAP`` (a
fraction) and the test metrics of finished trials.

The verdict compares the best alpha with the paper's 0.001, each over its
seeds. The difference of the means is called significant only when it exceeds
both

- the selection margin, one validation query's worth of mAP
  (``1 / num_val_queries``: a smaller difference is below what the split can
  resolve), and
- the seeds' spread, ``std(best) + std(paper)`` (sample standard deviations: a
  gap the two mean +- std intervals still cover is not a difference).

Otherwise the report says "no significant difference".
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from msreid.losses import PAPER_ALPHA

TEST_KEYS = ("test/mAP", "test/R1", "test/R5", "test/R10")


def is_paper(alpha: float) -> bool:
    return math.isclose(alpha, PAPER_ALPHA, rel_tol=1e-9)


def per_alpha(table: pd.DataFrame) -> pd.DataFrame:
    """One row per alpha over its finished trials: seeds, val and test mAP mean and std.

    std is the sample standard deviation (ddof 1), NaN for a single seed.
    """
    done = table[table["status"] == "finished"]
    rows = []
    for alpha, group in done.groupby("alpha", sort=True):
        rows.append({"alpha": float(alpha), "seeds": len(group),
                     "val_mean": group["val/mAP"].mean(), "val_std": group["val/mAP"].std(ddof=1),
                     "test_mean": group["test/mAP"].mean(),
                     "test_std": group["test/mAP"].std(ddof=1)})
    return pd.DataFrame(rows, columns=["alpha", "seeds", "val_mean", "val_std", "test_mean",
                                       "test_std"])


def candidates(table: pd.DataFrame, top: int) -> list[float]:
    """The ``top`` best finished alphas of the search by val mAP other than the paper's, then the
    paper's (always repeated as the reference)."""
    search = table[(table["phase"] == "search") & (table["status"] == "finished")]
    ranked = search.sort_values("val/mAP", ascending=False)["alpha"].tolist()
    best = [a for a in ranked if not is_paper(a)][:top]
    return best + [PAPER_ALPHA]


def verdict(summary: pd.DataFrame, margin: float) -> dict:
    """Best alpha (highest mean val mAP among alphas with >= 2 seeds, else among all) against the
    paper's (or, when the paper's is best, the runner-up); see the module docstring."""
    pool = summary[summary["seeds"] >= 2]
    pool = pool if len(pool) else summary
    if pool.empty:
        raise ValueError("no finished trial")
    ranked = pool.sort_values("val_mean", ascending=False).to_dict("records")
    best = ranked[0]
    paper = next((r for r in ranked if is_paper(r["alpha"])), None)
    other = paper if paper is not None and not is_paper(best["alpha"]) else (
        ranked[1] if len(ranked) > 1 else None)
    out = {"best": best, "other": other, "margin": margin, "gap": math.nan,
           "spread": math.nan, "significant": False}
    if other is None:
        return out
    gap = best["val_mean"] - other["val_mean"]
    spread = _zero_if_nan(best["val_std"]) + _zero_if_nan(other["val_std"])
    out.update(gap=gap, spread=spread, significant=bool(gap > margin and gap > spread
                                                        and best["seeds"] >= 2
                                                        and other["seeds"] >= 2))
    return out


def _zero_if_nan(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else float(x)


def _pm(row: dict, key: str = "val") -> str:
    mean, std = 100 * row[f"{key}_mean"], row[f"{key}_std"]
    spread = "" if math.isnan(std) else f" +- {100 * std:.1f}"
    return f"{mean:.1f}{spread} ({row['seeds']} seed{'s' if row['seeds'] != 1 else ''})"


def verdict_sentence(v: dict) -> str:
    """One line: the best alpha with mean +- std, against the paper's (or runner-up), and why."""
    best, other = v["best"], v["other"]
    head = f"best alpha = {best['alpha']:.3g}: val mAP {_pm(best)}"
    if other is None:
        return head + "; nothing to compare it with (one finished alpha)"
    name = "the paper's 0.001" if is_paper(other["alpha"]) else f"the runner-up {other['alpha']:.3g}"
    head += f" against {name}: {_pm(other)}; difference {100 * v['gap']:+.1f} points: "
    if v["significant"]:
        return head + (f"significant (above the seeds' spread {100 * v['spread']:.1f} and one "
                       f"validation query's worth of mAP, {100 * v['margin']:.1f})")
    reasons = []
    if best["seeds"] < 2 or other["seeds"] < 2:
        reasons.append("fewer than 2 seeds on a side")
    if v["gap"] <= v["spread"]:
        reasons.append(f"the seeds' spread {100 * v['spread']:.1f} covers it")
    if v["gap"] <= v["margin"]:
        reasons.append(f"below one validation query's worth of mAP, {100 * v['margin']:.1f}")
    return head + "no significant difference (" + "; ".join(reasons) + ")"


def to_markdown(table: pd.DataFrame, summary: pd.DataFrame, v: dict) -> str:
    """Per alpha (mean +- std over seeds) and per trial, in %, with the verdict line."""
    lines = ["**alpha of L_hsc: validation-selected (test = test set at the validation-selected "
             "checkpoint), in %, mean +- std over seeds**", "",
             "| alpha | seeds | val mAP | test mAP |", "|---|---|---|---|"]
    for row in summary.to_dict("records"):
        mark = " **(best)**" if row["alpha"] == v["best"]["alpha"] else ""
        mark += " (paper)" if is_paper(row["alpha"]) else ""
        lines.append(f"| {row['alpha']:.2e}{mark} | {row['seeds']} | {_pm(row).split(' (')[0]} | "
                     f"{_pm(row, 'test').split(' (')[0]} |")
    lines += ["", "| trial | alpha | seed | status | epochs | val mAP | test mAP |",
              "|---|---|---|---|---|---|---|"]
    for row in table.to_dict("records"):
        cells = [f"{100 * row[k]:.1f}" if not math.isnan(row[k]) else "n/a"
                 for k in ("val/mAP", "test/mAP")]
        lines.append(f"| {row['phase']} | {row['alpha']:.2e} | {row['seed']} | {row['status']} | "
                     f"{row['epochs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", verdict_sentence(v)]) + "\n"


def plot(table: pd.DataFrame, summary: pd.DataFrame, v: dict, out: Path) -> Path:
    """Validation mAP against alpha (log x): mean +- std over seeds per alpha, every trial as a
    dot, the paper's alpha and the best one marked."""
    from msreid.tracking.figures import pyplot  # matplotlib: only the driver that draws pays

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    done = table[table["status"] == "finished"]
    ax.semilogx(done["alpha"], 100 * done["val/mAP"], ".", color="grey", alpha=0.6,
                label="one trial (val)")
    stopped = table[table["status"] != "finished"]
    if len(stopped):
        ax.semilogx(stopped["alpha"], 100 * stopped["val/mAP"], "x", color="grey",
                    label="stopped early (val so far)")
    ax.errorbar(summary["alpha"], 100 * summary["val_mean"],
                yerr=100 * summary["val_std"].fillna(0.0), fmt="o", capsize=4, color="C0",
                label="val mAP, mean +- std over seeds")
    ax.axvline(PAPER_ALPHA, color="grey", ls=":", label="paper (0.001)")
    ax.axvline(v["best"]["alpha"], color="green", ls="--", label=f"best {v['best']['alpha']:.2g}")
    ax.set(xscale="log", xlabel="alpha (weight of L_hsc)", ylabel="validation mAP (%)",
           title="validation mAP against alpha" + ("" if v["significant"]
                                                   else " (no significant difference)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
