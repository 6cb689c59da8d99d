"""Speed and memory of msreid.evaluation.evaluate_features (issue 4 benchmark, not a test).

Prints, from one run:
  * RGBN300 test scale (Q=4,985, G=24,925, D=2,048): the bare torch Q x G matrix
    product, evaluate_features end to end, their ratio, and the process peak RSS
    (``ru_maxrss``: resident memory high-water mark of this process, features,
    interpreter and torch included) reached during evaluate_features;
  * RGBNT100 test scale (Q=1,715, G=8,575): the classic per-query numpy loop
    (argsort each row, mask same id + camera, cumsum) on the same float32
    distance matrix, the speed-up, and the max abs difference of the metrics;
    plus the difference to a float64 reference.

Features: one centre per identity (N(0, 1), D dims) plus N(0, noise^2) noise per
sample, normalised by evaluate_features. ``--noise`` sets difficulty: 1.0 gives
a trained-model-like ranking, 4.0 an untrained-model-like one (the hardest
case for the candidate compaction, see docs/EVALUATION.md).

    OMP_NUM_THREADS=2 .venv/bin/python perf/eval_speed.py [--noise 1.0 4.0]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from msreid.evaluation import compute_distance_matrix, evaluate_features


def make_split(nq: int, ng: int, dim: int, n_ids: int, n_cams: int, noise: float, seed: int):
    """Identity-structured float32 features: query ``[nq, dim]``, gallery ``[ng, dim]`` and labels."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=gen)
    g_ids = torch.arange(ng) % n_ids
    q_ids = torch.arange(nq) % n_ids
    g = torch.randn(ng, dim, generator=gen).mul_(noise).add_(centres[g_ids])
    q = torch.randn(nq, dim, generator=gen).mul_(noise).add_(centres[q_ids])
    g_cams = torch.randint(0, n_cams, (ng,), generator=gen)
    q_cams = torch.randint(0, n_cams, (nq,), generator=gen)
    return q, g, q_ids.numpy(), g_ids.numpy(), q_cams.numpy(), g_cams.numpy()


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
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def large_scale(noise: float, reps: int) -> None:
    q, g, qi, gi, qc, gc = make_split(4985, 24925, 2048, 150, 8, noise, seed=0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t_eval, res = min((timed(lambda: evaluate_features(q, g, qi, gi, qc, gc)) for _ in range(reps)),
                      key=lambda x: x[0])
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t_mm = min(timed(lambda: q @ g.t())[0] for _ in range(reps))
    print(f"RGBN300 scale, noise {noise}: mAP {res.mAP:.4f} mINP {res.mINP:.4f} R1 {res.cmc[0]:.4f}")
    print(f"  bare matmul {t_mm:.2f} s | evaluate_features {t_eval:.2f} s | ratio {t_eval / t_mm:.2f}")
    print(f"  peak RSS {rss1:.2f} GiB (before evaluation, features resident: {rss0:.2f} GiB)")


def small_scale(noise: float) -> None:
    q, g, qi, gi, qc, gc = make_split(1715, 8575, 2048, 50, 8, noise, seed=1)
    t_fast, res = timed(lambda: evaluate_features(q, g, qi, gi, qc, gc))
    dist = compute_distance_matrix(q, g).numpy()
    t_ref, ref = timed(lambda: classic_eval(dist, qi, gi, qc, gc))
    q64 = torch.nn.functional.normalize(q.double(), dim=1)
    g64 = torch.nn.functional.normalize(g.double(), dim=1)
    ref64 = classic_eval((2 - 2 * q64 @ g64.t()).numpy(), qi, gi, qc, gc)
    print(f"RGBNT100 scale, noise {noise}: mAP {res.mAP:.4f}")
    print(f"  classic numpy loop {t_ref:.2f} s | evaluate_features {t_fast:.2f} s | "
          f"speed-up {t_ref / t_fast:.1f}x (loop excludes its distance matrix)")
    print(f"  max |metric diff| vs loop on same float32 distances {max_diff(res, ref):.2e}; "
          f"vs float64 distances {max_diff(res, ref64):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[1.0, 4.0],
                        help="feature noise per setting (1.0 trained-like, 4.0 untrained-like)")
    parser.add_argument("--reps", type=int, default=2, help="repeats at RGBN300 scale (min is kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for noise in args.noise:
        large_scale(noise, args.reps)
    for noise in args.noise:
        small_scale(noise)


if __name__ == "__main__":
    main()
