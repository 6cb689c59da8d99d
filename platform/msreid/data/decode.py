"""Decode a manifest row into one ``[H, W, 3] uint8`` image per spectrum.

The manifest stores the released JPEG bytes verbatim plus a crop box per
spectrum, so decoding is: decode each distinct blob once (PIL, RGB), then cut
out each spectrum's box. This is on the training hot path: no copies beyond
the one PIL decode per blob; the returned arrays are views into PIL's own
image memory (exported through the Arrow C data interface, not copied out
with ``np.asarray(img)``: that copies the image twice, and cost half as much
CPU as the JPEG decode itself, 0.24 of 0.70 ms per RGBNT100 tuple; issue 22,
docs/PERFORMANCE.md "Input pipeline"). Blobs may be ``bytes`` or any buffer
(the pipeline passes zero-copy views of Ray's object store).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

DECODERS = ("pil", "torchvision")


def _decode_blob(blob, decoder: str = "pil") -> np.ndarray:
    """JPEG (or any PIL-readable) bytes -> ``[H, W, 3] uint8`` (a read-only view).

    decoder "torchvision": JPEGs through ``torchvision.io.decode_jpeg`` (anything else
    through PIL).
    """
    if decoder == "torchvision" and bytes(blob[:2]) == b"\xff\xd8":
        return _decode_jpeg_torchvision(blob)
    img = Image.open(io.BytesIO(blob))
    if img.mode != "RGB":
        img = img.convert("RGB")
    else:
        img.load()
    return pixels(img)


def _decode_jpeg_torchvision(blob) -> np.ndarray:
    """A JPEG through ``torchvision.io.decode_jpeg``: the same pixels as PIL's RGB conversion.

    Both wrap libjpeg-turbo with the same defaults (islow DCT, fancy upsampling); tested
    equal on the synthetic releases and on grey, 4:4:4, 4:2:2, progressive and CMYK JPEGs
    (tests/test_pipeline_reference.py). It decodes faster than PIL (0.39 against 0.52 ms per
    768 x 128 JPEG, the Python side of PIL's loader included; perf/decode_floor.py
    --profile), but its import costs a fresh process 2.2 s of CPU (torch and torchvision),
    hence not the default. torchvision 0.29 deprecates it in favour of TorchCodec.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)  # a copy: frombuffer wants
    # a writable buffer, the object store's is not (a ~50 KB copy, 1% of the decode)
    return decode_jpeg(data, mode=ImageReadMode.RGB).numpy().transpose(1, 2, 0)


def pixels(img: Image.Image) -> np.ndarray:
    """``[H, W, 3] uint8`` view of an RGB PIL image's memory, without copying it.

    Pillow keeps RGB as 4 bytes per pixel and exports that memory to Arrow
    (Pillow >= 11.2); the view skips the 4th byte and keeps the image alive. An
    image whose rows are not in one memory block (very large ones) is copied, as
    is every image with an older Pillow.
    """
    try:
        flat = pa.array(img).values.to_numpy(zero_copy_only=True)
    except (ValueError, TypeError):  # "Image rows are not contiguous in memory", Pillow < 11.2
        return np.asarray(img)
    return flat.reshape(img.height, img.width, 4)[:, :, :3]


def decode_spectra(blobs: Sequence[bytes], srcs: Mapping[str, int],
                   boxes: Mapping[str, Sequence[int]],
                   decoder: str = "pil") -> dict[str, np.ndarray]:
    """Crop each spectrum out of its decoded blob.

    Args:
        blobs: encoded images of one tuple (the manifest's ``blobs``), bytes or buffers.
        srcs: spectrum -> index into ``blobs``.
        boxes: spectrum -> ``(left, top, right, bottom)`` in the decoded blob.
        decoder: "pil" or "torchvision" (JPEGs only; the same pixels, see
            ``_decode_jpeg_torchvision``).

    Returns:
        spectrum -> ``[H, W, 3] uint8`` (read-only, strided views; copy before writing).
    """
    decoded: dict[int, np.ndarray] = {}
    out = {}
    for name, src in srcs.items():
        src = int(src)
        if src not in decoded:
            decoded[src] = _decode_blob(blobs[src], decoder)
        left, top, right, bottom = (int(v) for v in boxes[name])
        out[name] = decoded[src][top:bottom, left:right]
    return out


def decode_row(row: Mapping, spectra: Sequence[str], decoder: str = "pil") -> dict[str, np.ndarray]:
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
    return decode_spectra(row["blobs"], srcs, boxes, decoder)
