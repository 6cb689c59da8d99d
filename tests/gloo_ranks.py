"""Run a function on two gloo ranks (two spawned processes on 127.0.0.1) and collect results.

``fn(rank)`` must be a module-level function (spawn pickles it by name); it runs inside an
initialised 2-rank process group and returns a picklable result.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[[int], Any], port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        out[rank] = fn(rank)
    finally:
        dist.destroy_process_group()


def run_on_two_ranks(fn: Callable[[int], Any]) -> dict[int, Any]:
    """{rank: fn(rank)} for ranks 0 and 1 of one gloo group."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_entry, args=(fn, _free_port(), out), nprocs=2, join=True)
        return {r: out[r] for r in (0, 1)}
