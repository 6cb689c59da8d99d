"""Checkpoints: written atomically, read back without unpickling arbitrary code.

A checkpoint directory holds

- ``model.pt``: the model's state dict at the end of the checkpoint's epoch;
- ``best_model.pt``: the state dict of the best epoch by validation mAP so far
  (the last epoch's when validation is off);
- ``train_state.pt``: optimiser, scheduler, grad scaler, epoch, RNG states
  (torch, numpy, python: stored as tensors / lists) and the best metric;
- ``config.json`` (flat ``config_to_dict``), ``meta.json`` (epoch, spectra,
  num_classes, image size, best epoch), ``history.json`` (per-epoch metrics);
- in the final checkpoint also ``final_metrics.json`` and the artifacts
  ``cmc.csv``, ``missing_modality.csv``, ``per_challenge.csv``, ``ranking.json``.

Every ``.pt`` file loads with ``torch.load(..., weights_only=True)``. ``checksums.json``
holds the SHA-256 of every other file; ``newest_intact`` verifies them before a resume and
falls back to the newest checkpoint that is whole (a truncated or zeroed ``model.pt`` would
otherwise fail inside torch's unpickler, on every retry).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from msreid.config import ModelConfig, config_from_dict
from msreid.errors import UserError, disk_full_is_user_error
from msreid.models import MultiStreamNet, build_model

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
BEST_MODEL_FILE = "best_model.pt"
STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
HISTORY_FILE = "history.json"
FINAL_METRICS_FILE = "final_metrics.json"
CHECKSUM_FILE = "checksums.json"


def rng_state() -> dict[str, Any]:
    """torch, numpy and python RNG states in weights_only-loadable form."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": list(state), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def write_checkpoint(directory: str | Path, files: dict[str, Any],
                     extra: Callable[[Path], Any] | None = None) -> Path:
    """Write ``{file name: tensors-dict | json-able}`` into ``directory`` atomically.

    Files go to a temporary sibling first, which is renamed to ``directory``
    at the end: a crash leaves either no directory or a complete one. An
    existing ``directory`` (the same epoch written again) is renamed aside
    first and deleted after the swap, so it is never lost to a failed write.
    ``.pt`` names are saved with ``torch.save``, others as JSON; ``extra(tmp)``
    may add more files before the rename. A full disk is one ``UserError``
    naming the directory and the size of the files (the temporary one removed).
    """
    directory = Path(directory)
    advice = ("the partial checkpoint was removed and earlier checkpoints are kept; free space "
              "there or put the runs on a disk with room (msreid train --storage, "
              "full_benchmark.py --storage-path), then run the same command again to resume")
    with disk_full_is_user_error(directory.parent, f"checkpoint {directory.name}", advice,
                                 needed=payload_bytes(files)):
        _write_checkpoint(directory, files, extra)
    return directory


def payload_bytes(value: Any) -> int:
    """Bytes of the tensors, strings and bytes in a (nested) checkpoint payload; about the size on
    disk (torch.save adds a little, JSON of numbers is not counted)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, dict):
        return sum(payload_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(payload_bytes(v) for v in value)
    return 0


def _write_checkpoint(directory: Path, files: dict[str, Any],
                      extra: Callable[[Path], Any] | None) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        for name, value in files.items():
            if name.endswith(".pt"):  # through a Python file: torch's own writer reports a
                with open(tmp / name, "wb") as f:  # full disk as a bare "iostream error"
                    torch.save(value, f)
            elif isinstance(value, (str, bytes)):
                (tmp / name).write_bytes(value.encode() if isinstance(value, str) else value)
            else:
                (tmp / name).write_text(json.dumps(value, indent=1, default=float) + "\n")
        if extra is not None:
            extra(tmp)
        (tmp / CHECKSUM_FILE).write_text(json.dumps(file_checksums(tmp), indent=1) + "\n")
        old = None
        if directory.exists():
            old = directory.parent / f"{tmp.name}.old"
            os.rename(directory, old)
        os.rename(tmp, directory)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


LOCAL_PREFIX = "checkpoint_epoch_"


def local_checkpoints(run_dir: str | Path) -> list[Path]:
    """Local-mode checkpoints of a run directory, oldest first (``final`` last)."""
    found = []
    for p in Path(run_dir).glob(LOCAL_PREFIX + "*"):
        tag = p.name[len(LOCAL_PREFIX):]
        if tag.isdigit() or tag == "final":
            found.append((float("inf") if tag == "final" else int(tag), p))
    return [p for _, p in sorted(found)]


def prune_local_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest local-mode checkpoints (Ray does this otherwise)."""
    for p in local_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(directory: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` of the files directly in ``directory`` (the checksum file aside)."""
    return {p.name: _sha256(p) for p in sorted(Path(directory).iterdir())
            if p.is_file() and p.name != CHECKSUM_FILE}


def checkpoint_problem(directory: str | Path) -> str | None:
    """Why the checkpoint in ``directory`` cannot be used, or None when it is whole.

    Checks every recorded checksum; a checkpoint written before checksums existed
    passes when each of its ``.pt`` files loads.
    """
    directory = Path(directory)
    try:
        recorded = load_json(directory, CHECKSUM_FILE)
    except (ValueError, OSError):  # e.g. emptied by a copy that ran out of disk space
        return f"{CHECKSUM_FILE} is unreadable (cut short or damaged)"
    if recorded is None:
        for path in sorted(directory.glob("*.pt")):
            try:
                load_pt(directory, path.name)
            except Exception as exc:  # torch raises several types for a damaged file
                return f"{path.name} does not load ({type(exc).__name__}: {str(exc)[:200]})"
        return None if (directory / META_FILE).is_file() else f"{META_FILE} is missing"
    for name, digest in recorded.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its recorded SHA-256 (damaged or changed)"
    return None


def newest_intact(checkpoints: list[Path]) -> Path | None:
    """The newest of ``checkpoints`` (oldest first) that is whole; warns naming each bad one.

    None when there are none; UserError naming every path when none is whole.
    """
    bad = []
    for directory in reversed(checkpoints):
        problem = checkpoint_problem(directory)
        if problem is None:
            return directory
        log.warning("checkpoint %s is damaged (%s): trying the previous one", directory, problem)
        bad.append(f"{directory}: {problem}")
    if bad:
        raise UserError(f"no checkpoint of this run can be resumed from ({'; '.join(bad)}); "
                        "delete the run's directory to train it from the start")
    return None


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every checkpoint directory in ``run_dir`` (local mode's and Ray's), oldest epoch first."""
    found = []
    for p in Path(run_dir).glob("checkpoint_*"):
        meta = p / META_FILE
        if p.is_dir() and not p.name.startswith("."):
            try:
                epoch = int(json.loads(meta.read_text())["epoch"]) if meta.is_file() else -1
            except (ValueError, KeyError, TypeError):
                epoch = -1
            found.append(((p / FINAL_METRICS_FILE).is_file(), epoch, p.name, p))
    return [p for *_, p in sorted(found)]


def load_pt(directory: str | Path, name: str) -> Any:
    """``torch.load(directory / name, weights_only=True)`` on the CPU."""
    return torch.load(Path(directory) / name, map_location="cpu", weights_only=True)


def load_json(directory: str | Path, name: str, default: Any = None) -> Any:
    path = Path(directory) / name
    return json.loads(path.read_text()) if path.exists() else default


def model_from_config(m: ModelConfig, spectra, num_classes: int, size: tuple[int, int], *,
                      pretrained: bool) -> MultiStreamNet:
    """The network of ``m`` for ``spectra`` and ``num_classes``; input ``size`` (H, W).

    pretrained: load the backbone weights of ``m`` (training); False builds
    random weights (no download) for a state dict to be loaded over them.
    """
    return build_model(m.backbone, spectra, num_classes, pretrained=pretrained and m.pretrained,
                       pretrained_file=(m.pretrained_file or None) if pretrained else None,
                       last_stride_1=m.last_stride_1, neck=m.neck, embedding=m.embedding,
                       embed_at=m.embed_at, input_size=tuple(size), head=m.head,
                       stem_relu=m.stem_relu)


def load_model(checkpoint_dir: str | Path, which: str = "best"):
    """``(MultiStreamNet in eval mode, TrainConfig)`` from a checkpoint directory.

    which: "best" (selected by validation mAP; the model the test metrics
    are reported for) or "last" (the last epoch's). Builds the network with
    random backbone weights (no download), then loads the stored state dict.
    """
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    problem = checkpoint_problem(checkpoint_dir)
    if problem is not None:
        raise UserError(f"checkpoint {checkpoint_dir}: {problem}")
    cfg = config_from_dict(load_json(checkpoint_dir, CONFIG_FILE))
    meta = load_json(checkpoint_dir, META_FILE)
    model = model_from_config(cfg.model, meta["spectra"], meta["num_classes"],
                              meta["image_size"], pretrained=False)
    name = BEST_MODEL_FILE if which == "best" else MODEL_FILE
    model.load_state_dict(load_pt(checkpoint_dir, name))
    return model.eval(), cfg
