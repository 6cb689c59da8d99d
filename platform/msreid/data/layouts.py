"""Released on-disk layouts -> spectral tuple records (names parsed, nothing decoded).

One scanner per layout (docs/DATA.md describes the releases):

- ``rgbn300`` / ``rgbnt100``: ``bounding_box_train/``, ``query/``,
  ``bounding_box_test/`` of Market-style names ``<id>_c<cam>...jpg``; the
  spectra are side by side in one JPEG (RGB | NIR [| TIR]). Accepted with or
  without the release's ``rgbir/`` level.
- ``rgbnt201``: ``train_171/`` and ``test/`` with ``RGB/ NI/ TI/``; query and
  gallery are both ``test/`` (each test tuple yields a query AND a gallery row).
- ``msvr310``: ``bounding_box_train/``, ``query3/``, ``bounding_box_test/``,
  one ``<vid4>/`` folder per vehicle with ``vis/ ni/ th/``.

Scanners never raise on bad data: they append a :class:`Problem` per
offending file so that ingest can report every problem at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
"""Files with other suffixes (and hidden files) in a split folder are ignored."""


@dataclass(frozen=True)
class Problem:
    """One offending file (path relative to the dataset root) and why."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass(frozen=True)
class TupleRecord:
    """One spectral tuple as found on disk (before decoding).

    ``files`` are paths relative to the dataset root, forward slashes; for
    separate-file layouts they are in the order of ``LayoutSpec.spectra``.
    """

    split: str
    pid: int
    camera: int  # 0-based
    scene: int | None
    files: tuple[str, ...]


@dataclass(frozen=True)
class LayoutSpec:
    """What a released layout looks like and which values are legal (on disk)."""

    name: str
    spectra: tuple[str, ...]
    folders: tuple[tuple[str, str], ...]  # (split, folder); one folder may serve two splits
    concatenated: bool  # spectra side by side in one image
    pid_range: tuple[int, int]  # inclusive, raw ids
    camera_range: tuple[int, int]  # inclusive, as written in the name
    piece_size: tuple[int, int] | None  # (width, height) of one spectrum piece, if fixed
    spectrum_dirs: tuple[str, ...] = ()  # separate-file layouts: sub-folder per spectrum


LAYOUTS: dict[str, LayoutSpec] = {
    "rgbn300": LayoutSpec(
        "rgbn300", ("rgb", "nir"),
        (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")),
        concatenated=True, pid_range=(1, 600), camera_range=(1, 8), piece_size=(256, 128)),
    "rgbnt100": LayoutSpec(
        "rgbnt100", ("rgb", "nir", "tir"),
        (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")),
        concatenated=True, pid_range=(1, 600), camera_range=(1, 8), piece_size=(256, 128)),
    # RGBNT201: 6-digit person ids; four camera views (cam1..cam4).
    "rgbnt201": LayoutSpec(
        "rgbnt201", ("rgb", "nir", "tir"),
        (("train", "train_171"), ("query", "test"), ("gallery", "test")),
        concatenated=False, pid_range=(0, 999_999), camera_range=(1, 4), piece_size=None,
        spectrum_dirs=("RGB", "NI", "TI")),
    # MSVR310: 4-digit vehicle ids, camera is one digit (already 0-based).
    "msvr310": LayoutSpec(
        "msvr310", ("rgb", "nir", "tir"),
        (("train", "bounding_box_train"), ("query", "query3"), ("gallery", "bounding_box_test")),
        concatenated=False, pid_range=(0, 9999), camera_range=(0, 9), piece_size=None,
        spectrum_dirs=("vis", "ni", "th")),
}

_MARKET_NAME = re.compile(r"^(\d+)_c(\d+)")
_RGBNT201_CAM = re.compile(r"^cam(\d+)$")
_MSVR_NAME = re.compile(r"^(\d{4})_s(\d{3})_v(\d)")


def find_dataset_root(root: Path, spec: LayoutSpec) -> Path:
    """The folder holding the split folders: ``root`` itself or ``root/rgbir``."""
    wanted = {folder for _, folder in spec.folders}
    if any((root / f).is_dir() for f in wanted):
        return root
    if (root / "rgbir").is_dir():
        return root / "rgbir"
    return root


def _image_names(folder: Path) -> list[str]:
    """Non-hidden entries named like images, WHATEVER they are: a folder, a dangling
    symlink or a symlink loop named ``x.jpg`` fails when read and is reported then."""
    return sorted(p.name for p in folder.iterdir()
                  if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _check_range(rel: str, what: str, value: int, bounds: tuple[int, int],
                 problems: list[Problem]) -> bool:
    if bounds[0] <= value <= bounds[1]:
        return True
    problems.append(Problem(rel, f"{what} {value} out of range {bounds[0]}..{bounds[1]}"))
    return False


def _split_folders(root: Path, spec: LayoutSpec, problems: list[Problem]) -> list[tuple[list[str], str]]:
    """``([splits], folder)`` per existing split folder; missing ones become problems."""
    grouped: dict[str, list[str]] = {}
    for split, folder in spec.folders:
        grouped.setdefault(folder, []).append(split)
    out = []
    for folder, splits in grouped.items():
        if not (root / folder).is_dir():
            problems.append(Problem(folder + "/", f"missing folder (split {'/'.join(splits)}); "
                                    f"expected under {root}"))
            continue
        out.append((splits, folder))
    return out


def _scan_concatenated(root: Path, spec: LayoutSpec, problems: list[Problem]) -> list[TupleRecord]:
    records = []
    for splits, folder in _split_folders(root, spec, problems):
        names = _image_names(root / folder)
        if not names:
            problems.append(Problem(folder + "/", f"split '{splits[0]}' is empty (no images)"))
        for name in names:
            rel = f"{folder}/{name}"
            m = _MARKET_NAME.match(name)
            if m is None:
                problems.append(Problem(rel, "name does not parse as <id>_c<camera>..."))
                continue
            pid, cam = int(m.group(1)), int(m.group(2))
            ok = _check_range(rel, "id", pid, spec.pid_range, problems)
            if _check_range(rel, "camera", cam, spec.camera_range, problems) and ok:
                for split in splits:
                    records.append(TupleRecord(split, pid, cam - 1, None, (rel,)))
    return records


def _tuple_files(base: Path, rel_base: str, spec: LayoutSpec,
                 problems: list[Problem]) -> list[tuple[str, tuple[str, ...]]]:
    """``(name, files)`` for each name present in every spectrum sub-folder of ``base``."""
    present = []
    for d in spec.spectrum_dirs:
        if not (base / d).is_dir():
            problems.append(Problem(f"{rel_base}/{d}/", "missing spectrum folder"))
            present.append(set())
        else:
            present.append(set(_image_names(base / d)))
    out = []
    for name in sorted(set().union(*present)):
        missing = [d for d, names in zip(spec.spectrum_dirs, present) if name not in names]
        if missing:
            have = next(d for d, names in zip(spec.spectrum_dirs, present) if name in names)
            problems.append(Problem(f"{rel_base}/{have}/{name}",
                                    f"no file of that name in {', '.join(missing)}/"))
            continue
        out.append((name, tuple(f"{rel_base}/{d}/{name}" for d in spec.spectrum_dirs)))
    return out


def _parse_rgbnt201(name: str) -> tuple[int, int] | None:
    """``(pid, camera_on_disk)`` from e.g. ``000001_cam1_0_00.jpg``, or None."""
    tokens = Path(name).stem.split("_")
    if len(tokens) < 2 or not tokens[0][:6].isdigit() or len(tokens[0]) < 6:
        return None
    m = _RGBNT201_CAM.match(tokens[1])
    return None if m is None else (int(tokens[0][:6]), int(m.group(1)))


def _scan_rgbnt201(root: Path, spec: LayoutSpec, problems: list[Problem]) -> list[TupleRecord]:
    records = []
    for splits, folder in _split_folders(root, spec, problems):
        found = _tuple_files(root / folder, folder, spec, problems)
        if not found:
            problems.append(Problem(folder + "/", f"split '{splits[0]}' is empty (no complete tuples)"))
        for name, files in found:
            parsed = _parse_rgbnt201(name)
            if parsed is None:
                problems.append(Problem(files[0], "name does not parse as <id6>_cam<N>_..."))
                continue
            pid, cam = parsed
            ok = _check_range(files[0], "id", pid, spec.pid_range, problems)
            if _check_range(files[0], "camera", cam, spec.camera_range, problems) and ok:
                for split in splits:  # test/ is both query and gallery
                    records.append(TupleRecord(split, pid, cam - 1, None, files))
    return records


def _scan_msvr310(root: Path, spec: LayoutSpec, problems: list[Problem]) -> list[TupleRecord]:
    records = []
    for splits, folder in _split_folders(root, spec, problems):
        entries = [p for p in (root / folder).iterdir() if not p.name.startswith(".")]
        for p in entries:
            if p.is_symlink() and not p.is_dir():
                problems.append(Problem(f"{folder}/{p.name}", "symlink to no folder (dangling or a loop)"))
        vids = sorted(p.name for p in entries if p.is_dir())
        n_before = len(records)
        for vid in vids:
            for name, files in _tuple_files(root / folder / vid, f"{folder}/{vid}", spec, problems):
                m = _MSVR_NAME.match(name)
                if m is None:
                    problems.append(Problem(files[0], "name does not parse as <id4>_s<scene3>_v<cam>..."))
                    continue
                pid, scene, cam = int(m.group(1)), int(m.group(2)), int(m.group(3))
                if m.group(1) != vid:
                    problems.append(Problem(files[0], f"id {m.group(1)} in the name but folder {vid}/"))
                    continue
                ok = _check_range(files[0], "id", pid, spec.pid_range, problems)
                if _check_range(files[0], "camera", cam, spec.camera_range, problems) and ok:
                    records.append(TupleRecord(splits[0], pid, cam, scene, files))
        if len(records) == n_before and not any(p.file.startswith(folder + "/") for p in problems):
            problems.append(Problem(folder + "/", f"split '{splits[0]}' is empty (no tuples)"))
    return records


_SCANNERS = {
    "rgbn300": _scan_concatenated,
    "rgbnt100": _scan_concatenated,
    "rgbnt201": _scan_rgbnt201,
    "msvr310": _scan_msvr310,
}


def layout_spec(layout: str) -> LayoutSpec:
    """The LayoutSpec of a layout name; UserError listing the valid names otherwise."""
    if layout not in LAYOUTS:
        from msreid.errors import UserError

        raise UserError(f"unknown layout '{layout}'; choose one of {sorted(LAYOUTS)}")
    return LAYOUTS[layout]


def scan(layout: str, root: Path, problems: list[Problem]) -> list[TupleRecord]:
    """All tuple records of ``layout`` under ``root`` (the dataset root; see find_dataset_root).

    Appends a Problem for every missing folder, empty split, unparsable name,
    out-of-range id / camera and incomplete tuple; never raises on bad data.
    """
    spec = layout_spec(layout)
    return _SCANNERS[layout](Path(root), spec, problems)
