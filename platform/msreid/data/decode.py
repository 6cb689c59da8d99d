"""Decode a manifest row into one ``[H, W, 3] uint8`` image per spectrum.

The manifest stores the released JPEG bytes verbatim plus a crop box per
spectrum, so decoding is: decode each distinct blob once (PIL, RGB), then cut
out each spectrum's box. This is on the training hot path: no copies beyond
the one PIL decode per blob; the returned arrays are views into it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image


def _decode_blob(blob: bytes) -> np.ndarray:
    """JPEG (or any PIL-readable) bytes -> ``[H, W, 3] uint8``."""
    img = Image.open(io.BytesIO(blob))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def decode_spectra(blobs: Sequence[bytes], srcs: Mapping[str, int],
                   boxes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Crop each spectrum out of its decoded blob.

    Args:
        blobs: encoded images of one tuple (the manifest's ``blobs``).
        srcs: spectrum -> index into ``blobs``.
        boxes: spectrum -> ``(left, top, right, bottom)`` in the decoded blob.

    Returns:
        spectrum -> ``[H, W, 3] uint8`` (read-only views; copy before writing).
    """
    decoded: dict[int, np.ndarray] = {}
    out = {}
    for name, src in srcs.items():
        src = int(src)
        if src not in decoded:
            decoded[src] = _decode_blob(blobs[src])
        left, top, right, bottom = (int(v) for v in boxes[name])
        out[name] = decoded[src][top:bottom, left:right]
    return out


def decode_row(row: Mapping, spectra: Sequence[str]) -> dict[str, np.ndarray]:
    """Decode ``spectra`` of one manifest row (a dict with ``blobs``, ``<s>_src``, ``<s>_box``).

    Works on rows from ``pa.Table.to_pylist()`` as well as Ray Data / pandas rows
    (numpy arrays instead of lists). Raises KeyError when the row lacks a
    requested spectrum (``<s>_src`` is null): check ``ManifestInfo.spectra``.

    Returns:
        spectrum -> ``[H, W, 3] uint8``.
    """
    srcs = {}
    boxes = {}
    for s in spectra:
        src = row[f"{s}_src"]
        if src is None or (isinstance(src, float) and src != src):
            raise KeyError(f"spectrum '{s}' is absent from this manifest row")
        srcs[s] = src
        boxes[s] = row[f"{s}_box"]
    return decode_spectra(row["blobs"], srcs, boxes)
