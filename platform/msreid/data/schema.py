"""The manifest schema (defined once) and validated reading of manifests.

A manifest is a Parquet *dataset*: a directory of ``part-NNNNN.parquet`` files
with one row per spectral tuple (see ``docs/ARCHITECTURE.md``, "The
manifest"). Every reader goes through :func:`read_manifest`, which checks each
part file's schema against :data:`MANIFEST_SCHEMA` before reading rows, so a
stale or foreign file fails with a message naming the file and the column.

Local paths and any pyarrow filesystem URI (``file://``, ``s3://``,
``gs://``) are accepted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from msreid import SPECTRA, storage
from msreid.errors import UserError

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"
"""Bumped whenever the manifest format changes; readers refuse versions not in READABLE_VERSIONS.

2: same columns as 1, plus the checksum file CHECKSUM_FILE beside the parts.
"""
READABLE_VERSIONS = ("1", "2")
CHECKSUM_FILE = "_SHA256SUMS"
"""``sha256sum`` format (``<hex>  <part file>``), written at ingest; ``sha256sum -c`` reads it.

The leading underscore keeps it out of Parquet dataset discovery (pyarrow skips
``_*`` files); msreid passes explicit part files to Ray Data anyway.
"""
HASH_CHUNK = 8 << 20  # bytes per read while hashing
HASH_THREADS = 4  # hashlib releases the GIL on large buffers: files hash in parallel

META_LAYOUT = "msreid.layout"
META_SPECTRA = "msreid.spectra"
META_FINGERPRINT = "msreid.fingerprint"
META_SCHEMA_VERSION = "msreid.schema_version"
META_KEYS = (META_LAYOUT, META_SPECTRA, META_FINGERPRINT, META_SCHEMA_VERSION)

PART_NAME = re.compile(r"^part-\d{5}\.parquet$")
"""Name of a manifest part file as written by ``msreid ingest``."""

SPLITS = ("train", "query", "gallery")
"""Values of the ``split`` column, in the order rows are written."""

BOX_TYPE = pa.list_(pa.int16())
"""Crop box ``(left, top, right, bottom)`` in pixels of the decoded blob (always 4 values).

A variable-length list, not ``fixed_size_list<int16, 4>``: pyarrow (<= 25 at
least) cannot read back a *null* fixed-size list from Parquet
(apache/arrow#35692), and boxes are null for absent spectra.
"""


def _spectrum_fields() -> list[pa.Field]:
    fields = []
    for s in SPECTRA:
        fields.append(pa.field(f"{s}_src", pa.int8(), nullable=True))
        fields.append(pa.field(f"{s}_box", BOX_TYPE, nullable=True))
    return fields


MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("split", pa.string(), nullable=False),
        pa.field("pid", pa.int32(), nullable=False),
        pa.field("label", pa.int32(), nullable=True),
        pa.field("camera", pa.int16(), nullable=False),
        pa.field("scene", pa.int16(), nullable=True),
        pa.field("challenge", pa.string(), nullable=True),
        pa.field("files", pa.list_(pa.string()), nullable=False),
        pa.field("blobs", pa.list_(pa.binary()), nullable=False),
        *_spectrum_fields(),
    ]
)
"""One row per spectral tuple; the only definition of the manifest's columns."""


@dataclass(frozen=True)
class ManifestInfo:
    """What a manifest holds, read from file metadata only (no rows)."""

    layout: str
    spectra: tuple[str, ...]
    fingerprint: str
    num_rows: int
    path: str


def resolve_filesystem(path_or_uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI (``file://``, ``s3://``, ``gs://``)."""
    return storage.filesystem(path_or_uri)


def manifest_files(path_or_uri: str, filesystem: pafs.FileSystem | None = None) -> list[str]:
    """Sorted part files of a manifest (a directory of ``*.parquet``, or one file).

    Paths are returned in the filesystem's own form (no scheme), to be used
    with the same filesystem; for local manifests they are plain local paths.
    """
    fs, path = (filesystem, str(path_or_uri)) if filesystem else resolve_filesystem(path_or_uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:  # object storage: no permission, unreachable endpoint, ...
        raise UserError(f"manifest {storage.redact(path_or_uri)}: {storage.describe(exc)}") from None
    if info.type == pafs.FileType.File:
        return [path]
    if info.type != pafs.FileType.Directory:
        raise UserError(f"manifest {path_or_uri}: not found; give the --out directory of "
                        "`msreid ingest`")
    selector = pafs.FileSelector(path, recursive=False)
    files = sorted(i.path for i in fs.get_file_info(selector)
                   if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not files:
        raise UserError(f"manifest {path_or_uri}: directory holds no .parquet files; "
                        "run `msreid ingest` to create it")
    return files


def _check_schema(schema: pa.Schema, where: str) -> None:
    """Raise UserError naming ``where`` and the first column that differs from MANIFEST_SCHEMA."""
    for expected in MANIFEST_SCHEMA:
        idx = schema.get_field_index(expected.name)
        if idx < 0:
            raise UserError(f"manifest file {where}: column '{expected.name}' is missing; "
                            "re-run `msreid ingest` with this version of msreid")
        got = schema.field(idx)
        if not got.type.equals(expected.type) or got.nullable != expected.nullable:
            raise UserError(
                f"manifest file {where}: column '{expected.name}' is {got.type}"
                f"{'' if got.nullable else ' not null'}, expected {expected.type}"
                f"{'' if expected.nullable else ' not null'}; re-run `msreid ingest`")
    extra = [n for n in schema.names if MANIFEST_SCHEMA.get_field_index(n) < 0]
    if extra:
        raise UserError(f"manifest file {where}: unexpected column(s) {extra}; "
                        "re-run `msreid ingest`")
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise UserError(f"manifest file {where}: metadata key(s) {missing} missing; "
                        "it was not written by `msreid ingest`")
    if meta[META_SCHEMA_VERSION] not in READABLE_VERSIONS:
        raise UserError(f"manifest file {where}: schema version {meta[META_SCHEMA_VERSION]}, "
                        f"this msreid reads versions {', '.join(READABLE_VERSIONS)}; "
                        "re-run `msreid ingest`")


def _read_schemas(fs: pafs.FileSystem, files: list[str]) -> list[pa.Schema]:
    """Footer schema of each part file, validated (reads no row data)."""
    schemas = []
    for f in files:
        try:
            schema = pq.read_schema(f, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"manifest file {f}: not a readable Parquet file ({exc})") from exc
        _check_schema(schema, f)
        schemas.append(schema)
    fingerprints = {s.metadata[META_FINGERPRINT.encode()] for s in schemas}
    if len(fingerprints) > 1:
        raise UserError(f"manifest {files[0]}..: part files come from different ingests "
                        "(fingerprints differ); re-run `msreid ingest --overwrite`")
    return schemas


def read_manifest(path_or_uri: str, columns: list[str] | None = None,
                  filesystem: pafs.FileSystem | None = None,
                  rows: Sequence[int] | None = None) -> pa.Table:
    """Read a manifest (all columns, or ``columns``) after validating every part's schema.

    ``rows``: only these global row indices (0-based over the sorted part
    files), in the given order; only the row groups holding them are read.
    The table's schema carries the manifest's file-level metadata.
    """
    fs, path = (filesystem, str(path_or_uri)) if filesystem else resolve_filesystem(path_or_uri)
    files = manifest_files(path, filesystem=fs)
    schemas = _read_schemas(fs, files)
    if columns is not None:
        unknown = [c for c in columns if c not in MANIFEST_SCHEMA.names]
        if unknown:
            raise UserError(f"manifest {path_or_uri}: unknown column(s) {unknown}; "
                            f"columns are {MANIFEST_SCHEMA.names}")
    if rows is None:
        tables = [pq.read_table(f, filesystem=fs, columns=columns) for f in files]
    else:
        tables = _read_rows(fs, files, columns, rows)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    table = table.replace_schema_metadata(schemas[0].metadata)
    if rows is not None:  # the distinct rows were read in ascending order: back to the asked order
        order = {r: i for i, r in enumerate(sorted(set(rows)))}
        table = table.take(pa.array([order[int(r)] for r in rows], type=pa.int64()))
    return table


def _read_rows(fs: pafs.FileSystem, files: list[str], columns: list[str] | None,
               rows: Sequence[int]) -> list[pa.Table]:
    """The distinct global ``rows`` in ascending order, reading only the row groups holding them."""
    wanted, pieces, offset = sorted(set(int(r) for r in rows)), [], 0
    total = sum(pq.ParquetFile(f, filesystem=fs).metadata.num_rows for f in files)
    if wanted and not 0 <= wanted[0] <= wanted[-1] < total:
        bad = wanted[0] if wanted[0] < 0 else wanted[-1]
        raise UserError(f"manifest {files[0]}..: row {bad} is out of range (0..{total - 1})")
    for f in files:
        pf = pq.ParquetFile(f, filesystem=fs)
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            local = [r - offset for r in wanted if offset <= r < offset + n]
            if local:
                pieces.append(pf.read_row_group(g, columns=columns).take(local))
            offset += n
    if not pieces:
        schema = MANIFEST_SCHEMA if columns is None else pa.schema([MANIFEST_SCHEMA.field(c)
                                                                     for c in columns])
        pieces.append(schema.empty_table())
    return pieces


def manifest_info(path_or_uri: str, filesystem: pafs.FileSystem | None = None) -> ManifestInfo:
    """Layout, spectra, fingerprint and row count of a manifest, from metadata only."""
    fs, path = (filesystem, str(path_or_uri)) if filesystem else resolve_filesystem(path_or_uri)
    files = manifest_files(path, filesystem=fs)
    schemas = _read_schemas(fs, files)
    num_rows = sum(pq.ParquetFile(f, filesystem=fs).metadata.num_rows for f in files)
    meta = {k.decode(): v.decode() for k, v in schemas[0].metadata.items()}
    spectra = tuple(s for s in meta[META_SPECTRA].split(",") if s)
    return ManifestInfo(layout=meta[META_LAYOUT], spectra=spectra,
                        fingerprint=meta[META_FINGERPRINT], num_rows=num_rows,
                        path=str(path_or_uri))


def foreign_entries(directory: str | Path) -> list[str]:
    """Entries of a local directory that are NOT part of a msreid manifest, sorted.

    A manifest directory holds only regular files named ``part-NNNNN.parquet``
    whose Parquet footer carries the ``msreid.*`` metadata keys (any schema
    version), and the checksum file ``_SHA256SUMS``. Anything else (other names,
    sub-folders, symlinks, Parquet files of other tools, unreadable files) is foreign.
    ``[]`` means the directory is empty or a manifest, so ``msreid ingest --overwrite``
    may replace it.
    """
    foreign = []
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name == CHECKSUM_FILE and entry.is_file(follow_symlinks=False):
                continue
            if not (PART_NAME.match(entry.name) and entry.is_file(follow_symlinks=False)):
                foreign.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
                continue
            try:
                meta = pq.read_schema(entry.path).metadata or {}
            except (pa.ArrowInvalid, OSError):
                foreign.append(f"{entry.name} (not a readable Parquet file)")
                continue
            if not all(k.encode() in meta for k in (META_LAYOUT, META_FINGERPRINT, META_SCHEMA_VERSION)):
                foreign.append(f"{entry.name} (no msreid metadata)")
    return foreign


def _sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    """Write CHECKSUM_FILE for every ``*.parquet`` in a local ``directory`` (at ingest)."""
    fs = pafs.LocalFileSystem()
    parts = sorted(p.name for p in directory.glob("*.parquet"))
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        digests = list(pool.map(lambda n: _sha256(fs, str(directory / n)), parts))
    (directory / CHECKSUM_FILE).write_text("".join(f"{d}  {n}\n" for d, n in zip(digests, parts)))


def _read_checksums(fs: pafs.FileSystem, sums_path: str) -> dict[str, str]:
    try:
        with fs.open_input_stream(sums_path) as stream:
            text = stream.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"manifest checksum file {sums_path} cannot be read ({exc}); the "
                        "manifest is incomplete: re-run `msreid ingest --overwrite`") from None
    sums = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise UserError(f"manifest checksum file {sums_path}: bad line {line[:80]!r}; "
                            "re-run `msreid ingest --overwrite`")
        sums[name] = digest
    return sums


def verify_manifest(path_or_uri: str, filesystem: pafs.FileSystem | None = None) -> int:
    """Check every part file against the checksums recorded at ingest; returns #files checked.

    One UserError naming every corrupt, missing or unlisted part file. A
    version-1 manifest (written before checksums) is read unverified with a
    warning. Reads every byte once: docs/PERFORMANCE.md has the cost.
    """
    fs, path = (filesystem, str(path_or_uri)) if filesystem else resolve_filesystem(path_or_uri)
    files = manifest_files(path, filesystem=fs)
    schemas = _read_schemas(fs, files)
    if schemas[0].metadata[META_SCHEMA_VERSION.encode()] == b"1":
        log.warning("manifest %s was written before msreid recorded checksums: its integrity "
                    "cannot be verified; re-run `msreid ingest --overwrite` to add them", path_or_uri)
        return 0
    folder = posixpath.dirname(files[0])
    sums = _read_checksums(fs, posixpath.join(folder, CHECKSUM_FILE))
    names = [posixpath.basename(f) for f in files]
    bad = [f"{n}: not listed in {CHECKSUM_FILE} (not from this ingest)" for n in names if n not in sums]
    if files != [path]:  # a directory: every listed part must be there (one file: just it)
        bad += [f"{n}: listed in {CHECKSUM_FILE} but missing" for n in sorted(set(sums) - set(names))]
    listed = [f for f, n in zip(files, names) if n in sums]
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        digests = list(pool.map(lambda f: _sha256(fs, f), listed))
    bad += [f"{posixpath.basename(f)}: content differs from the checksum recorded at ingest "
            "(corrupted)" for f, d in zip(listed, digests) if d != sums[posixpath.basename(f)]]
    if bad:
        raise UserError(f"manifest {path_or_uri}: {len(bad)} damaged part file(s):\n  "
                        + "\n  ".join(bad) + "\nre-run `msreid ingest --overwrite` from the "
                        "released files (or copy the manifest again)")
    return len(listed)
