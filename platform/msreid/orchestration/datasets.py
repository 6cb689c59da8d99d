"""Which manifest feeds which dataset: ``--data`` arguments and the synthetic default."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, fields
from pathlib import Path

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


def synthetic_manifest(spec_kwargs: dict | None = None, root: Path | None = None) -> str:
    """The synthetic RGBNT100-shaped manifest, generated + ingested on first use, then cached.

    Cached under ``<cache>/synth-<layout>-<spec hash>/manifest``; a spec change
    makes a new cache entry.
    """
    spec = synth_spec(spec_kwargs)
    tag = json.dumps(asdict(spec), sort_keys=True)
    base = (root or cache_dir()) / f"synth-{SMOKE_LAYOUT}-{hashlib.sha1(tag.encode()).hexdigest()[:8]}"
    manifest = base / "manifest"
    if (base / "manifest.done").is_file():
        return str(manifest)
    print(f"Generating the synthetic {SMOKE_LAYOUT} benchmark ({spec.variant} variant) into {base} "
          "(first use only) ...", flush=True)
    data_root = generate(SMOKE_LAYOUT, base / "released", spec, overwrite=True)
    # Pieces are smaller than the released 256x128: take the size from the files.
    ingest(SMOKE_LAYOUT, data_root, manifest, overwrite=True, piece_size="auto")
    (base / "manifest.done").write_text(tag + "\n")
    return str(manifest)
