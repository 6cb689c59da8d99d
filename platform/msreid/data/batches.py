"""The global batch and each worker's share of it: sizes only, plain python.

``data.batch_size`` (or P x K in identity-balanced mode) is the batch of one
optimiser step over ALL workers; worker r of W trains an equal share of it.
``msreid.config`` checks these sizes before anything starts, so they live
below it; the plans themselves (which tuples) are ``msreid.train.sampling``'s.
"""

from __future__ import annotations

from msreid.errors import UserError


def global_batch_size(mode: str, batch_size: int, p: int, k: int) -> int:
    """Tuples per optimiser step over all workers: P x K in identity-balanced mode."""
    return p * k if mode == "pk" else batch_size


def share_size(mode: str, batch_size: int, p: int, k: int, world: int) -> int:
    """Tuples per worker per step: the global batch / ``world``; UserError unless it divides."""
    total = global_batch_size(mode, batch_size, p, k)
    if world < 1 or total % world:
        what = (f"data.P x data.K = {p} x {k} = {total}" if mode == "pk"
                else f"data.batch_size={total}")
        raise UserError(f"{what} is the global batch (all workers together) and does not "
                        f"divide by run.num_workers={world}: each worker takes an equal share. "
                        f"Use a global batch that is a multiple of {world}, or another number "
                        "of workers")
    return total // world
