"""Builders of tiny datasets in each released on-disk format (no tests here).

Every spectrum piece is a solid colour plus a small gradient, so a test can
tell pieces apart by their mean colour (RGB red, NIR green, TIR blue) and
compare pixels exactly against PIL decoding the fixture file itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Mean colour of each spectrum's piece in the fixtures (before JPEG).
COLOURS = {"rgb": (200, 40, 40), "nir": (40, 200, 40), "tir": (40, 40, 200)}

# Market-style fixture (RGBN300 / RGBNT100): (pid, camera on disk, frame) per split.
MARKET_TUPLES = {
    "bounding_box_train": [(3, 1, 1), (3, 2, 2), (7, 1, 1), (7, 3, 2), (7, 3, 3)],
    "query": [(10, 1, 1), (12, 4, 1)],
    "bounding_box_test": [(10, 1, 1), (10, 2, 2), (12, 4, 1)],
}


def piece(spectrum: str, height: int, width: int, seed: int) -> np.ndarray:
    """``[height, width, 3] uint8``: the spectrum's colour plus a seed-dependent gradient."""
    base = np.array(COLOURS[spectrum], dtype=np.int32)
    ramp = (np.arange(width)[None, :, None] * (seed % 5 + 1)) % 32
    return np.clip(base + ramp + np.zeros((height, 1, 1), np.int32), 0, 255).astype(np.uint8)


def save_jpeg(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def market_name(pid: int, cam: int, frame: int) -> str:
    return f"{pid:04d}_c{cam:03d}_{frame:05d}.jpg"


def make_market(root: Path, spectra: tuple[str, ...], tuples=None,
                piece_size: tuple[int, int] = (256, 128)) -> Path:
    """RGBN300 (rgb, nir) or RGBNT100 (rgb, nir, tir) layout under ``root``; returns root."""
    w, h = piece_size
    for folder, items in (tuples or MARKET_TUPLES).items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for pid, cam, frame in items:
            seed = pid * 100 + cam * 10 + frame
            image = np.concatenate([piece(s, h, w, seed) for s in spectra], axis=1)
            save_jpeg(root / folder / market_name(pid, cam, frame), image)
    return root


# RGBNT201 fixture: file names per folder (test/ is both query and gallery).
RGBNT201_FILES = {
    "train_171": ["000001_cam1_0_00.jpg", "000001_cam3_0_01.jpg", "000004_cam2_1_00.jpg"],
    "test": ["000100_cam1_0_00.jpg", "000100_cam2_0_01.jpg", "000105_cam4_2_00.jpg"],
}
RGBNT201_DIRS = {"rgb": "RGB", "nir": "NI", "tir": "TI"}


def make_rgbnt201(root: Path, files=None, size: tuple[int, int] = (64, 128)) -> Path:
    """RGBNT201 layout with one file per spectrum, each ``size`` = (width, height)."""
    w, h = size
    for folder, names in (files or RGBNT201_FILES).items():
        for i, name in enumerate(names):
            for s, d in RGBNT201_DIRS.items():
                save_jpeg(root / folder / d / name, piece(s, h, w, i))
    return root


# MSVR310 fixture: names per split folder (vehicle folder = first 4 chars).
MSVR310_FILES = {
    "bounding_box_train": ["0094_s023_v1_007.jpg", "0094_s023_v2_008.jpg", "0101_s005_v0_001.jpg"],
    "query3": ["0200_s011_v3_002.jpg"],
    "bounding_box_test": ["0200_s011_v4_003.jpg", "0200_s012_v3_004.jpg"],
}
MSVR310_DIRS = {"rgb": "vis", "nir": "ni", "tir": "th"}


def make_msvr310(root: Path, files=None, size: tuple[int, int] = (96, 48)) -> Path:
    w, h = size
    for folder, names in (files or MSVR310_FILES).items():
        for i, name in enumerate(names):
            for s, d in MSVR310_DIRS.items():
                save_jpeg(root / folder / name[:4] / d / name, piece(s, h, w, i))
    return root


def decode_file(path: Path) -> np.ndarray:
    """Reference decode: ``[H, W, 3] uint8`` exactly as PIL gives it."""
    return np.array(Image.open(path).convert("RGB"))
