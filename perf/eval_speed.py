"""Speed and memory of msreid.evaluation.evaluate_features (issue 4 benchmark, not a test).

Prints, from one run, for each feature setting:
  * RGBN300 test scale (Q=4,985, G=24,925, D=2,048): the bare torch Q x G matrix
    product, evaluate_features end to end (normalisation, distances, ranking,
    metrics), their ratio in wall and in CPU time, and the peak resident memory (``ru_maxrss``) of a fresh
    process that generated the features and then ran evaluate_features (features,
    interpreter and torch included; measured before the bare product runs);
  * RGBNT100 test scale (Q=1,715, G=8,575): the classic per-query numpy loop
    (argsort each row, mask same id + camera, cumsum) on the float32 distance
    matrix against evaluate_rank on the same matrix, and distance matrix + loop
    against evaluate_features; the speed-ups; the max abs difference of the
    metrics (CMC, mAP, mINP) to that loop and to the same loop on float64
    distances.

Features: a centre per identity (N(0, 1), D dims) plus per-sample Gaussian noise
whose scale varies per sample (log-normal), 8 cameras. Settings: "trained-like"
(noise 3.0, spread 0.8: mAP ~0.7, hardest positives deep in the gallery, as
for real models) and "untrained-like" (noise 30: chance-level ranking).

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python perf/eval_speed.py

CPU time (``time.process_time``, all threads) is printed beside wall time: on a
machine shared with other jobs the wall-time ratio is inflated by waiting for
descheduled threads at every parallel op, the CPU-time ratio much less.
"""

from __future__ import annotations

import argparse
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import torch

from msreid.evaluation import compute_distance_matrix, evaluate_features, evaluate_rank

SETTINGS = {"trained-like": (3.0, 0.8), "untrained-like": (30.0, 0.0)}


def make_split(nq: int, ng: int, dim: int, n_ids: int, n_cams: int, noise: float,
               spread: float = 0.5, *, seed: int = 0):
    """Identity-structured float32 features: query ``[nq, dim]``, gallery ``[ng, dim]`` and labels.

    Built in place, block by block, so generating them adds no large temporaries.
    """
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=gen)
    feats = []
    for n in (nq, ng):
        ids = torch.arange(n) % n_ids
        x = torch.randn(n, dim, generator=gen)
        x.mul_(noise * torch.exp(spread * torch.randn(n, 1, generator=gen)))  # hard samples
        for s in range(0, n, 4096):
            x[s : s + 4096].add_(centres[ids[s : s + 4096]])
        feats += [x, ids.numpy(), torch.randint(0, n_cams, (n,), generator=gen).numpy()]
    (q, q_ids, q_cams), (g, g_ids, g_cams) = feats[:3], feats[3:]
    return q, g, q_ids, g_ids, q_cams, g_cams


def classic_eval(distmat: np.ndarray, q_ids, g_ids, q_cams, g_cams, max_rank: int = 50):
    """The classic per-query loop (torchreid's eval_market1501, stable argsort)."""
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_ids[order] == q_ids[i]) & (g_cams[order] == q_cams[i]))
        hits = (g_ids[order][keep] == q_ids[i]).astype(np.int64)
        if not hits.any():
            continue
        cum = hits.cumsum()
        last = np.flatnonzero(hits).max()
        inps.append(cum[last] / (last + 1.0))
        aps.append((cum / np.arange(1, len(hits) + 1) * hits).sum() / hits.sum())
        cmcs.append(np.minimum(cum, 1)[:max_rank])
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps))


def max_diff(result, ref) -> float:
    cmc, m_ap, m_inp = ref
    return float(max(np.abs(result.cmc - cmc).max(), abs(result.mAP - m_ap), abs(result.mINP - m_inp)))


def timed(fn):
    """-> (wall seconds, process CPU seconds over all threads, result)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def large_scale(name: str, reps: int, threads: int) -> str:
    """RGBN300 scale in a fresh process (so ru_maxrss is this setting's own peak)."""
    torch.set_num_threads(threads)
    q, g, qi, gi, qc, gc = make_split(4985, 24925, 2048, 150, 8, *SETTINGS[name], seed=0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    runs = [timed(lambda: evaluate_features(q, g, qi, gi, qc, gc)) for _ in range(reps)]
    t_eval, c_eval, res = min(runs, key=lambda x: x[0])
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t_mm, c_mm, _ = min((timed(lambda: q @ g.t()) for _ in range(reps)), key=lambda x: x[0])
    return (f"RGBN300 scale, {name}: mAP {res.mAP:.4f} mINP {res.mINP:.4f} R1 {res.cmc[0]:.4f}\n"
            f"  wall: bare matmul {t_mm:.2f} s | evaluate_features {t_eval:.2f} s"
            f" | ratio {t_eval / t_mm:.2f}\n"
            f"  CPU:  bare matmul {c_mm:.2f} s | evaluate_features {c_eval:.2f} s"
            f" | ratio {c_eval / c_mm:.2f}\n"
            f"  peak RSS {rss1:.2f} GiB (features generated, before evaluating: {rss0:.2f} GiB)")


def small_scale(name: str) -> str:
    q, g, qi, gi, qc, gc = make_split(1715, 8575, 2048, 50, 8, *SETTINGS[name], seed=1)
    evaluate_features(q[:64], g, qi[:64], gi, qc[:64], gc)  # warm-up (first-call overheads)
    t_feat, _, res = timed(lambda: evaluate_features(q, g, qi, gi, qc, gc))
    t_dist, _, dist = timed(lambda: compute_distance_matrix(q, g).numpy())
    t_rank, _, res_rank = timed(lambda: evaluate_rank(dist, qi, gi, qc, gc))
    t_loop, _, ref = timed(lambda: classic_eval(dist, qi, gi, qc, gc))
    q64 = torch.nn.functional.normalize(q.double(), dim=1)
    g64 = torch.nn.functional.normalize(g.double(), dim=1)
    ref64 = classic_eval((2 - 2 * q64 @ g64.t()).numpy(), qi, gi, qc, gc)
    diff = max(max_diff(res, ref), max_diff(res_rank, ref))
    return (f"RGBNT100 scale, {name}: mAP {res.mAP:.4f} mINP {res.mINP:.4f}\n"
            f"  ranking a float32 distmat: classic numpy loop {t_loop:.2f} s | evaluate_rank "
            f"{t_rank:.2f} s | speed-up {t_loop / t_rank:.1f}x\n"
            f"  end to end: distmat + loop {t_dist + t_loop:.2f} s | evaluate_features {t_feat:.2f} s"
            f" | speed-up {(t_dist + t_loop) / t_feat:.1f}x\n"
            f"  max |metric diff|: vs loop on the same float32 distances {diff:.1e}; "
            f"vs loop on float64 distances {max_diff(res, ref64):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                        help="feature settings to run")
    parser.add_argument("--reps", type=int, default=2, help="repeats at RGBN300 scale (min is kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = open("/proc/loadavg").read().strip()
    print(f"torch {torch.__version__}, {args.threads} threads; load before: {load}")
    for name in args.settings:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            print(pool.submit(large_scale, name, args.reps, args.threads).result(), flush=True)
    for name in args.settings:
        print(small_scale(name), flush=True)
    print(f"load after: {open('/proc/loadavg').read().strip()}")


if __name__ == "__main__":
    main()
