"""Which tuples go into which batch: validation carve-out and per-epoch batch plans (numpy).

A *plan* is an int array ``[num_batches, global_batch]`` of positions, one
row per optimiser step over ALL workers (``data.batch_size``, or P x K in
identity-balanced mode, is the global batch). Every plan is a function of
``(seed, epoch)`` only: the same batches whatever the number of workers, and
a run resumed at epoch e sees the same batches as an uninterrupted one.
Worker r of W takes the contiguous share ``[r*B/W, (r+1)*B/W)`` of each batch
(``worker_share``; the sizes: ``msreid.data.batches``), and each tuple's
augmentation is drawn from its position in the plan (``sample_rngs``), so
cutting a batch into shares changes nothing.
Ray Data has no identity-balanced sampler: the training dataset has one row
per share, decoded downstream (``msreid.train.pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msreid.errors import UserError


@dataclass(frozen=True)
class RowMeta:
    """Per-row labels of the whole manifest (global row index), ``[n_rows]`` each."""

    split: np.ndarray  # str
    pid: np.ndarray  # int64
    camera: np.ndarray  # int64
    scene: np.ndarray  # int64, -1 where null
    challenge: np.ndarray  # object: str or None

    @property
    def has_scenes(self) -> bool:
        """Scenes replace cameras in the matching rule (MSVR310): same id + same scene = junk."""
        return bool((self.scene >= 0).any())

    @property
    def has_challenges(self) -> bool:
        return any(c is not None for c in self.challenge)


@dataclass(frozen=True)
class SplitRows:
    """Manifest row indices of each role, and the contiguous training labels."""

    train: np.ndarray  # [n_train] rows trained on
    train_labels: np.ndarray  # [n_train] 0..num_classes-1 over the remaining train ids
    num_classes: int
    val_query: np.ndarray  # rows; empty when validation is off
    val_gallery: np.ndarray
    test_query: np.ndarray
    test_gallery: np.ndarray


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """The generator of one epoch's batch order (stream 0; augmentation uses ``sample_rngs``)."""
    return np.random.default_rng([seed, epoch, stream])


def sample_rngs(seed: int, epoch: int, positions: np.ndarray) -> list[np.random.Generator]:
    """One augmentation generator per tuple, keyed by its position in the epoch's plan.

    Position ``step * global_batch + j`` of the epoch's plan ``[nb, global_batch]``:
    a tuple's augmentation depends on (seed, epoch, position) only, never on
    the worker, the decode task or how the batch was cut into shares.
    """
    return [np.random.default_rng([seed, epoch, 1, int(p)]) for p in np.asarray(positions)]


def dropout_rngs(seed: int, epoch: int, positions: np.ndarray) -> list[np.random.Generator]:
    """One modality-dropout generator per tuple, keyed like ``sample_rngs`` but on a stream of
    its own: turning dropout on leaves every augmentation draw unchanged."""
    return [np.random.default_rng([seed, epoch, 2, int(p)]) for p in np.asarray(positions)]


def uniform_plan(num_rows: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """A shuffled permutation cut into ``[num_rows // batch_size, batch_size]`` positions.

    The last incomplete batch is dropped (as DataLoader(drop_last=True)).
    """
    nb = num_rows // batch_size
    return rng.permutation(num_rows)[: nb * batch_size].reshape(nb, batch_size)


def pk_plan(labels: np.ndarray, p: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Identity-balanced batches of P ids x K positions each: ``[num_batches, P * K]``.

    As the strong baseline's RandomIdentitySampler: each id's positions are
    shuffled (drawn with replacement up to K when it has fewer) and cut into
    chunks of K; while >= P ids have chunks left, P of them are drawn without
    replacement and each gives its next chunk. Batch b holds ids in blocks of K.
    """
    chunks: dict[int, list[np.ndarray]] = {}
    for pid in np.unique(labels):
        idx = np.flatnonzero(labels == pid)
        if idx.size < k:
            idx = rng.choice(idx, size=k, replace=True)
        idx = rng.permutation(idx)
        n = idx.size // k
        chunks[int(pid)] = [idx[i * k:(i + 1) * k] for i in range(n)]
    batches = []
    while True:
        available = [pid for pid, c in chunks.items() if c]
        if len(available) < p:
            break
        chosen = rng.choice(np.asarray(available), size=p, replace=False)
        batches.append(np.concatenate([chunks[int(pid)].pop(0) for pid in chosen]))
    if not batches:
        return np.zeros((0, p * k), dtype=np.int64)
    return np.stack(batches).astype(np.int64)


def epoch_plan(labels: np.ndarray, *, mode: str, batch_size: int, p: int, k: int,
               seed: int, epoch: int) -> np.ndarray:
    """The global batches of one epoch as positions into ``labels``: ``[nb, global_batch]``.

    A function of (labels, mode, batch sizes, seed, epoch) only: the same
    batches whatever the number of workers (``worker_share`` cuts them).
    """
    rng = epoch_rng(seed, epoch)
    return (pk_plan(labels, p, k, rng) if mode == "pk"
            else uniform_plan(labels.size, batch_size, rng))


def worker_share(plan: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Worker ``rank``'s contiguous share of every batch: ``plan[:, rank*b:(rank+1)*b]``, b = B/world.

    Returns ``[nb, b]``; the shares of ranks 0..world-1 side by side are ``plan``.
    """
    b = plan.shape[1] // world
    if b * world != plan.shape[1]:
        raise ValueError(f"batch of {plan.shape[1]} does not divide by world={world}")
    return plan[:, rank * b:(rank + 1) * b]


def share_positions(step: int, rank: int, share: int, world: int) -> np.ndarray:
    """Positions in the epoch's plan of worker ``rank``'s share of batch ``step``: ``[share]``."""
    return step * share * world + rank * share + np.arange(share)


def _num_val_ids(val_ids: float, n_ids: int) -> int:
    if val_ids <= 0:
        return 0
    n = int(round(val_ids * n_ids)) if val_ids < 1 else int(val_ids)
    n = max(n, 1)
    if n >= n_ids:
        raise UserError(f"data.val_ids={val_ids} leaves no training ids (the manifest has "
                        f"{n_ids} train ids): lower it")
    return n


def split_rows(split: np.ndarray, pid: np.ndarray, camera: np.ndarray, *, val_ids: float,
               per_camera: int, seed: int) -> SplitRows:
    """Carve a validation query/gallery out of the TRAIN ids, deterministically from ``seed``.

    split, pid, camera: [n_rows] per manifest row. ``val_ids`` (fraction < 1 or
    count) train ids are held out; for each (id, camera) ``per_camera`` of
    their tuples become validation queries, the rest the validation gallery.
    The remaining train ids are relabelled 0..N-1 in increasing pid order.
    """
    split = np.asarray(split).astype(str)
    rows = np.flatnonzero(split == "train")
    ids = np.unique(pid[rows])
    rng = np.random.default_rng([seed, 7919])  # its own stream: independent of batch order
    held = np.sort(rng.choice(ids, size=_num_val_ids(val_ids, ids.size), replace=False))
    is_val = np.isin(pid[rows], held)
    train, val = rows[~is_val], rows[is_val]
    kept = np.unique(pid[train])
    labels = np.searchsorted(kept, pid[train]).astype(np.int64)
    query = []
    for key in sorted({(int(pid[r]), int(camera[r])) for r in val}):
        group = val[(pid[val] == key[0]) & (camera[val] == key[1])]
        query.extend(rng.permutation(group)[:per_camera].tolist())
    query_arr = np.sort(np.asarray(query, dtype=np.int64))
    return SplitRows(
        train=train, train_labels=labels, num_classes=int(kept.size),
        val_query=query_arr, val_gallery=np.setdiff1d(val, query_arr),
        test_query=np.flatnonzero(split == "query"),
        test_gallery=np.flatnonzero(split == "gallery"))
