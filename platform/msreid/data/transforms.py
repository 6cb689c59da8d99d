"""Tuple-aligned augmentation for re-ID (numpy / torch only).

The spectra of a tuple are pixel-aligned, so every random transform is drawn
ONCE per tuple and applied to all of its spectra: the same flip, the same
crop offset, the same erased box. (The official HAMNet code drew each
spectrum's transform independently, which breaks the alignment.)

Layout: a batch of tuples is ``uint8 [N, S, 3, H, W]`` (N tuples, S spectra).
Augmentation stays in uint8 (4x less data through Ray's object store than
float32); ``normalize`` turns a ``[B, 3, H, W]`` uint8 tensor into floats on
the training device. Every random draw comes from a ``numpy.random.Generator``
passed in, one per tuple for training (``augment``), so a tuple's augmentation
is a function of its own seed, whatever batch or worker it is decoded in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, not here: Ray Data's decode tasks import this module in
# every fresh Ray worker process, and pieces already at the model's size (the usual case)
# never need torch there. Importing it costs ~2.2 s of CPU per process (measured on our
# 2-core machine, which starts dozens of such workers in a smoke benchmark).


@dataclass(frozen=True)
class AugmentParams:
    """Strong re-ID baseline augmentation (Luo et al. 2019), all switchable."""

    flip_prob: float = 0.5
    pad: int = 10
    erase_prob: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.4)  # fraction of the image (Zhong et al.)
    erase_min_aspect: float = 0.3  # aspect ratio drawn in [r, 1/r]
    erase_fill: tuple[int, int, int] = (124, 116, 104)  # ImageNet mean in 0-255: 0 once normalised


@dataclass(frozen=True)
class TupleDraw:
    """One batch's random draws, one entry per tuple (shared by its spectra)."""

    flip: np.ndarray  # [N] bool
    crop: np.ndarray  # [N, 2] int (top, left) in the padded image, 0..2*pad
    erase: np.ndarray  # [N, 4] int (top, left, height, width); height 0 = no erasing


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (antialiased when shrinking) of uint8 ``[..., 3, h, w]`` to ``size`` (H, W)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    import torch
    import torch.nn.functional as F

    lead = images.shape[:-3]
    x = torch.from_numpy(np.ascontiguousarray(images)).reshape(-1, *images.shape[-3:])
    y = F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=False,
                      antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8).reshape(*lead, 3, *size).numpy()


def at_size(decoded: list[dict[str, np.ndarray]], spectra: tuple[str, ...],
            size: tuple[int, int]) -> list[list[np.ndarray]]:
    """Decoded tuples (``{spectrum: [h, w, 3] uint8}`` each) -> ``[i][j]``: spectrum j of tuple
    i as uint8 ``[3, H, W]`` at ``size``.

    Pieces already at ``size`` are returned as views (transposed, not copied); the others
    are resized together per source size, in one call each (as ``stack_tuples`` always did).
    """
    out: list[list] = [[None] * len(spectra) for _ in decoded]
    by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for i, tup in enumerate(decoded):
        for j, name in enumerate(spectra):
            piece = tup[name]
            if tuple(piece.shape[:2]) == tuple(size):
                out[i][j] = piece.transpose(2, 0, 1)
            else:
                by_shape.setdefault(piece.shape, []).append((i, j))
    for shape, where in by_shape.items():
        chw = np.stack([decoded[i][spectra[j]] for i, j in where]).transpose(0, 3, 1, 2)
        resized = resize(chw, size)
        for k, (i, j) in enumerate(where):
            out[i][j] = resized[k]
    return out


def stack_tuples(decoded: list[dict[str, np.ndarray]], spectra: tuple[str, ...],
                 size: tuple[int, int]) -> np.ndarray:
    """Decoded tuples (``{spectrum: [h, w, 3] uint8}`` each) -> uint8 ``[N, S, 3, H, W]``.

    Pieces that share a source size are resized together.
    """
    out = np.empty((len(decoded), len(spectra), 3, *size), dtype=np.uint8)
    for i, pieces in enumerate(at_size(decoded, spectra, size)):
        for j, piece in enumerate(pieces):
            out[i, j] = piece
    return out


def draw(rng: np.random.Generator, n: int, size: tuple[int, int],
         params: AugmentParams) -> TupleDraw:
    """Draw flips, crop offsets and erased boxes for ``n`` tuples of images of ``size``."""
    h, w = size
    flip = rng.random(n) < params.flip_prob
    crop = rng.integers(0, 2 * params.pad + 1, size=(n, 2)) if params.pad > 0 \
        else np.zeros((n, 2), dtype=np.int64)
    erase = _draw_erase(rng, n, h, w, params)
    return TupleDraw(flip=flip, crop=crop, erase=erase)


def draw_each(rngs: Sequence[np.random.Generator], size: tuple[int, int],
              params: AugmentParams) -> TupleDraw:
    """``draw`` for one tuple per generator: tuple i's draws come from ``rngs[i]`` alone."""
    if not rngs:
        return TupleDraw(flip=np.zeros(0, bool), crop=np.zeros((0, 2), np.int64),
                         erase=np.zeros((0, 4), np.int64))
    each = [draw(rng, 1, size, params) for rng in rngs]
    return TupleDraw(flip=np.concatenate([d.flip for d in each]),
                     crop=np.concatenate([d.crop for d in each]),
                     erase=np.concatenate([d.erase for d in each]))


def _draw_erase(rng: np.random.Generator, n: int, h: int, w: int,
                params: AugmentParams, attempts: int = 100) -> np.ndarray:
    """Random erasing boxes (Zhong et al. 2020): up to 100 attempts per tuple, first fit wins.

    Returns [n, 4] (top, left, height, width), zeros where no erasing happens.
    """
    boxes = np.zeros((n, 4), dtype=np.int64)
    if params.erase_prob <= 0:
        return boxes
    apply = rng.random(n) < params.erase_prob
    lo, hi = params.erase_area
    r = params.erase_min_aspect
    area = rng.uniform(lo, hi, size=(n, attempts)) * (h * w)
    aspect = rng.uniform(r, 1.0 / r, size=(n, attempts))
    eh = np.round(np.sqrt(area * aspect)).astype(np.int64)
    ew = np.round(np.sqrt(area / aspect)).astype(np.int64)
    u_top = rng.random((n, attempts))
    u_left = rng.random((n, attempts))
    fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
    for i in np.flatnonzero(apply):
        ok = np.flatnonzero(fits[i])
        if ok.size == 0:
            continue
        k = ok[0]
        top = int(u_top[i, k] * (h - eh[i, k] + 1))
        left = int(u_left[i, k] * (w - ew[i, k] + 1))
        boxes[i] = (top, left, eh[i, k], ew[i, k])
    return boxes


def place(dst: np.ndarray, src: np.ndarray, flip: bool, top: int, left: int, pad: int) -> None:
    """``dst[..., H, W]`` = the crop at (top, left) of ``src`` (same shape, any strides)
    mirrored when ``flip`` and zero-padded by ``pad``: flip, pad and crop in one copy.

    Pixel (y, x) of the crop is pixel (y + top - pad, x + left - pad) of the flipped source,
    zero outside it. Written into ``dst`` straight from the decoded (HWC) image instead of
    stacking the pieces, then copying, mirroring, padding and cropping the whole batch one
    pass after the other (~0.37 ms per RGBNT100 tuple under cProfile; this one copy:
    0.16-0.17 ms, the transposition included; perf/decode_floor.py --profile, issue 22).
    """
    h, w = dst.shape[-2:]
    dy, dx = pad - top, pad - left  # where source pixel (0, 0) lands
    y0, y1, x0, x1 = max(0, dy), min(h, h + dy), max(0, dx), min(w, w + dx)
    if y1 <= y0 or x1 <= x0:  # a pad larger than the image: the crop may miss it entirely
        dst[...] = 0
        return
    rows = src[..., y0 - dy:y1 - dy, :]
    dst[..., y0:y1, x0:x1] = (rows[..., w - x1 + dx:w - x0 + dx][..., ::-1] if flip
                              else rows[..., x0 - dx:x1 - dx])
    dst[..., :y0, :] = 0
    dst[..., y1:, :] = 0
    dst[..., y0:y1, :x0] = 0
    dst[..., y0:y1, x1:] = 0


def augment_into(out: Sequence[np.ndarray], pieces: Sequence[Sequence[np.ndarray]],
                 d: TupleDraw | None, params: AugmentParams | None) -> None:
    """Write tuple i's spectrum j, ``pieces[i][j]`` (``[3, H, W]``), augmented, into
    ``out[j][i]``: flip[i], crop[i] and erase[i] for all of tuple i's spectra.

    ``d`` None: plain copies. ``out``: one ``[N, 3, H, W]`` array per spectrum (or views of
    one ``[N, S, 3, H, W]``).
    """
    if d is None:
        for i, tup in enumerate(pieces):
            for j, piece in enumerate(tup):
                out[j][i] = piece
        return
    fill = np.asarray(params.erase_fill, dtype=np.uint8)[:, None, None]
    for i, tup in enumerate(pieces):
        top, left = (int(v) for v in d.crop[i])
        etop, eleft, eh, ew = (int(v) for v in d.erase[i])
        for j, piece in enumerate(tup):
            dst = out[j][i]
            place(dst, piece, bool(d.flip[i]), top, left, params.pad)
            if eh > 0:
                dst[:, etop:etop + eh, eleft:eleft + ew] = fill


def apply(batch: np.ndarray, d: TupleDraw, params: AugmentParams) -> np.ndarray:
    """Flip, pad + crop and erase uint8 ``[N, S, 3, H, W]``, tuple by tuple.

    Tuple i's spectra all get flip[i], crop[i] and erase[i]. Returns a new array.
    """
    out = np.empty_like(batch)
    augment_into([out[:, j] for j in range(batch.shape[1])], batch, d, params)
    return out


def augment(batch: np.ndarray, rngs: Sequence[np.random.Generator],
            params: AugmentParams) -> np.ndarray:
    """Augment uint8 ``[N, S, 3, H, W]``: tuple i drawn from ``rngs[i]``, shared by its spectra."""
    if len(rngs) != batch.shape[0]:
        raise ValueError(f"{len(rngs)} generators for {batch.shape[0]} tuples")
    return apply(batch, draw_each(rngs, batch.shape[-2:], params), params)


def draw_kept_spectra(rng: np.random.Generator, num_spectra: int, drop_prob: float) -> np.ndarray:
    """Modality dropout of one tuple: ``[S]`` bool, True = the spectrum is kept.

    Each spectrum is dropped independently with probability ``drop_prob``; when
    that would drop all of them, one drawn uniformly from the same generator is
    kept (at least one spectrum per tuple).
    """
    keep = rng.random(num_spectra) >= drop_prob
    if not keep.any():
        keep[rng.integers(num_spectra)] = True
    return keep


def kept_spectra(rngs: Sequence[np.random.Generator], num_spectra: int,
                 drop_prob: float) -> np.ndarray:
    """``[N, S]`` bool: ``draw_kept_spectra`` of tuple i from ``rngs[i]`` alone."""
    return np.stack([draw_kept_spectra(rng, num_spectra, drop_prob) for rng in rngs]) \
        if len(rngs) else np.zeros((0, num_spectra), dtype=bool)


def normalize(images: torch.Tensor, mean: tuple[float, float, float],
              std: tuple[float, float, float], dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> ``(x / 255 - mean) / std`` as ``dtype`` (default float32),
    on images' device."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    m = torch.tensor(mean, dtype=dtype, device=images.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=dtype, device=images.device).view(1, 3, 1, 1) * 255.0
    return (images.to(dtype) - m) / s
