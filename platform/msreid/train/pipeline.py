"""Ray Data input pipeline: Parquet manifest -> decoded, augmented batches per spectrum.

1. ``load_manifest``: one Ray task per part file (local path or any pyarrow
   URI) puts it in the object store as an Arrow block and returns its split /
   pid / camera / scene / challenge columns, so the driver can plan batches
   without ever holding the JPEG bytes.
2. Plans (``msreid.train.sampling``): every global batch of every epoch as
   manifest row indices, computed from (seed, epoch) only. Ray Data has no
   identity-balanced sampler; a dataset whose rows are whole (shares of)
   batches gives P x K (and uniform) batching with one code path.
3. ``train_dataset``: one row per share of a batch, ``map_batches`` tasks
   fetch its rows from the Arrow blocks, decode the JPEGs, cut the spectra,
   resize and augment (one draw per tuple, keyed by its position in the
   epoch's plan: ``sampling.sample_rngs``), and emit ``uint8 [b, 3, H, W]``
   per spectrum. Each worker gets its own such dataset (``train_<rank>``,
   unsplit) and reads it with ``iter_torch_batches(batch_size=1)``.
4. ``eval_dataset``: one row per tuple (no augmentation), for features.

Images stay uint8 through the object store (4x less than float32); the
training worker normalises them on its device (``transforms.normalize``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from msreid import SPECTRA
from msreid.data.decode import decode_row
from msreid.data.schema import manifest_files, resolve_filesystem
from msreid.data.transforms import (
    AugmentParams,
    at_size,
    augment_into,
    draw_each,
    kept_spectra,
)
from msreid.train.idle_steps import pause_idle_steps
from msreid.train.sampling import RowMeta, dropout_rngs, sample_rngs

META_COLUMNS = ["split", "pid", "camera", "scene", "challenge"]
DECODE_COLUMNS = ["blobs"] + [f"{s}_{k}" for s in SPECTRA for k in ("src", "box")]


@dataclass(frozen=True)
class ManifestIndex:
    """Where the manifest's rows live: Arrow blocks in Ray's object store.

    Global row r is row ``r - offsets[b]`` of block b, with
    ``offsets[b] <= r < offsets[b + 1]``. Small and picklable: it travels to
    every decode task and training worker by value (the refs, not the data).
    """

    refs: tuple[Any, ...]  # ObjectRef[pa.Table]
    offsets: np.ndarray  # [n_blocks + 1] int64


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode task needs besides the rows: spectra, size, augmentation, seed."""

    index: ManifestIndex
    spectra: tuple[str, ...]
    size: tuple[int, int]  # (H, W)
    augment: AugmentParams | None  # None = no augmentation (evaluation)
    seed: int = 0
    modality_dropout: float = 0.0  # data.modality_dropout (training plans only)
    decoder: str = "pil"  # "torchvision": the same pixels, faster (msreid.data.decode)


@ray.remote(num_returns=2)
def _read_part(filesystem, path: str) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """One part file as an Arrow block, and its label columns (the driver never gets the blobs)."""
    table = pq.read_table(path, filesystem=filesystem, columns=META_COLUMNS + DECODE_COLUMNS)
    return table, _block_meta(table)


def _block_meta(table: pa.Table) -> dict[str, np.ndarray]:
    """The label columns of one block as numpy."""
    scene = table.column("scene").fill_null(-1).to_numpy()
    return {
        "split": np.asarray(table.column("split").to_pylist(), dtype=object).astype(str),
        "pid": table.column("pid").to_numpy().astype(np.int64),
        "camera": table.column("camera").to_numpy().astype(np.int64),
        "scene": np.asarray(scene, dtype=np.int64),
        "challenge": np.asarray(table.column("challenge").to_pylist(), dtype=object),
    }


def load_manifest(manifest: str, *, num_cpus: float = 1.0) -> tuple[ManifestIndex, RowMeta]:
    """Read every part file of ``manifest`` into the object store, one task of ``num_cpus`` each.

    Returns the block index and the label columns of all rows (train, query,
    gallery), ordered as the blocks. Call ``msreid.data.schema.manifest_info``
    first: it validates the schema with a clear error. Plain tasks, not
    ``ray.data.read_parquet``: its file-sampling task always asks for a whole
    CPU, which never fits a trial's bundle of less than one (a silent hang).
    """
    fs, path = resolve_filesystem(manifest)
    files = manifest_files(path, filesystem=fs)
    # one block per file, in file order: global row r = row r of read_manifest()
    pairs = [_read_part.options(num_cpus=num_cpus).remote(fs, f) for f in files]
    refs = [table for table, _ in pairs]
    metas = ray.get([meta for _, meta in pairs])
    counts = [len(m["pid"]) for m in metas]
    meta = RowMeta(**{k: np.concatenate([m[k] for m in metas]) if metas else np.zeros(0)
                      for k in ("split", "pid", "camera", "scene", "challenge")})
    keep = [r for r, c in zip(refs, counts) if c > 0]
    keep_offsets = np.concatenate([[0], np.cumsum([c for c in counts if c > 0])]).astype(np.int64)
    return ManifestIndex(refs=tuple(keep), offsets=keep_offsets), meta


def _blob_views(table: pa.Table, local: np.ndarray) -> list[list[np.ndarray]]:
    """The ``blobs`` of rows ``local`` of one block as uint8 views of the block's own memory.

    No copy: ``table.take(...).to_pylist()`` copied every JPEG twice (the take, then one
    Python bytes object each), 0.26 ms per RGBNT100 tuple under cProfile, half a JPEG
    decode; the views: 0.017 ms (issue 22).
    """
    col = table.column("blobs")
    bounds = np.cumsum([0] + [len(c) for c in col.chunks])
    out: list[list[np.ndarray]] = [[] for _ in range(len(local))]
    chunk_of = np.searchsorted(bounds, local, side="right") - 1
    for c in np.unique(chunk_of):
        chunk = col.chunk(int(c))
        lists = chunk.offsets.to_numpy()  # row q: blobs lists[q]..lists[q + 1] of chunk.values
        values = chunk.values
        _, offsets, data = values.buffers()  # binary: blob m is data[ends[m]:ends[m + 1]]
        ends = np.frombuffer(offsets, dtype=np.int32)[values.offset:]
        data = np.frombuffer(data, dtype=np.uint8)
        for k in np.flatnonzero(chunk_of == c):
            q = int(local[k] - bounds[c])
            out[k] = [data[ends[m]:ends[m + 1]] for m in range(lists[q], lists[q + 1])]
    return out


def fetch_rows(index: ManifestIndex, rows: np.ndarray) -> list[dict]:
    """Manifest rows for global indices ``rows``, in order: dicts with ``blobs`` (uint8 views of
    the object store's copy, read-only) and the ``<s>_src`` / ``<s>_box`` of every spectrum."""
    rows = np.asarray(rows, dtype=np.int64)
    block = np.searchsorted(index.offsets, rows, side="right") - 1
    out: list[dict | None] = [None] * len(rows)
    small = [c for c in DECODE_COLUMNS if c != "blobs"]
    for b in np.unique(block):
        sel = np.flatnonzero(block == b)
        table = ray.get(index.refs[int(b)])  # zero-copy from the local object store
        local = rows[sel] - index.offsets[b]
        blobs = _blob_views(table, local)
        for i, row, blob in zip(sel, table.select(small).take(pa.array(local)).to_pylist(),
                                blobs):
            row["blobs"] = blob
            out[i] = row
    return out  # type: ignore[return-value]


def _decode_into(spec: DecodeSpec, rows: list[dict],
                 rngs: Sequence[np.random.Generator] | None, out: Sequence[np.ndarray]) -> None:
    """Fetched rows -> ``out[j][i]`` (uint8 ``[3, H, W]``): spectrum j of tuple i, augmented
    from ``rngs[i]`` when spec.augment is set."""
    decoded = [decode_row(r, spec.spectra, spec.decoder) for r in rows]
    pieces = at_size(decoded, spec.spectra, spec.size)
    draws = None
    if spec.augment is not None:
        if rngs is None or len(rngs) != len(rows):
            raise ValueError(f"{0 if rngs is None else len(rngs)} generators for "
                             f"{len(rows)} tuples")
        draws = draw_each(rngs, spec.size, spec.augment)
    augment_into(out, pieces, draws, spec.augment)


def decode_tuples(spec: DecodeSpec, rows: np.ndarray,
                  rngs: Sequence[np.random.Generator] | None = None) -> np.ndarray:
    """Rows -> uint8 ``[N, S, 3, H, W]``; tuple i augmented from ``rngs[i]`` when spec.augment is set."""
    x = np.empty((len(rows), len(spec.spectra), 3, *spec.size), dtype=np.uint8)
    _decode_into(spec, fetch_rows(spec.index, rows), rngs,
                 [x[:, j] for j in range(len(spec.spectra))])
    return x


def _decode_plan_rows(batch: dict[str, np.ndarray], spec: DecodeSpec,
                      refs: tuple[Any, ...]) -> dict[str, np.ndarray]:
    """map_batches UDF: plan row ids ``batch["id"] [n]`` -> n decoded (shares of) batches.

    Output: "epoch", "step" [n]; "rows", "labels" [n, b]; with modality dropout on, "keep"
    [n, b, S] bool (False = spectrum dropped); one uint8 [n, b, 3, H, W] column per spectrum.
    Tuple j of plan row i is augmented from (seed, epoch, starts[i] + j), its position in
    the epoch's plan (``sampling.sample_rngs``), and its spectra kept or dropped from the
    same key on a stream of its own (``sampling.dropout_rngs``): the same whichever task,
    worker or share decodes it. Every tuple is written once, into its place in the output
    columns (no per-batch arrays stacked afterwards); all of the task's rows are fetched
    at once.
    """
    plan, labels, epochs, steps, starts = ray.get(list(refs))  # nested refs: not auto-resolved
    ids = np.asarray(batch["id"], dtype=np.int64)
    n, b = len(ids), int(plan.shape[1])
    out = {name: np.empty((n, b, 3, *spec.size), dtype=np.uint8) for name in spec.spectra}
    fetched = fetch_rows(spec.index, plan[ids].reshape(-1))
    keep = []
    for k, i in enumerate(ids):
        positions = starts[i] + np.arange(b)
        _decode_into(spec, fetched[k * b:(k + 1) * b],
                     sample_rngs(spec.seed, int(epochs[i]), positions),
                     [out[name][k] for name in spec.spectra])
        if spec.modality_dropout > 0:  # off: no mask column (the loop reads none)
            keep.append(kept_spectra(dropout_rngs(spec.seed, int(epochs[i]), positions),
                                     len(spec.spectra), spec.modality_dropout))
    return {"epoch": epochs[ids].astype(np.int64), "step": steps[ids].astype(np.int64),
            "rows": plan[ids], "labels": labels[ids], **({"keep": np.stack(keep)} if keep else {}),
            **out}


def _decode_eval_rows(batch: dict[str, np.ndarray], spec: DecodeSpec) -> dict[str, np.ndarray]:
    """map_batches UDF: ``batch["rows"] [n]`` -> "rows" [n] and uint8 [n, 3, H, W] per spectrum."""
    rows = np.asarray(batch["rows"], dtype=np.int64)
    out = {name: np.empty((len(rows), 3, *spec.size), dtype=np.uint8) for name in spec.spectra}
    _decode_into(spec, fetch_rows(spec.index, rows), None, [out[s] for s in spec.spectra])
    return {"rows": rows, **out}


def _quiet_ordered(ds: ray.data.Dataset) -> None:
    """Rows out in input order (reproducible); no progress bars in the training logs; no
    busy scheduling loop while training is slower than decoding (``msreid.train.idle_steps``)."""
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = False
    pause_idle_steps(ds.context)


def _concurrency(num_decode_workers: int) -> int | None:
    return num_decode_workers if num_decode_workers > 0 else None


def train_dataset(spec: DecodeSpec, plan: np.ndarray, labels: np.ndarray,
                  epochs: np.ndarray, steps: np.ndarray, starts: np.ndarray, *,
                  batches_per_task: int = 8, num_decode_workers: int = 0,
                  num_cpus: float = 1.0) -> ray.data.Dataset:
    """A dataset with one row per (share of a) training batch (``plan[i]``: manifest rows ``[b]``).

    ``starts[i]``: the position of ``plan[i][0]`` in its epoch's plan (augmentation key).

    Rows come out in plan order (preserve_order), so the worker reading it
    sees the same sequence every time. Each decode task handles
    ``batches_per_task`` batches in one call of the UDF (``batch_size=None``: the
    whole block; with one call per batch Ray Data concatenated the task's outputs
    into its block afterwards, one more copy of every pixel, issue 22): one batch
    per task spends as much on task overhead as on decoding
    (perf/input_pipeline.py: 8 per task ~2x faster).
    ``num_cpus``: logical CPUs each decode task reserves (``data.decode_cpus``).
    """
    n = int(plan.shape[0])
    refs = [ray.put(np.ascontiguousarray(a)) for a in (plan, labels, epochs, steps, starts)]
    ds = ray.data.from_items([{"id": i} for i in range(n)],
                             override_num_blocks=max(1, -(-n // batches_per_task)))
    _quiet_ordered(ds)
    return ds.map_batches(
        _decode_plan_rows, batch_size=None, batch_format="numpy",
        fn_kwargs={"spec": spec, "refs": tuple(refs)},
        concurrency=_concurrency(num_decode_workers), num_cpus=num_cpus)


def eval_dataset(spec: DecodeSpec, rows: np.ndarray, *, batch_size: int = 64,
                 num_decode_workers: int = 0, num_cpus: float = 1.0) -> ray.data.Dataset:
    """A dataset with one row per tuple of ``rows`` (no augmentation), in order."""
    rows = np.asarray(rows, dtype=np.int64)
    blocks = max(1, min(int(np.ceil(len(rows) / batch_size)), 2_000))
    ds = ray.data.from_items([{"rows": int(r)} for r in rows], override_num_blocks=blocks)
    _quiet_ordered(ds)
    return ds.map_batches(_decode_eval_rows, batch_size=batch_size, batch_format="numpy",
                          fn_kwargs={"spec": spec},
                          concurrency=_concurrency(num_decode_workers), num_cpus=num_cpus)
