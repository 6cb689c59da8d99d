"""Read a released multi-spectral dataset and write its Parquet manifest.

Validates everything first (every file decodes, sizes fit the layout, names
parse, ids and cameras in range, every split non-empty, every query id in the
gallery, the challenges sidecar names existing files) and reports EVERY
problem in one error. Nothing is left behind on failure: rows are written
into a temporary directory beside the destination, then moved into place.

Example:
  msreid ingest --layout rgbnt100 --root ~/data/RGBNT100 --out manifests/rgbnt100
"""

from __future__ import annotations

import argparse
import csv
import errno
import hashlib
import io
import logging
import os
import shutil
import stat
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from msreid import SPECTRA
from msreid.data import layouts
from msreid.data.layouts import LayoutSpec, Problem, TupleRecord
from msreid.data.schema import (
    MANIFEST_SCHEMA,
    META_FINGERPRINT,
    META_LAYOUT,
    META_SCHEMA_VERSION,
    META_SPECTRA,
    SCHEMA_VERSION,
    SPLITS,
    ManifestInfo,
    foreign_entries,
    manifest_info,
    write_checksums,
)
from msreid.errors import UserError, disk_full_is_user_error

CHALLENGES_FILE = "challenges.csv"
CHALLENGE_TAGS = ("normal", "low_illumination", "black_night", "glare", "shadow",
                  "occlusion", "view_change")
"""Documented tags (the paper's Fig. 3c); any non-empty string is accepted."""
log = logging.getLogger(__name__)
MAX_LISTED_PROBLEMS = 20
TARGET_ROW_GROUP_BYTES = 4 << 20  # streaming readers hold one row group at a time
TARGET_FILE_BYTES = 128 << 20  # several part files let readers parallelise
DECODE_THREADS = 4  # PIL releases the GIL while decoding: ~1.5x on 2 cores (docs/DATA.md)


@dataclass(frozen=True)
class LoadedFile:
    """Bytes of one released file and its decoded size, or why it failed."""

    data: bytes
    size: tuple[int, int] | None  # (width, height); None when it does not decode
    error: str | None = None


def _unreadable(path: Path, exc: OSError) -> str:
    """Why ``path`` could not be read, in words (the file is named by the caller)."""
    if isinstance(exc, IsADirectoryError):
        return "is a folder named like an image, not a file; rename or remove it"
    if path.is_symlink():
        if exc.errno == errno.ELOOP:
            return "symlink loop; replace the link by the file"
        if isinstance(exc, FileNotFoundError):
            return f"dangling symlink (points to {os.readlink(path)}, which does not exist)"
    if isinstance(exc, PermissionError):
        return "cannot be read (permission denied); fix its permissions"
    return f"cannot be read ({exc.strerror or type(exc).__name__})"


def _load(path: Path) -> LoadedFile:
    try:
        mode = path.stat().st_mode  # follows symlinks: dangling ones and loops raise here
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(mode):  # reading a FIFO would block forever
            return LoadedFile(b"", None, "is not a regular file (a FIFO, socket or device); remove it")
        data = path.read_bytes()
    except OSError as exc:  # every unreadable file is listed with the other offenders
        return LoadedFile(b"", None, _unreadable(path, exc))
    if not data:
        return LoadedFile(data, None, "is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # full decode: catches truncated / corrupt data, not just headers
            return LoadedFile(data, img.size)
    except UnidentifiedImageError:  # its message names the in-memory buffer, not the file
        return LoadedFile(data, None, "does not decode as an image (not a format PIL reads)")
    except Exception as exc:  # any decoder failure means the file is unusable
        return LoadedFile(data, None, f"does not decode as an image ({type(exc).__name__}: {exc})")


def load_files(root: Path, files: list[str]) -> dict[str, LoadedFile]:
    """Read and fully decode every file once (threaded), keyed by relative path."""
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        loaded = pool.map(_load, (root / f for f in files), chunksize=64)
        return dict(zip(files, loaded))


def parse_piece_size(text: str | None) -> tuple[int, int] | str | None:
    """``None`` (released size), ``"auto"`` or ``(width, height)`` from ``"WxH"``."""
    if text in (None, "", "release"):
        return None
    if text == "auto":
        return "auto"
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w > 0 and h > 0:
            return (w, h)
    except ValueError:
        pass
    raise UserError(f"--piece-size '{text}': expected WIDTHxHEIGHT (e.g. 256x128), "
                    "'release' or 'auto'")


def find_sidecar(data_root: Path) -> Path | None:
    """``challenges.csv`` at the dataset root, or beside ``rgbir/`` one level up."""
    for candidate in (data_root / CHALLENGES_FILE, data_root.parent / CHALLENGES_FILE):
        if candidate.is_file() and (candidate.parent == data_root or data_root.name == "rgbir"):
            return candidate
    return None


def read_challenges(sidecar: Path, data_root: Path, problems: list[Problem]) -> dict[str, str]:
    """``{relative file: tag}`` from a ``file,challenge`` CSV; bad rows become problems."""
    where = CHALLENGES_FILE if sidecar.parent == data_root else f"../{CHALLENGES_FILE}"
    text = sidecar.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"file", "challenge"} <= set(reader.fieldnames):
        problems.append(Problem(where, f"header must be 'file,challenge', got {reader.fieldnames}"))
        return {}
    tags: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        rel = (row["file"] or "").strip().replace("\\", "/")
        if sidecar.parent != data_root and rel.startswith(data_root.name + "/"):
            rel = rel[len(data_root.name) + 1:]  # written relative to the level above rgbir/
        tag = (row["challenge"] or "").strip()
        if not rel or not tag:
            problems.append(Problem(f"{where}:{line}", "empty file or challenge"))
        elif rel in tags:
            problems.append(Problem(f"{where}:{line}", f"{rel} listed twice"))
        else:
            tags[rel] = tag
    return tags


def check_challenges(tags: dict[str, str], records: list[TupleRecord], data_root: Path,
                     problems: list[Problem]) -> None:
    """Every sidecar entry must name an existing file: a tuple's first (RGB) file."""
    primary = {r.files[0] for r in records}
    secondary = {f for r in records for f in r.files[1:]}
    for rel in sorted(set(tags) - primary):
        if rel in secondary:
            problems.append(Problem(rel, f"{CHALLENGES_FILE} must name the tuple's RGB file"))
        elif not (data_root / rel).is_file():
            problems.append(Problem(rel, f"listed in {CHALLENGES_FILE} but no such file"))
        # else: the file exists but was rejected; its own problem is reported already


def expected_size(spec: LayoutSpec, piece: tuple[int, int] | str | None,
                  loaded: dict[str, LoadedFile]) -> tuple[int, int] | None:
    """Full image size ``(width, height)`` every file of a concatenated layout must have."""
    if not spec.concatenated:
        return None
    if piece == "auto":
        sizes = Counter(f.size for f in loaded.values() if f.size is not None)
        if not sizes:
            return None
        (w, h), _ = sizes.most_common(1)[0]
        return (w, h)
    pw, ph = piece or spec.piece_size
    return (pw * len(spec.spectra), ph)


def _check_uniform_resize(spec: LayoutSpec, full: tuple[int, int] | None,
                          loaded: dict[str, LoadedFile], data_root: Path) -> None:
    """One clear error (instead of one per file) when EVERY image has the same other size."""
    sizes = {f.size for f in loaded.values() if f.size is not None}
    if full is None or len(sizes) != 1 or sizes == {full}:
        return
    (w, h), = sizes
    if w * full[1] == h * full[0] and w % len(spec.spectra) == 0:  # same shape, scaled
        raise UserError(
            f"{spec.name} dataset at {data_root}: every image is {w}x{h}, released {spec.name} "
            f"images are {full[0]}x{full[1]}; for `msreid synth` output or a resized copy pass "
            f"--piece-size auto (here {w // len(spec.spectra)}x{h})")


def crop_boxes(spec: LayoutSpec, record: TupleRecord, loaded: dict[str, LoadedFile],
               full: tuple[int, int] | None,
               problems: list[Problem]) -> list[tuple[int, int, int, int]] | None:
    """One crop box per spectrum (in ``spec.spectra`` order), or None after logging problems."""
    files = [loaded[f] for f in record.files]
    bad = [(rel, f) for rel, f in zip(record.files, files) if f.size is None]
    for rel, f in bad:
        problems.append(Problem(rel, f.error or "does not decode"))
    if bad:
        return None
    if spec.concatenated:
        w, h = files[0].size
        if full is None or (w, h) != full or w % len(spec.spectra):
            want = "?" if full is None else f"{full[0]}x{full[1]}"
            problems.append(Problem(record.files[0], f"image is {w}x{h}, layout {spec.name} needs "
                                    f"{want} ({len(spec.spectra)} pieces side by side; "
                                    "check --layout and --piece-size)"))
            return None
        pw = w // len(spec.spectra)
        return [(i * pw, 0, (i + 1) * pw, h) for i in range(len(spec.spectra))]
    sizes = {f.size for f in files}
    if len(sizes) != 1:
        desc = ", ".join(f"{rel.rsplit('/', 2)[-2]} {f.size[0]}x{f.size[1]}"
                         for rel, f in zip(record.files, files))
        problems.append(Problem(record.files[0], f"spectra of the tuple differ in size ({desc})"))
        return None
    (w, h), = sizes
    return [(0, 0, w, h)] * len(spec.spectra)


def check_query_in_gallery(records: list[TupleRecord], problems: list[Problem]) -> None:
    """Every query id must have at least one gallery tuple."""
    gallery = {r.pid for r in records if r.split == "gallery"}
    for r in records:
        if r.split == "query" and r.pid not in gallery:
            problems.append(Problem(r.files[0], f"query id {r.pid} has no tuple in the gallery"))


def check_shared_ids(records: list[TupleRecord], allow: bool, problems: list[Problem]) -> None:
    """Train ids must not appear in query / gallery (no release does this); one problem per id.

    With ``allow`` the overlap is accepted with a warning (test scores then
    include ids seen in training and are not comparable with the papers').
    """
    train = {r.pid for r in records if r.split == "train"}
    first_test = {}
    for r in records:
        if r.split != "train" and r.pid in train:
            first_test.setdefault(r.pid, r)
    if not first_test:
        return
    if allow:
        log.warning("%d id(s) are both train and query/gallery ids (first: %s); accepted because "
                    "of --allow-shared-ids: test scores include ids seen in training",
                    len(first_test), sorted(first_test)[:5])
        return
    for pid in sorted(first_test):
        problems.append(Problem(first_test[pid].files[0], f"id {pid} is also a train id; train "
                                "and query/gallery ids must differ (or pass --allow-shared-ids)"))


def raise_problems(problems: list[Problem], layout: str, root: Path) -> None:
    """One UserError listing up to MAX_LISTED_PROBLEMS problems and the total count."""
    if not problems:
        return
    shown = "\n".join(f"  {p}" for p in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise UserError(f"{layout} dataset at {root}: {len(problems)} problem(s), nothing written "
                    f"(paths relative to that folder):\n{shown}{tail}\n"
                    "Fix or remove the offending files and run `msreid ingest` again.")


def fingerprint(loaded: dict[str, LoadedFile], sidecar: bytes | None) -> str:
    """sha256 over the sorted relative file names and their bytes, then the sidecar."""
    h = hashlib.sha256()
    for rel in sorted(loaded):
        data = loaded[rel].data
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    if sidecar is not None:
        h.update(CHALLENGES_FILE.encode() + b"\0" + sidecar)
    return h.hexdigest()


def build_table(spec: LayoutSpec, rows: list[tuple[TupleRecord, list]], tags: dict[str, str],
                loaded: dict[str, LoadedFile]) -> pa.Table:
    """Manifest rows (sorted by split, then first file) as a table of MANIFEST_SCHEMA."""
    order = {s: i for i, s in enumerate(SPLITS)}
    rows = sorted(rows, key=lambda rb: (order[rb[0].split], rb[0].files))
    train_ids = sorted({r.pid for r, _ in rows if r.split == "train"})
    label_of = {pid: i for i, pid in enumerate(train_ids)}
    cols: dict[str, list] = {
        "split": [r.split for r, _ in rows],
        "pid": [r.pid for r, _ in rows],
        "label": [label_of[r.pid] if r.split == "train" else None for r, _ in rows],
        "camera": [r.camera for r, _ in rows],
        "scene": [r.scene for r, _ in rows],
        "challenge": [tags.get(r.files[0]) for r, _ in rows],
        "files": [list(r.files) for r, _ in rows],
        "blobs": [[loaded[f].data for f in r.files] for r, _ in rows],
    }
    for s in SPECTRA:
        if s in spec.spectra:
            i = spec.spectra.index(s)
            src = 0 if spec.concatenated else i
            cols[f"{s}_src"] = [src] * len(rows)
            cols[f"{s}_box"] = [list(boxes[i]) for _, boxes in rows]
        else:
            cols[f"{s}_src"] = [None] * len(rows)
            cols[f"{s}_box"] = [None] * len(rows)
    return pa.Table.from_pydict(cols, schema=MANIFEST_SCHEMA)


def plan_parts(row_bytes: float) -> tuple[int, int]:
    """``(rows per row group, rows per part file)`` for rows of ``row_bytes`` on average."""
    rows_per_group = max(1, int(TARGET_ROW_GROUP_BYTES // max(1.0, row_bytes)))
    groups_per_file = max(1, TARGET_FILE_BYTES // TARGET_ROW_GROUP_BYTES)
    return rows_per_group, rows_per_group * groups_per_file


def write_parts(table: pa.Table, directory: Path, metadata: dict[str, str]) -> int:
    """Write ``part-NNNNN.parquet`` files with row groups of ~TARGET_ROW_GROUP_BYTES; returns #parts."""
    rows_per_group, rows_per_file = plan_parts(table.nbytes / max(1, table.num_rows))
    schema = MANIFEST_SCHEMA.with_metadata(metadata)
    n_parts = max(1, -(-table.num_rows // rows_per_file))
    for part in range(n_parts):
        chunk = table.slice(part * rows_per_file, rows_per_file).replace_schema_metadata(metadata)
        pq.write_table(chunk, directory / f"part-{part:05d}.parquet", row_group_size=rows_per_group,
                       compression=_compression(schema), use_dictionary=["split", "challenge"])
    return n_parts


def _compression(schema: pa.Schema) -> dict[str, str]:
    """Codec per Parquet leaf column: JPEG bytes do not compress, so store blobs plain."""
    leaves = {}
    for f in schema:
        leaf = f"{f.name}.list.element" if pa.types.is_list(f.type) or \
            pa.types.is_fixed_size_list(f.type) else f.name
        leaves[leaf] = "NONE" if f.name == "blobs" else "ZSTD"
    return leaves


def _local_path(path: str | Path, option: str) -> Path:
    """Absolute local path from a path or ``file://`` URI; other URIs are refused."""
    text = str(path)
    if text.startswith("file://"):
        from urllib.parse import unquote, urlparse

        text = unquote(urlparse(text).path)
    elif "://" in text:
        raise UserError(f"{option} {text}: ingest reads and writes local directories only; "
                        "ingest locally, then copy the manifest directory to object storage")
    return Path(text).expanduser().absolute()


def _check_not_overlapping(out: Path, root: Path) -> None:
    """``--out`` must lie outside the dataset: not ``--root``, not above it, not inside it.

    Compared after resolving symlinks. Equal or above: replacing ``--out``
    would delete the released files. Inside: the manifest would be mixed into
    the release (a later scan could see it, the release is no longer as
    published), so it is refused too.
    """
    out_real, root_real = out.resolve(), root.resolve()
    where = f"--out {out}" + (f" (= {out_real})" if out_real != out else "")
    if out_real == root_real:
        raise UserError(f"{where} is the dataset folder --root; the manifest must go outside "
                        f"the dataset, e.g. --out {out_real.parent / (out_real.name + '-manifest')}; "
                        "nothing was changed")
    if root_real.is_relative_to(out_real):
        raise UserError(f"{where} contains the dataset --root {root}; the manifest must go "
                        "outside the dataset (a folder that is not a parent of --root); "
                        "nothing was changed")
    if out_real.is_relative_to(root_real):
        raise UserError(f"{where} is inside the dataset --root {root}; write the manifest "
                        "outside the dataset so the released files stay as published; "
                        "nothing was changed")


def _check_destination(out: Path, overwrite: bool) -> None:
    """``--out`` is new, empty, or (with ``--overwrite``) a previous manifest and nothing else."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; choose another path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    foreign = foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"--out {out}: holds files that are not a msreid manifest ({shown}); "
                        "ingest only replaces a previous manifest (part-NNNNN.parquet files "
                        "written by `msreid ingest`); choose a new or empty folder")
    if not overwrite:
        raise UserError(f"--out {out}: holds a manifest already; "
                        "pass --overwrite to replace it or choose another path")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Replace ``out`` by ``tmp`` (same filesystem); only a previous manifest is ever removed."""
    _check_destination(out, overwrite)  # again: the folder may have changed while we read
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "previous")
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)  # an empty directory is replaced atomically on POSIX


def validate(layout: str, root: Path, piece_size: tuple[int, int] | str | None = None,
             allow_shared_ids: bool = False):
    """Scan, read and decode everything; raise one UserError listing every problem.

    Returns ``(spec, data_root, rows, tags, loaded, sidecar_bytes)`` where each
    row is ``(TupleRecord, [box per spectrum])``.
    """
    spec = layouts.layout_spec(layout)
    if not root.is_dir():
        raise UserError(f"--root {root}: not a directory; give the folder of the released dataset")
    data_root = layouts.find_dataset_root(root, spec)
    problems: list[Problem] = []
    records = layouts.scan(layout, data_root, problems)
    sidecar = find_sidecar(data_root)
    tags = read_challenges(sidecar, data_root, problems) if sidecar else {}
    check_challenges(tags, records, data_root, problems)
    loaded = load_files(data_root, sorted({f for r in records for f in r.files}))
    full = expected_size(spec, piece_size, loaded)
    _check_uniform_resize(spec, full, loaded, data_root)
    rows = []
    for record in records:
        boxes = crop_boxes(spec, record, loaded, full, problems)
        if boxes is not None:
            rows.append((record, boxes))
    # the same file appears twice for RGBNT201 (query + gallery): report it once
    problems = list(dict.fromkeys(problems))
    check_query_in_gallery(records, problems)
    check_shared_ids(records, allow_shared_ids, problems)
    raise_problems(problems, layout, data_root)
    return spec, data_root, rows, tags, loaded, (sidecar.read_bytes() if sidecar else None)


def ingest(layout: str, root: str | Path, out: str | Path, overwrite: bool = False,
           piece_size: tuple[int, int] | str | None = None,
           allow_shared_ids: bool = False) -> ManifestInfo:
    """Validate the dataset at ``root`` and write its manifest to the local directory ``out``.

    ``piece_size``: ``None`` = the released size (256x128 per spectrum),
    ``(width, height)``, or ``"auto"`` = the most common size in the dataset.
    ``allow_shared_ids``: accept ids that are in train and in query/gallery (warns).
    """
    root, out = _local_path(root, "--root"), _local_path(out, "--out")
    _check_not_overlapping(out, root)
    target = out.resolve()  # a symlinked --out: the manifest replaces the folder it points to
    _check_destination(target, overwrite)
    spec, _, rows, tags, loaded, sidecar = validate(layout, root, piece_size, allow_shared_ids)
    table = build_table(spec, rows, tags, loaded)
    metadata = {META_LAYOUT: layout, META_SPECTRA: ",".join(spec.spectra),
                META_FINGERPRINT: fingerprint(loaded, sidecar),
                META_SCHEMA_VERSION: SCHEMA_VERSION}
    advice = (f"{out} is unchanged and the partial manifest was removed; free space there or "
              "give an --out on a disk with room (`df -h` lists them)")
    # The parts hold the released JPEG bytes uncompressed: about the table's in-memory size.
    with disk_full_is_user_error(out, "the manifest", advice, needed=table.nbytes):
        _write_manifest(table, target, metadata, overwrite)
    return manifest_info(str(out))


def _write_manifest(table: pa.Table, target: Path, metadata: dict[str, str], overwrite: bool) -> None:
    """Parts and checksums into a temporary sibling of ``target``, renamed into place; the
    temporary folder is removed on any error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the manifest is a normal folder
    try:
        write_parts(table, tmp, metadata)
        write_checksums(tmp)
        _move_into_place(tmp, target, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", required=True, choices=sorted(layouts.LAYOUTS),
                        help="released format of the dataset (see docs/DATA.md)")
    parser.add_argument("--root", required=True,
                        help="dataset folder as released (with or without its rgbir/ level)")
    parser.add_argument("--out", required=True,
                        help="manifest directory to create (a Parquet dataset)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it holds a previous manifest (and nothing else)")
    parser.add_argument("--piece-size", default="release", metavar="WxH",
                        help="size of ONE spectrum piece for rgbn300/rgbnt100: 'release' "
                        "(256x128, the published data), 'auto' (most common size; for "
                        "`msreid synth` output at other sizes) or e.g. 128x64")
    parser.add_argument("--allow-shared-ids", action="store_true",
                        help="accept ids present in train AND query/gallery (a warning instead "
                        "of an error; no release does this)")


def main(args: argparse.Namespace) -> int:
    from msreid.data.inspect import format_split_table, split_summary
    from msreid.data.schema import read_manifest

    info = ingest(args.layout, args.root, args.out, overwrite=args.overwrite,
                  piece_size=parse_piece_size(args.piece_size),
                  allow_shared_ids=args.allow_shared_ids)
    table = read_manifest(info.path, columns=["split", "pid", "camera", "challenge"])
    print(f"wrote {info.num_rows} tuples ({info.layout}: {', '.join(info.spectra)}) to {info.path}")
    print(format_split_table(split_summary(table)))
    print(f"fingerprint {info.fingerprint}")
    return 0
