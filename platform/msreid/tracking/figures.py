"""Figures of a trial: CMC curve, ranked lists like the paper's Fig. 6, CAM overlays.

Inputs are the files a run writes (``cmc.csv``: rank, cmc; ``ranking.json``:
per query ``query_row``, ``gallery_rows``, ``match``), the manifest (images
by global row index) and the final checkpoint (``load_model``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from msreid.data.decode import decode_row
from msreid.data.schema import manifest_info, read_manifest
from msreid.data.transforms import normalize, resize
from msreid.train.checkpoint import load_json, load_model

GREEN = (0, 170, 0)
RED = (200, 0, 0)


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display on cluster nodes)."""
    import matplotlib  # lazy: only the processes that draw pay for matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cmc_plot(cmc_csv: str | Path, out: str | Path, title: str = "CMC (test set)") -> Path:
    """Plot ``cmc.csv`` (columns rank, cmc in [0, 1]) as a PNG; returns ``out``."""
    with open(cmc_csv) as f:
        rows = list(csv.DictReader(f))
    ranks = [int(r["rank"]) for r in rows]
    cmc = [100.0 * float(r["cmc"]) for r in rows]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(ranks, cmc, marker=".", lw=1.5)
    for k in (1, 5, 10):
        if k <= len(cmc):
            ax.annotate(f"R-{k} {cmc[k - 1]:.1f}", (k, cmc[k - 1]), textcoords="offset points",
                        xytext=(4, -12), fontsize=8)
    ax.set(xlabel="rank", ylabel="matching rate (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)


def decoded_rows(manifest: str, rows: list[int], spectra: tuple[str, ...]
                 ) -> dict[int, dict[str, np.ndarray]]:
    """``{row: {spectrum: [H, W, 3] uint8}}`` for the global row indices ``rows``."""
    wanted = sorted(set(int(r) for r in rows))
    cols = ["blobs"] + [f"{s}_{k}" for s in spectra for k in ("src", "box")]
    table = read_manifest(manifest, columns=cols, rows=wanted)
    return {r: decode_row(row, spectra) for r, row in zip(wanted, table.to_pylist())}


def _tile(tup: dict[str, np.ndarray], spectra, size: tuple[int, int], border: tuple | None):
    """Spectra stacked vertically, each resized to ``size`` (H, W), with an optional border."""
    pieces = [np.asarray(Image.fromarray(tup[s]).resize(size[::-1])) for s in spectra]
    tile = np.concatenate(pieces, axis=0)
    if border is not None:
        tile = np.asarray(ImageOps.expand(Image.fromarray(tile), border=3, fill=border))
    else:
        tile = np.pad(tile, ((3, 3), (3, 3), (0, 0)), constant_values=255)
    return tile


def ranked_list_figure(ranking_json: str | Path, manifest: str, out: str | Path,
                       top: int = 5, max_queries: int = 4, size: tuple[int, int] = (48, 96)) -> Path:
    """Fig. 6 of the paper: per query, its spectra then the top-``top`` gallery tuples,
    correct matches framed green, wrong ones red. Returns ``out``."""
    queries = json.loads(Path(ranking_json).read_text())[:max_queries]
    if not queries:
        return None
    needed = [q["query_row"] for q in queries] + [g for q in queries for g in q["gallery_rows"][:top]]
    spectra = manifest_info(manifest).spectra
    images = decoded_rows(manifest, needed, spectra)
    plt = pyplot()
    fig, axes = plt.subplots(len(queries), top + 1, squeeze=False,
                             figsize=(1.3 * (top + 1), 0.9 * len(spectra) * len(queries) + 0.4), dpi=100)
    for i, q in enumerate(queries):
        axes[i, 0].imshow(_tile(images[q["query_row"]], spectra, size, None))
        axes[i, 0].set_title(f"query id {q.get('query_pid', '')}", fontsize=7)
        for j in range(top):
            ax = axes[i, j + 1]
            if j < len(q["gallery_rows"]):
                ok = bool(q["match"][j])
                ax.imshow(_tile(images[q["gallery_rows"][j]], spectra, size, GREEN if ok else RED))
                ax.set_title(f"#{j + 1}" + (" ✓" if ok else ""), fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle(f"Top-{top} ranking ({'/'.join(spectra).upper()} stacked; green = correct)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)


def _overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """``image [H, W, 3] uint8`` blended with a jet colour map of ``cam [h, w]`` (any range)."""
    plt = pyplot()
    c = torch.from_numpy(cam[None, None].astype(np.float32))
    c = torch.nn.functional.interpolate(c, size=image.shape[:2], mode="bilinear",
                                        align_corners=False)[0, 0].numpy()
    c = (c - c.min()) / (c.max() - c.min() + 1e-8)
    heat = (plt.get_cmap("jet")(c)[..., :3] * 255).astype(np.float32)
    return (0.5 * image.astype(np.float32) + 0.5 * heat).astype(np.uint8)


def cam_overlays(checkpoint_dir: str | Path, ranking_json: str | Path, manifest: str,
                 out_dir: str | Path, max_queries: int = 3) -> list[Path]:
    """CAM M^j (eq. 1) of each spectrum over its image, for the first queries of ranking.json.

    The class shown is the one with the highest summed score over streams. One
    PNG per query: images on top, overlays below. Uses the checkpoint's best model.
    """
    if not Path(ranking_json).is_file():
        return []
    queries = json.loads(Path(ranking_json).read_text())[:max_queries]
    model, cfg = load_model(checkpoint_dir)
    meta = load_json(checkpoint_dir, "meta.json")
    spectra, size = tuple(meta["spectra"]), tuple(meta["image_size"])
    images = decoded_rows(manifest, [q["query_row"] for q in queries], spectra)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt, paths = pyplot(), []
    for q in queries:
        tup = images[q["query_row"]]
        x = {s: normalize(torch.from_numpy(np.array(resize(tup[s].transpose(2, 0, 1)[None], size))),
                          cfg.data.mean, cfg.data.std) for s in spectra}
        with torch.no_grad():
            res = model(x, return_cams=True)
        cls = int(torch.stack(res.scores).sum(0)[0].argmax())
        fig, axes = plt.subplots(2, len(spectra), squeeze=False,
                                 figsize=(2.2 * len(spectra), 2.6), dpi=100)
        for j, s in enumerate(spectra):
            img = resize(tup[s].transpose(2, 0, 1)[None], size)[0].transpose(1, 2, 0)
            axes[0, j].imshow(img)
            axes[0, j].set_title(s.upper(), fontsize=8)
            axes[1, j].imshow(_overlay(img, res.cams[j][0, cls].float().numpy()))
            for ax in axes[:, j]:
                ax.axis("off")
        fig.suptitle(f"CAM, query row {q['query_row']} (class {cls})", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"cam_query{q['query_row']}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def table_figure(frame, row_label: str, column_label: str, metrics: list[str], title: str,
                 out: str | Path) -> Path:
    """A benchmark table as labelled horizontal bars, one panel per metric: per row ours (mean
    over seeds, whisker = sample std when seeds > 1) and the paper's value beside it (%).

    ``frame``: ``msreid.tracking.tables.assemble_table``'s columns ``<m>``, ``<m>_std``,
    ``<m>_paper``.
    """
    labels = [f"{r} / {c}" for r, c in zip(frame[row_label], frame[column_label])]
    y = np.arange(len(labels))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics) + 2.5,
                                                       0.55 * len(labels) + 1.4),
                             dpi=100, sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        ours = frame[metric].to_numpy(float)
        std = np.nan_to_num(frame[f"{metric}_std"].to_numpy(float))
        paper = frame[f"{metric}_paper"].to_numpy(float)
        ax.barh(y - 0.2, np.nan_to_num(ours), 0.4, xerr=std, capsize=3, label="ours")
        ax.barh(y + 0.2, np.nan_to_num(paper), 0.4, color="#bbbbbb", label="paper")
        for yi, value in zip(y, ours):
            if np.isfinite(value):
                ax.annotate(f"{value:.1f}", (value, yi - 0.2), xytext=(3, -3),
                            textcoords="offset points", fontsize=7)
        ax.set(xlabel=f"{metric} (%)", xlim=(0, 100))
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, labels)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)
