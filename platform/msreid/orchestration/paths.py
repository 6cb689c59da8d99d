"""Finding grids and presets, where the benchmark's caches and results go.

``ray submit`` copies only the script, so nothing here may depend on the
script's location. Grids and presets are looked up, in order:
1. the path as given, if it is a file;
2. ``$MSREID_PROJECT_DIR/experiments/{grids,presets}`` (set by cluster.yaml);
3. the project checkout the installed ``msreid`` package lives in (an
   editable install: ``<checkout>/platform/msreid``);
4. ``./experiments/{grids,presets}`` in the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import msreid
from msreid import storage
from msreid.errors import UserError


def project_dirs() -> list[Path]:
    """Candidate project roots, most specific first (see the module docstring)."""
    dirs = []
    if os.environ.get("MSREID_PROJECT_DIR"):
        dirs.append(Path(os.environ["MSREID_PROJECT_DIR"]).expanduser())
    dirs.append(Path(msreid.__file__).resolve().parents[2])
    dirs.append(Path.cwd())
    return [d for d in dirs if (d / "experiments").is_dir()]


def find_experiment_file(name: str, kind: str) -> Path:
    """``name`` (a path, or a bare name like ``smoke``) of a ``kind`` ("grids" / "presets") file."""
    given = Path(name).expanduser()
    if given.is_file():
        return given.resolve()
    filename = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    tried = []
    for root in project_dirs():
        candidate = root / "experiments" / kind / filename
        tried.append(str(candidate))
        if candidate.is_file():
            return candidate.resolve()
    raise UserError(f"{kind[:-1]} {name!r} not found (tried {', '.join(tried) or 'no project dir'}); "
                    "give a path, or set MSREID_PROJECT_DIR to the msreid checkout")


def cache_dir() -> str:
    """Where generated data is cached: ``$MSREID_CACHE`` (a directory or ``s3://`` URI) or
    ``~/.cache/msreid``."""
    root = os.environ.get("MSREID_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "msreid")
    return root if storage.is_uri(root) else str(Path(root).expanduser().absolute())


def default_storage_path() -> str:
    """Ray results: ``$MSREID_STORAGE_PATH`` (cluster: S3/NFS) or ``./ray_results`` (absolute)."""
    return os.environ.get("MSREID_STORAGE_PATH") or str(Path("ray_results").absolute())
