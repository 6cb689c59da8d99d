"""Which manifest feeds which dataset: ``--data`` arguments and the synthetic default."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

from msreid import storage
from msreid.data.ingest import ingest
from msreid.data.schema import manifest_info
from msreid.data.synth import SynthSpec, generate
from msreid.errors import UserError
from msreid.orchestration.paths import cache_dir

log = logging.getLogger(__name__)

SMOKE_LAYOUT = "rgbnt100"


def resolve_data_args(items: list[str]) -> dict[str, str]:
    """``["rgbnt100=s3://b/m", "/data/rgbn300_manifest"]`` -> ``{dataset: manifest URI}``.

    Without ``name=``, the dataset is the manifest's layout (file metadata).
    """
    out: dict[str, str] = {}
    for item in items:
        name, eq, uri = item.partition("=")
        if not eq or "://" in name:
            name, uri = "", item
        try:
            info = manifest_info(uri)
        except UserError as exc:
            raise UserError(f"--data {item}: {exc}") from None
        dataset = name or info.layout
        if dataset in out:
            raise UserError(f"--data: two manifests for dataset {dataset!r} ({out[dataset]}, {uri})")
        out[dataset] = uri
    return out


def synth_spec(spec_kwargs: dict | None = None):
    """``SynthSpec(**spec_kwargs)``, checked: unknown fields or bad values are a ``UserError``."""
    allowed = [f.name for f in fields(SynthSpec)]
    unknown = sorted(set(spec_kwargs or {}) - set(allowed))
    if unknown:
        raise UserError(f"synthetic data options {unknown} are not SynthSpec fields; "
                        f"use {', '.join(allowed)} (suite `synth:` or --synth)")
    spec = SynthSpec(**(spec_kwargs or {}))
    spec.validate()
    return spec


def synthetic_manifest(spec_kwargs: dict | None = None, root: str | Path | None = None) -> str:
    """The synthetic RGBNT100-shaped manifest, generated + ingested on first use, then cached.

    Cached under ``<cache>/synth-<layout>-<spec hash>/manifest``; a spec change
    makes a new cache entry. The cache may be object storage (``s3://...``): the
    data is then generated in a local temporary directory and uploaded, the
    manifest's part files and ``_SHA256SUMS`` first, the ``manifest.done`` marker
    last, so every node reads (and verifies) the one copy in the bucket.
    """
    spec = synth_spec(spec_kwargs)
    tag = json.dumps(asdict(spec), sort_keys=True)
    base = storage.join(root or cache_dir(),
                        f"synth-{SMOKE_LAYOUT}-{hashlib.sha1(tag.encode()).hexdigest()[:8]}")
    manifest, done = storage.join(base, "manifest"), storage.join(base, "manifest.done")
    if storage.exists(done):
        return manifest
    print(f"Generating the synthetic {SMOKE_LAYOUT} benchmark ({spec.variant} variant) into "
          f"{storage.redact(base)} (first use only) ...", flush=True)
    if not storage.is_uri(base):
        _generate(spec, Path(base), Path(manifest))
    else:
        with tempfile.TemporaryDirectory(prefix="msreid-synth-") as tmp:
            _generate(spec, Path(tmp), Path(tmp, "manifest"))
            storage.upload_dir(Path(tmp, "manifest"), manifest)
    storage.write_text(done, tag + "\n")
    return manifest


def _generate(spec, work: Path, manifest: Path) -> None:
    """Released-format files under ``work/released``, ingested into ``manifest``."""
    data_root = generate(SMOKE_LAYOUT, work / "released", spec, overwrite=True)
    # Pieces are smaller than the released 256x128: take the size from the files.
    ingest(SMOKE_LAYOUT, data_root, manifest, overwrite=True, piece_size="auto")
