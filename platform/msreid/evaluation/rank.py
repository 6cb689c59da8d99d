"""CMC, mAP and mINP under the Market-1501 protocol, exact and chunked.

Protocol (as torchreid / fast-reid / TransReID): for each query, gallery items
with the same id AND the same camera (or, when scenes are given, the same id
AND the same scene: MSVR310) are removed; every other gallery item is ranked by
distance, ties broken by gallery index. With ``P`` positives (same id, not
removed) at 1-based ranks ``r_1 < ... < r_P``:

- AP  = (1/P) * sum_m m / r_m          (over the whole ranking)
- INP = P / r_P                         (Ye et al. 2021, hardest positive)
- CMC[k] = 1 if r_1 <= k + 1           (k = 0 .. max_rank-1)

CMC, mAP and mINP are means over the queries with P >= 1; the others are
skipped and counted.

Speed design (see docs/EVALUATION.md): nothing of size Q x G is sorted. Per
block of query rows, the distances ``[q, G]`` (one matmul per chunk) are cut into
per-row bins spanning the row's positives (bins are monotone in the distance);
one ``bincount`` counts the items per (row, bin) slot. Items of slots holding no
positive are counted whole; the few items sharing a slot with a positive are
ranked exactly with one unique int64 key ``(row, distance, gallery index)`` (the
tie rule is in the key) and one sort.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Union

import numpy as np
import torch

from msreid.errors import UserError
from msreid.evaluation.distance import iter_distance_chunks, prepare_features
from msreid.evaluation.names import CMC_METRICS, CMC_RANKS, MAP, MINP

Labels = Union[np.ndarray, torch.Tensor, Sequence[int]]
"""Integer labels (ids, cameras, scenes), one per row: numpy, torch or a list."""

Array = Union[np.ndarray, torch.Tensor]
"""A float matrix: distances ``[Q, G]`` or features ``[N, D]``, numpy or torch."""

_BLOCK_ELEMS = 1 << 22
"""Distances ranked at once (rows x G): ~9 bytes of work buffers each (38 MB). Measured at
RGBN300 scale: 4M ranks ~5% less CPU than 8M or 2M (its float and int32 passes stay
closer to the L3 cache; smaller blocks pay more per-block op overhead)."""

_CHUNK_ELEMS = 1 << 25
"""Distances per query chunk (one matmul each): 128 MB float32. Each matmul call
repacks the whole gallery, so fewer, larger chunks cost less: at RGBN300 scale
the 4 chunks of 1,247 rows cost ~2% CPU over one Q x G product, 8 of 673 rows ~5%."""

_ITEMS_PER_BIN = 8

_MAX_BINS = 4096
"""Distance bins per query row (at most; G // 8 by default): more bins, fewer items ranked exactly."""


@dataclass(frozen=True)
class RankResult:
    """Metrics of one evaluation; ``cmc`` is ``[max_rank]`` float64 in [0, 1]."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid: int
    num_skipped: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """``{prefix + name: value}`` over ``names.METRIC_NAMES`` (mAP, mINP, R1, R5, R10), as
        python floats, for logging."""
        out = {prefix + MAP: float(self.mAP), prefix + MINP: float(self.mINP)}
        for k, name in zip(CMC_RANKS, CMC_METRICS):
            out[prefix + name] = float(self.cmc[k - 1]) if k <= len(self.cmc) else float("nan")
        return out


class QueryStats(NamedTuple):
    """Per-query results, numpy ``[Q]``: ``first_rank`` (0 when skipped), ``ap``, ``inp``."""

    first_rank: np.ndarray
    ap: np.ndarray
    inp: np.ndarray


def summarize(stats: QueryStats, max_rank: int = 50, mask: np.ndarray | None = None) -> RankResult:
    """Average per-query stats (optionally over the queries in boolean ``mask [Q]``).

    Metrics are NaN when no query has a valid match.
    """
    first, ap, inp = stats
    if mask is not None:
        first, ap, inp = first[mask], ap[mask], inp[mask]
    valid = first > 0
    n = int(valid.sum())
    if n == 0:
        return RankResult(np.zeros(max_rank), float("nan"), float("nan"), 0, int(len(first)))
    hist = np.bincount(np.minimum(first[valid], max_rank + 1), minlength=max_rank + 2)
    cmc = np.cumsum(hist[1 : max_rank + 1]) / n
    return RankResult(cmc.astype(np.float64), float(ap[valid].mean()), float(inp[valid].mean()),
                      n, int(len(first) - n))


def _check_sizes(nq: int, ng: int) -> None:
    if nq == 0 or ng == 0:
        raise UserError(f"evaluation needs a non-empty query and gallery, got {nq} queries and "
                        f"{ng} gallery items")


def _labels(x: Labels, name: str, n: int, device: torch.device) -> torch.Tensor:
    """Array-like of ``n`` integer labels -> int64 tensor on ``device``."""
    a = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)
    if a.shape != (n,):
        raise UserError(f"{name}: expected {n} labels (one per row), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if a.dtype == object or not np.all(np.isfinite(a.astype(np.float64, copy=False))) \
                or np.any(a != np.round(a)):
            raise UserError(f"{name}: labels must be integers without nulls, got dtype {a.dtype}")
    return torch.as_tensor(a.astype(np.int64), device=device)


def _exclusion_keys(q_cams, g_cams, q_scenes, g_scenes, nq: int, ng: int, device):
    """The label deciding removal of same-id items: scenes (MSVR310) if given, else cameras."""
    if (q_scenes is None) != (g_scenes is None):
        raise UserError("q_scenes and g_scenes: give both (MSVR310 scene rule) or neither")
    if q_scenes is not None:
        return _labels(q_scenes, "q_scenes", nq, device), _labels(g_scenes, "g_scenes", ng, device)
    return _labels(q_cams, "q_cams", nq, device), _labels(g_cams, "g_cams", ng, device)


class _Gallery:
    """Gallery items grouped by id, to list a query's same-id items without a Q x G mask."""

    def __init__(self, g_ids: torch.Tensor, g_keys: torch.Tensor):
        self.order = torch.argsort(g_ids, stable=True)  # [G], same-id items contiguous
        self.uniq, counts = torch.unique_consecutive(g_ids[self.order], return_counts=True)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts
        self.keys = g_keys

    def same_id(self, q_ids: torch.Tensor, q_keys: torch.Tensor):
        """Rows ``[S]``, gallery columns ``[S]`` and ``is_positive [S]`` of all same-id pairs.

        Pairs come grouped by row (row-major); positives differ in camera/scene.
        """
        slot = torch.searchsorted(self.uniq, q_ids).clamp(max=max(len(self.uniq) - 1, 0))
        found = (self.uniq[slot] == q_ids) if len(self.uniq) else torch.zeros_like(q_ids, dtype=torch.bool)
        cnt = torch.where(found, self.counts[slot], torch.zeros_like(slot))
        rows = torch.repeat_interleave(torch.arange(len(q_ids), device=q_ids.device), cnt)
        offset = torch.arange(len(rows), device=q_ids.device) - (torch.cumsum(cnt, 0) - cnt)[rows]
        cols = self.order[self.starts[slot[rows]] + offset]
        return rows, cols, self.keys[cols] != q_keys[rows]


def _order_codes(v: torch.Tensor) -> torch.Tensor:
    """``[N]`` float -> ``[N]`` int64 codes in [0, 2**32) with the same order (equal stays equal)."""
    if v.dtype == torch.float32:
        # The IEEE-754 bit pattern, with the magnitude bits of negatives flipped, is
        # an integer in the same order as the floats (+0.0 turns -0.0 into +0.0).
        b = (v + 0.0).view(torch.int32)
        return (b ^ ((b >> 31) & 0x7FFFFFFF)).to(torch.int64) + (1 << 31)
    return torch.unique(v, sorted=True, return_inverse=True)[1]


class _Scratch:
    """Work buffers of the ranking, kept across blocks and chunks.

    One per evaluation: every block needs a float, an int32 and a bool array of
    its size (~80 MB at the default block); allocating them anew each block costs
    fresh pages every time.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        b = self._bufs.get(name)
        if b is None or b.numel() < n or b.dtype != dtype or b.device != device:
            b = self._bufs[name] = torch.empty(n, dtype=dtype, device=device)
        return b[:n]


def _slot_index(d: torch.Tensor, p_rows: torch.Tensor, p_cols: torch.Tensor, nbins: int, nb: int,
                scratch: _Scratch) -> torch.Tensor:
    """Flat slots ``[q * G]`` int32: ``row * nb + bin``, the bin in [0, nbins + 1] non-decreasing
    in the distance.

    The row's positives span bins 1..nbins; closer items fall in bin 0, farther ones
    in bins up to nbins + 1. Only monotonicity matters for exactness: an item in a
    lower bin than a positive is strictly closer. Needs ``q * nb <= 2**24`` (for
    float32: the row offsets and every slot are exact integers).
    """
    q, ncol = d.shape
    p_d = d[p_rows, p_cols]
    lo = torch.full((q,), float("inf"), dtype=d.dtype, device=d.device)
    hi = torch.full((q,), float("-inf"), dtype=d.dtype, device=d.device)
    lo.scatter_reduce_(0, p_rows, p_d, reduce="amin")
    hi.scatter_reduce_(0, p_rows, p_d, reduce="amax")
    has = torch.isfinite(lo)
    lo, hi = torch.where(has, lo, 0.0), torch.where(has, hi, 0.0)
    # A row with one positive (hi == lo) still needs a finite, positive scale.
    width = torch.maximum(hi - lo, torch.clamp(torch.maximum(hi.abs(), lo.abs()) * 1e-3, min=1e-12))
    scale = (nbins - 1) / width
    # 1 + (d - lo) * scale as two separately rounded IEEE ops (no fused multiply-add),
    # so the bin is the same function of the distance in every SIMD lane: monotone.
    x = torch.mul(d, scale[:, None], out=scratch.get("x", q * ncol, d.dtype, d.device).view(q, ncol))
    x += (1.0 - lo * scale)[:, None]
    x.clamp_(0, nbins + 1)
    # + row * nb: rounding is monotone and row * nb, row * nb + nbins + 1 are exact,
    # so each row stays in its own nb slots, still non-decreasing in the distance.
    x += (torch.arange(q, device=d.device) * nb).to(d.dtype)[:, None]
    return scratch.get("idx", q * ncol, torch.int32, d.device).copy_(x.view(-1))


def _block_ranks(d: torch.Tensor, x_rows: torch.Tensor, x_cols: torch.Tensor,
                 p_rows: torch.Tensor, p_cols: torch.Tensor, nbins: int,
                 scratch: _Scratch) -> torch.Tensor:
    """1-based ranks ``[P]`` of the positives ``(p_rows, p_cols)`` in their rows of ``d [q, G]``.

    Removed items are ``(x_rows, x_cols)``. Items are counted per (row, bin) slot with
    one ``bincount``. Items in a slot without positives are counted whole; items in a
    slot holding a positive ("shared") are ranked exactly, by one unique int64 key
    ``(row, distance, gallery index)`` (tie rule included) and a sort.
    """
    q, ncol = d.shape
    nb = nbins + 3  # bins 0 .. nbins + 1 for items, nbins + 2 for removed items
    idx = _slot_index(d, p_rows, p_cols, nbins, nb, scratch)
    idx.view(q, ncol)[x_rows, x_cols] = (x_rows * nb + (nb - 1)).to(torch.int32)
    p_flat = p_rows * ncol + p_cols
    p_slot = idx.index_select(0, p_flat).to(torch.int64)
    shared = torch.zeros(q * nb, dtype=torch.bool, device=d.device)
    shared[p_slot] = True
    if _THREADS and d.device.type == "cpu":
        hist_f = _pool().submit(torch.bincount, idx, minlength=q * nb)
    else:
        hist_f = None
        hist = torch.bincount(idx, minlength=q * nb)
    sel = torch.index_select(shared, 0, idx, out=scratch.get("sel", q * ncol, torch.bool, d.device))
    flat = sel.nonzero().squeeze(1)  # shared items, row-major
    rows = torch.div(flat, ncol, rounding_mode="floor")
    cols = flat - rows * ncol
    if hist_f is not None:
        hist = hist_f.result()
    # Items of slots without positives before each slot; p's own slot is shared, so
    # the inclusive count at p_slot is the count of such items in lower slots.
    other = torch.where(shared, 0, hist).cumsum(0)
    closer = other[p_slot] - (other[p_rows * nb] - hist[p_rows * nb] * ~shared[p_rows * nb])
    cbits = max(1, (ncol - 1).bit_length())
    keys = (rows << (32 + cbits)) | (_order_codes(d.view(-1).index_select(0, flat)) << cbits) | cols
    p_keys = keys.index_select(0, torch.searchsorted(flat, p_flat))
    row_first = torch.searchsorted(flat, torch.arange(q, device=d.device) * ncol)
    # shared items of the row with a smaller key (p itself excluded: keys are unique)
    within = torch.searchsorted(_sort_rows(keys, row_first, q), p_keys) - row_first[p_rows]
    return closer + within + 1


_THREADS = 1
_POOL = None


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(1, thread_name_prefix="msreid-rank")
    return _POOL


def _sort_rows(keys: torch.Tensor, row_first: torch.Tensor, q: int) -> torch.Tensor:
    """Sorted ``keys``, which come grouped by row (the row in their top bits): the two
    halves of the rows are sorted apart, on the CPU at once in two threads (a 1-D
    ``torch.sort`` runs on one thread)."""
    if not (_THREADS and keys.device.type == "cpu") or q < 2:
        return torch.sort(keys).values
    m = int(row_first[q // 2])
    first = _pool().submit(lambda: torch.sort(keys[:m]).values)
    second = torch.sort(keys[m:]).values
    return torch.cat([first.result(), second])


def _stats_from_ranks(ranks: torch.Tensor, rows: torch.Tensor, nrows: int):
    """Positive ranks ``[P]`` of rows ``[P]`` -> first rank ``[q]`` (0: none), AP ``[q]``, INP ``[q]``."""
    order = torch.argsort(rows * (int(ranks.max()) + 1 if len(ranks) else 1) + ranks)
    rows, ranks = rows[order], ranks[order]
    npos = torch.bincount(rows, minlength=nrows)
    m = torch.arange(1, len(rows) + 1, device=rows.device) - (torch.cumsum(npos, 0) - npos)[rows]
    rk = ranks.to(torch.float64)
    ap = torch.zeros(nrows, dtype=torch.float64, device=rows.device).index_add_(0, rows, m / rk)
    ap = ap / npos.clamp(min=1)
    first = torch.zeros(nrows, dtype=torch.int64, device=rows.device)
    first[rows[m == 1]] = ranks[m == 1]
    inp = torch.zeros(nrows, dtype=torch.float64, device=rows.device)
    last = m == npos[rows]
    inp[rows[last]] = npos[rows[last]] / rk[last]
    return first, ap, inp


def _chunk_stats(d: torch.Tensor, q_ids: torch.Tensor, q_keys: torch.Tensor, gal: _Gallery,
                 scratch: _Scratch):
    """Per-query (first rank, AP, INP) of a distance chunk ``d [q, G]``."""
    q = d.shape[0]
    rows, cols, pos = gal.same_id(q_ids, q_keys)
    p_rows, p_cols = rows[pos], cols[pos]
    out = [torch.zeros(q, dtype=t, device=d.device) for t in (torch.int64, torch.float64, torch.float64)]
    cbits = max(1, (d.shape[1] - 1).bit_length())
    nbins = int(min(_MAX_BINS, max(1, d.shape[1] // _ITEMS_PER_BIN)))
    step = max(1, min(_BLOCK_ELEMS // d.shape[1], 1 << (31 - cbits), (1 << 24) // (nbins + 3)))
    bounds = torch.searchsorted(p_rows, torch.arange(0, q + step, step, device=d.device)).tolist()
    x_rows, x_cols = rows[~pos], cols[~pos]
    for j, a in enumerate(range(0, q, step)):
        b, (lo, hi) = min(a + step, q), bounds[j : j + 2]
        if lo == hi:
            continue
        x = (x_rows >= a) & (x_rows < b)
        r = p_rows[lo:hi] - a
        ranks = _block_ranks(d[a:b], x_rows[x] - a, x_cols[x], r, p_cols[lo:hi], nbins, scratch)
        for o, st in zip(out, _stats_from_ranks(ranks, r, b - a)):
            o[a:b] = st
    return out


def _collect(chunks, q_ids, q_keys, gal: _Gallery) -> QueryStats:
    """Run ``_chunk_stats`` over ``(start, d)`` chunks -> numpy QueryStats ``[Q]``."""
    nq = len(q_ids)
    first, ap, inp = np.zeros(nq, np.int64), np.zeros(nq), np.zeros(nq)
    scratch = _Scratch()
    for start, d in chunks:
        sl = slice(start, start + d.shape[0])
        f, a, i = _chunk_stats(d, q_ids[sl], q_keys[sl], gal, scratch)
        first[sl], ap[sl], inp[sl] = f.cpu().numpy(), a.cpu().numpy(), i.cpu().numpy()
    return QueryStats(first, ap, inp)


def _default_chunk(nq: int, ng: int) -> int:
    """Query rows per chunk: about ``_CHUNK_ELEMS`` distances, at least 64 rows, and the
    queries split into equal chunks (no small last chunk)."""
    n_chunks = max(1, -(-nq * ng // _CHUNK_ELEMS))
    return max(64, -(-nq // n_chunks))


def _require_valid(result: RankResult) -> RankResult:
    if result.num_valid == 0:
        raise UserError(
            f"none of the {result.num_skipped} queries has a valid match in the gallery "
            "(same id, other camera/scene); check the query/gallery ids and cameras")
    return result


def rank_stats(distmat: Array, q_ids: Labels, g_ids: Labels, q_cams: Labels, g_cams: Labels,
               q_scenes: Labels | None = None, g_scenes: Labels | None = None,
               *, chunk_size: int | None = None) -> QueryStats:
    """Per-query stats from a distance matrix ``[Q, G]`` (numpy or torch, float32 or float64)."""
    d = torch.as_tensor(distmat)
    if d.ndim != 2:
        raise UserError(f"distmat: expected shape [Q, G], got {tuple(d.shape)}")
    if d.dtype not in (torch.float32, torch.float64):
        d = d.to(torch.float32)
    if not bool(torch.isfinite(d.sum())) and not bool(torch.isfinite(d).all()):
        raise UserError("distmat contains NaN or inf; use large finite values to push items away")
    nq, ng = d.shape
    _check_sizes(nq, ng)
    qi, gi = _labels(q_ids, "q_ids", nq, d.device), _labels(g_ids, "g_ids", ng, d.device)
    qk, gk = _exclusion_keys(q_cams, g_cams, q_scenes, g_scenes, nq, ng, d.device)
    cs = chunk_size or _default_chunk(nq, ng)
    chunks = ((s, d[s : s + cs].contiguous()) for s in range(0, nq, cs))
    return _collect(chunks, qi, qk, _Gallery(gi, gk))


def evaluate_rank(distmat: Array, q_ids: Labels, g_ids: Labels, q_cams: Labels, g_cams: Labels,
                  max_rank: int = 50, q_scenes: Labels | None = None, g_scenes: Labels | None = None,
                  *, chunk_size: int | None = None) -> RankResult:
    """CMC / mAP / mINP from a distance matrix ``distmat [Q, G]`` (smaller = closer).

    Ids and cameras (and optional scenes, MSVR310 rule) are integer arrays ``[Q]`` / ``[G]``.
    Raises ``UserError`` when no query has a valid match.
    """
    stats = rank_stats(distmat, q_ids, g_ids, q_cams, g_cams, q_scenes, g_scenes, chunk_size=chunk_size)
    return _require_valid(summarize(stats, max_rank))


def feature_stats(query: Array, gallery: Array, q_ids: Labels, g_ids: Labels, q_cams: Labels,
                  g_cams: Labels, q_scenes: Labels | None = None, g_scenes: Labels | None = None,
                  *, metric: str = "euclidean", normalize: bool = True, chunk_size: int | None = None,
                  rerank: bool = False, k1: int = 20, k2: int = 6,
                  lambda_value: float = 0.3) -> QueryStats:
    """Per-query stats from features ``query [Q, D]``, ``gallery [G, D]``, chunk by chunk
    (options as ``evaluate_features``)."""
    q = prepare_features(query, "query", metric, normalize)
    g = prepare_features(gallery, "gallery", metric, normalize).to(q.device)
    if q.shape[1] != g.shape[1]:
        raise UserError(f"query has {q.shape[1]} feature dims but gallery has {g.shape[1]}")
    if rerank:
        from msreid.evaluation.rerank import re_ranking

        dist = re_ranking(q, g, k1=k1, k2=k2, lambda_value=lambda_value, metric=metric)
        return rank_stats(dist, q_ids, g_ids, q_cams, g_cams, q_scenes, g_scenes, chunk_size=chunk_size)
    nq, ng = len(q), len(g)
    _check_sizes(nq, ng)
    qi, gi = _labels(q_ids, "q_ids", nq, q.device), _labels(g_ids, "g_ids", ng, q.device)
    qk, gk = _exclusion_keys(q_cams, g_cams, q_scenes, g_scenes, nq, ng, q.device)
    chunks = iter_distance_chunks(q, g, metric, chunk_size or _default_chunk(nq, ng))
    return _collect(chunks, qi, qk, _Gallery(gi, gk))


def evaluate_features(query: Array, gallery: Array, q_ids: Labels, g_ids: Labels, q_cams: Labels,
                      g_cams: Labels, q_scenes: Labels | None = None,
                      g_scenes: Labels | None = None, *, metric: str = "euclidean",
                      normalize: bool = True, max_rank: int = 50,
                      chunk_size: int | None = None, rerank: bool = False, k1: int = 20,
                      k2: int = 6, lambda_value: float = 0.3) -> RankResult:
    """CMC / mAP / mINP from features ``query [Q, D]`` and ``gallery [G, D]`` (numpy or torch).

    Runs on the features' device in query chunks of ``chunk_size`` rows (default
    ~32M distances per chunk); never builds a Q x G float64 matrix or argsort.
    ``metric``: ``euclidean`` (squared) or ``cosine``; ``normalize``: L2-normalise first.
    ``rerank`` applies k-reciprocal re-ranking (``re_ranking``, parameters ``k1``,
    ``k2``, ``lambda_value``; builds a float32 ``[Q, G]`` matrix).
    Raises ``UserError`` when no query has a valid match.
    """
    stats = feature_stats(query, gallery, q_ids, g_ids, q_cams, g_cams, q_scenes, g_scenes,
                          metric=metric, normalize=normalize, chunk_size=chunk_size,
                          rerank=rerank, k1=k1, k2=k2, lambda_value=lambda_value)
    return _require_valid(summarize(stats, max_rank))


def rgbnt201_protocol(features: Array, ids: Labels, cams: Labels, **evaluate_kwargs) -> RankResult:
    """RGBNT201: the test set is both query and gallery; the same-id-same-camera rule
    removes each query's own entry (and its same-camera shots) before ranking.

    ``features [N, D]``, ``ids [N]``, ``cams [N]``; keyword arguments go to ``evaluate_features``.
    """
    return evaluate_features(features, features, ids, ids, cams, cams, **evaluate_kwargs)
