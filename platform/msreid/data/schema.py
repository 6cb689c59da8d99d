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

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from msreid import SPECTRA
from msreid.errors import UserError

SCHEMA_VERSION = "1"
"""Bumped whenever MANIFEST_SCHEMA changes; readers refuse other versions."""

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
    try:
        return pafs.FileSystem.from_uri(str(path_or_uri))
    except (pa.ArrowInvalid, ValueError):
        # Plain relative paths are not URIs: resolve them locally.
        import os

        return pafs.LocalFileSystem(), os.path.abspath(str(path_or_uri))


def manifest_files(path_or_uri: str, filesystem: pafs.FileSystem | None = None) -> list[str]:
    """Sorted part files of a manifest (a directory of ``*.parquet``, or one file).

    Paths are returned in the filesystem's own form (no scheme), to be used
    with the same filesystem; for local manifests they are plain local paths.
    """
    fs, path = (filesystem, str(path_or_uri)) if filesystem else resolve_filesystem(path_or_uri)
    info = fs.get_file_info(path)
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
    if meta[META_SCHEMA_VERSION] != SCHEMA_VERSION:
        raise UserError(f"manifest file {where}: schema version {meta[META_SCHEMA_VERSION]}, "
                        f"this msreid reads version {SCHEMA_VERSION}; re-run `msreid ingest`")


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
                  filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """Read a manifest (all columns, or ``columns``) after validating every part's schema.

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
    tables = [pq.read_table(f, filesystem=fs, columns=columns) for f in files]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return table.replace_schema_metadata(schemas[0].metadata)


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
    version). Anything else (other names, sub-folders, symlinks, Parquet files
    of other tools, unreadable files) is foreign. ``[]`` means the directory
    is empty or a manifest, so ``msreid ingest --overwrite`` may replace it.
    """
    foreign = []
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
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
