"""Evaluation of a run's model: features, ranks, and the artifact files of the final checkpoint.

Plain torch / numpy on top of ``msreid.evaluation``; the batches come from a
Ray Data iterator but this module does not import Ray.

Artifacts written into the final checkpoint (see docs/TRAINING.md; their names are
``msreid.evaluation.names``): ``cmc.csv`` (rank, cmc), ``missing_modality.csv`` (subset,
metrics), ``per_challenge.csv`` (challenge, num_queries, metrics), ``ranking.json``
(top-10 gallery rows of a few queries, with match flags) and ``cross_spectral.csv``
(query subset, gallery subset, metrics in %: the query x gallery spectrum matrix).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from msreid.data.transforms import normalize
from msreid.errors import UserError
from msreid.evaluation import (
    RankResult,
    challenge_table,
    cross_spectral_matrix,
    evaluate_features,
    matrix_table,
    names,
    spectrum_subsets,
    subset_name,
    subset_table,
)
from msreid.train.sampling import RowMeta

__all__ = ["extract_features", "rank_features", "per_challenge", "ranking_lists",
           "spectrum_matrix", "write_artifacts", "spectrum_subsets", "subset_name"]


@torch.no_grad()
def extract_features(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                     spectra: Sequence[str], subsets: Sequence[tuple[str, ...]],
                     mean: Sequence[float], std: Sequence[float], device: torch.device,
                     channels_last: bool = False) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Embed every batch (``rows [n]``, uint8 ``[n, 3, H, W]`` per spectrum) for each subset.

    Returns (rows [N], {subset name: float32 [N, D] on the CPU}); ``model`` is
    the unwrapped MultiStreamNet, switched to eval mode here (and left so).
    """
    model.eval()
    rows, feats = [], {subset_name(s): [] for s in subsets}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for batch in batches:
        images = {s: normalize(batch[s].to(device, non_blocking=True), mean, std)
                  .contiguous(memory_format=fmt) for s in spectra}
        rows.append(np.asarray(batch["rows"].cpu()))
        for subset, f in model.embed_subsets(images, subsets, missing="drop").items():
            feats[subset_name(subset)].append(f.float().cpu())
    if not rows:
        raise UserError("evaluation set is empty: check the manifest's query/gallery splits")
    return np.concatenate(rows), {k: torch.cat(v) for k, v in feats.items()}


def _positions(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    order = np.argsort(rows)
    pos = order[np.searchsorted(rows[order], wanted)]
    if not np.array_equal(rows[pos], wanted):
        raise RuntimeError("evaluation batches did not cover every requested row")
    return pos


def rank_features(feats: torch.Tensor, rows: np.ndarray, query: np.ndarray,
                  gallery: np.ndarray, labels: RowMeta) -> RankResult:
    """CMC / mAP / mINP of ``query`` against ``gallery`` (manifest rows) from ``feats [N, D]``."""
    qp, gp = _positions(rows, query), _positions(rows, gallery)
    scenes = (labels.scene[query], labels.scene[gallery]) if labels.has_scenes else (None, None)
    return evaluate_features(feats[qp], feats[gp], labels.pid[query], labels.pid[gallery],
                             labels.camera[query], labels.camera[gallery], *scenes)


def spectrum_matrix(feats: Mapping[str, torch.Tensor], spectra: Sequence[str], rows: np.ndarray,
                    query: np.ndarray, gallery: np.ndarray,
                    labels: RowMeta) -> dict[tuple[str, str], RankResult]:
    """``msreid.evaluation.cross_spectral_matrix`` of the per-subset features ``feats``
    ({subset name: [N, D]}, as ``extract_features`` returns them) on ``query`` x ``gallery``.

    Its diagonal ``(k, k)`` is ``rank_features(feats[k], ...)``: the same call.
    """
    qp, gp = _positions(rows, query), _positions(rows, gallery)
    scenes = (labels.scene[query], labels.scene[gallery]) if labels.has_scenes else (None, None)
    return cross_spectral_matrix(
        lambda s: (feats[subset_name(s)][qp], feats[subset_name(s)][gp]), spectra,
        labels.pid[query], labels.pid[gallery], labels.camera[query], labels.camera[gallery],
        *scenes)


def per_challenge(feats: torch.Tensor, rows: np.ndarray, query: np.ndarray,
                  gallery: np.ndarray, labels: RowMeta) -> pd.DataFrame | None:
    """``msreid.evaluation.challenge_table`` of the queries' challenge tags (None: no tags)."""
    qp, gp = _positions(rows, query), _positions(rows, gallery)
    scenes = (labels.scene[query], labels.scene[gallery]) if labels.has_scenes else (None, None)
    return challenge_table(feats[qp], feats[gp], labels.pid[query], labels.pid[gallery],
                           labels.camera[query], labels.camera[gallery],
                           labels.challenge[query], *scenes)


def ranking_lists(feats: torch.Tensor, rows: np.ndarray, query: np.ndarray, gallery: np.ndarray,
                  labels: RowMeta, num_queries: int, top: int = 10) -> list[dict]:
    """Top-``top`` gallery rows of ``num_queries`` queries spread over the query set.

    Gallery items with the query's id and camera (scene, MSVR310) are left out,
    as in the evaluation protocol. Distances: squared Euclidean on L2-normalised features.
    """
    qp, gp = _positions(rows, query), _positions(rows, gallery)
    pick = np.unique(np.linspace(0, len(query) - 1, num=min(num_queries, len(query))).astype(int))
    g = torch.nn.functional.normalize(feats[gp], dim=1)
    out = []
    for i in pick:
        q = torch.nn.functional.normalize(feats[qp[i]][None], dim=1)
        d = ((g - q) ** 2).sum(1).numpy()
        key = labels.scene if labels.has_scenes else labels.camera
        junk = (labels.pid[gallery] == labels.pid[query[i]]) & (key[gallery] == key[query[i]])
        d[junk] = np.inf
        order = np.argsort(d, kind="stable")[:top]
        order = order[np.isfinite(d[order])]
        out.append({"query_row": int(query[i]), "query_pid": int(labels.pid[query[i]]),
                    "gallery_rows": [int(gallery[j]) for j in order],
                    "gallery_pids": [int(labels.pid[gallery[j]]) for j in order],
                    "match": [bool(labels.pid[gallery[j]] == labels.pid[query[i]]) for j in order],
                    "distance": [float(d[j]) for j in order]})
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_artifacts(directory: str | Path, test: RankResult,
                    subsets: Mapping[str, RankResult] | None,
                    challenges: pd.DataFrame | None, ranking: list[dict],
                    matrix: Mapping[tuple[str, str], RankResult] | None = None) -> list[str]:
    """Write the artifact files into ``directory``; returns the names written.

    missing_modality.csv, per_challenge.csv and cross_spectral.csv are
    ``msreid.evaluation``'s ``subset_table`` / ``challenge_table`` / ``matrix_table`` as CSV.
    """
    d = Path(directory)
    written = [names.CMC_FILE, names.RANKING_FILE]
    with open(d / names.CMC_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "cmc"])
        writer.writerows([k + 1, float(c)] for k, c in enumerate(test.cmc))
    (d / names.RANKING_FILE).write_text(json.dumps(ranking, indent=1) + "\n")
    if subsets:
        subset_table(subsets).to_csv(d / names.MISSING_MODALITY_FILE, index=False)
        written.append(names.MISSING_MODALITY_FILE)
    if challenges is not None and len(challenges):
        challenges.to_csv(d / names.PER_CHALLENGE_FILE, index=False)
        written.append(names.PER_CHALLENGE_FILE)
    if matrix:
        matrix_table(matrix).to_csv(d / names.CROSS_SPECTRAL_FILE, index=False)
        written.append(names.CROSS_SPECTRAL_FILE)
    return written
