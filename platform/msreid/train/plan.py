"""What a run trains, validates and tests on, decided on the driver before Ray trains.

Two steps, each raising one ``UserError`` naming the setting to change:

- the split (``split_for_run``): validation query/gallery carved out of the train ids
  (``msreid.train.sampling.split_rows``), checked to have a query with a match in another
  camera, and the test query/gallery;
- the plan (``plan_epochs``): every global batch of every epoch from (seed, epoch), the same
  whatever the number of workers; each worker trains its share (``Plan.share``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msreid.config import TrainConfig, effective_val_ids
from msreid.errors import UserError
from msreid.train.sampling import RowMeta, SplitRows, epoch_plan, split_rows, worker_share


@dataclass(frozen=True)
class Plan:
    """Every global batch of every epoch: manifest rows, labels, epoch and step of each."""

    rows: np.ndarray  # [R, B] (B = the global batch)
    labels: np.ndarray  # [R, B]
    epochs: np.ndarray  # [R]
    steps: np.ndarray  # [R]
    steps_per_epoch: list[int]

    def share(self, rank: int, world: int, first_epoch: int = 0) -> dict[str, np.ndarray]:
        """Worker ``rank``'s contiguous share of every batch from ``first_epoch`` on.

        "rows", "labels" ``[R', B/world]``, "epochs", "steps" ``[R']`` and
        "starts": the position of each share's first tuple in its epoch's plan.
        """
        keep = self.epochs >= first_epoch
        b = self.rows.shape[1] // world
        return {"rows": worker_share(self.rows[keep], rank, world),
                "labels": worker_share(self.labels[keep], rank, world),
                "epochs": self.epochs[keep], "steps": self.steps[keep],
                "starts": self.steps[keep] * self.rows.shape[1] + rank * b}


def split_for_run(cfg: TrainConfig, meta: RowMeta) -> tuple[SplitRows, bool]:
    """The manifest's rows by role, and whether validation runs (``check_validation``)."""
    d = cfg.data
    rows = split_rows(meta.split, meta.pid, meta.camera, val_ids=effective_val_ids(cfg),
                      per_camera=d.val_query_per_camera, seed=cfg.run.seed)
    validate = check_validation(cfg, meta, rows)
    if rows.test_query.size == 0 or rows.test_gallery.size == 0:
        raise UserError(f"manifest {d.manifest} has no query or gallery rows to test on")
    return rows, validate


def _has_valid_query(meta: RowMeta, query: np.ndarray, gallery: np.ndarray) -> bool:
    key = meta.scene if meta.has_scenes else meta.camera
    for q in query:
        same = meta.pid[gallery] == meta.pid[q]
        if (same & (key[gallery] != key[q])).any():
            return True
    return False


def check_validation(cfg: TrainConfig, meta: RowMeta, rows: SplitRows) -> bool:
    """True when validation runs; UserError when it cannot (no query has a match)."""
    if effective_val_ids(cfg) <= 0:  # selection=final, or validation switched off
        return False
    if not _has_valid_query(meta, rows.val_query, rows.val_gallery):
        raise UserError(f"data.val_ids={cfg.data.val_ids}: no validation query has a match in "
                        "another camera; hold out more ids or set data.val_ids=0")
    return True


def plan_epochs(cfg: TrainConfig, rows: SplitRows) -> Plan:
    """Global batches of all epochs from (seed, epoch); UserError when an epoch would be empty.

    Independent of the number of workers: each worker trains its share of every batch.
    """
    d = cfg.data
    if d.batch_mode == "pk" and d.P > rows.num_classes:
        raise UserError(f"data.P={d.P} but only {rows.num_classes} train ids remain after "
                        f"data.val_ids={effective_val_ids(cfg)}: lower data.P or data.val_ids")
    parts, epochs, steps = [], [], []
    for e in range(cfg.optim.epochs):
        pos = epoch_plan(rows.train_labels, mode=d.batch_mode, batch_size=d.batch_size, p=d.P,
                         k=d.K, seed=cfg.run.seed, epoch=e)
        if pos.shape[0] == 0:
            raise UserError(f"epoch {e} has no full batch: {rows.train.size} train tuples, "
                            f"global batch {pos.shape[1]} (data.batch_size, or P x K); lower "
                            "the batch size")
        parts.append(pos)
        epochs.append(np.full(len(pos), e))
        steps.append(np.arange(len(pos)))
    pos = np.concatenate(parts)
    return Plan(rows=rows.train[pos], labels=rows.train_labels[pos],
                epochs=np.concatenate(epochs), steps=np.concatenate(steps),
                steps_per_epoch=[len(p) for p in parts])
