"""Where a training run lives: one small interface, two implementations chosen once by ``fit``.

The loop (``msreid.train.loop``) asks its session for its rank and device, the
model to train (DDP-wrapped or not), a dataset shard, the checkpoint to resume
from, a directory to write a checkpoint into, and to report an epoch's
metrics. It never asks which mode it runs in.

- ``RaySession``: inside a Ray Train worker of a ``TorchTrainer``; wraps
  ``ray.train.report`` / ``get_checkpoint`` / ``get_dataset_shard`` /
  ``ray.train.torch.prepare_model``. Ray persists, prunes and restores the
  checkpoints and calls the user callbacks in its controller.
- ``LocalSession`` (``run.num_workers=0``): the same loop in the calling
  process with no trainer at all. It iterates the Ray Data datasets directly
  (as Ray Train's own local mode does), writes and prunes its checkpoints in
  the run directory, and calls the user callbacks itself with the arguments
  Ray's controller would pass. No Ray Train session exists, so it also runs
  inside a Tune trial's process.

``resume_epoch`` (a static method: the driver and Ray's controller call it
before any session exists) tells the train dataset which epochs to skip.

Both modes compute with the same number of intra-op threads, ``worker_threads``:
what Ray gives a worker reserving ``run.cpus_per_worker`` CPUs. torch's CPU
kernels split their sums by thread, so a different count changes the last bits
of a loss, and near a selection tie that moves the selected epoch (issue 23).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from msreid import storage
from msreid.data.schema import resolve_filesystem
from msreid.train import checkpoint as ck
from msreid.train.ray_runtime import latest_checkpoint_name

KEEP_CHECKPOINTS = 2  # the newest two: a crash while writing one leaves the previous


def local_scratch() -> str | None:
    """Where this process keeps temporary local copies (checkpoints going to or coming from
    storage, figures): ``<the node's Ray temp dir>/msreid`` inside a Ray cluster, so that a
    worker killed with its node leaves them among Ray's own temporary files, never elsewhere on
    the node's disk; None (the system's temp dir) outside Ray."""
    if not ray.is_initialized():
        return None
    directory = os.path.join(ray.get_runtime_context().get_temp_dir(), "msreid")
    os.makedirs(directory, exist_ok=True)
    return directory


@contextlib.contextmanager
def temp_files_in_scratch() -> Iterator[None]:
    """``tempfile``'s default directory is ``local_scratch()`` inside (restored after)."""
    saved, tempfile.tempdir = tempfile.tempdir, local_scratch()
    try:
        yield
    finally:
        tempfile.tempdir = saved


def worker_threads(cpus_per_worker: float) -> int:
    """Intra-op threads of a Ray worker reserving ``cpus_per_worker`` CPUs: floor, at least 1.

    Ray's rule for a worker whose environment has no OMP_NUM_THREADS (Ray's
    ``set_omp_num_threads_if_unset``; mirrored, not called: tests/test_ray_private_api.py
    compares it with what Ray sets); the loop applies it in both modes, so an
    OMP_NUM_THREADS in the environment changes neither.
    """
    return max(1, math.floor(cpus_per_worker))


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch computes with ``n`` intra-op threads inside; the caller's count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Session(Protocol):
    """What the training loop needs from the mode it runs in."""

    rank: int
    world: int
    device: torch.device

    @property
    def distributed(self) -> bool: ...

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def dataset_shard(self, name: str) -> Any: ...  # has iter_torch_batches

    def latest_checkpoint(self) -> ray.train.Checkpoint | None: ...

    def checkpoint_dir(self, tag: int | str) -> Path: ...

    def report(self, metrics: dict, directory: Path | None) -> None: ...




class RaySession:
    """This process is one of a TorchTrainer's workers."""

    def __init__(self, use_gpu: bool):
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={
            "find_unused_parameters": False})

    def dataset_shard(self, name: str):
        return ray.train.get_dataset_shard(name)

    def latest_checkpoint(self) -> ray.train.Checkpoint | None:
        """Ray's latest checkpoint, or the newest whole one beside it when it is damaged.

        On object storage the checksums are checked on a local copy (kept for the
        loop to load; removed when this worker process exits).
        """
        latest = ray.train.get_checkpoint()
        if latest is None:
            return None
        if not isinstance(latest.filesystem, pafs.LocalFileSystem):
            uri = f"{latest.filesystem.type_name}://{latest.path}"
            found = intact_remote_checkpoint(uri.rsplit("/", 1)[0], uri.rsplit("/", 1)[1])
            return ray.train.Checkpoint.from_directory(str(found)) if found else None
        if not Path(latest.path).is_dir() or ck.checkpoint_problem(latest.path) is None:
            return latest
        found = ck.newest_intact(ck.run_checkpoints(Path(latest.path).parent))
        return ray.train.Checkpoint.from_directory(str(found)) if found else None

    def checkpoint_dir(self, tag: int | str) -> Path:
        """A temporary directory: Ray copies it into the run's storage on report."""
        return Path(tempfile.mkdtemp(prefix="msreid-ckpt-", dir=local_scratch())) / f"{ck.LOCAL_PREFIX}{tag}"

    def report(self, metrics: dict, directory: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if directory else None
        ray.train.report(metrics, checkpoint=checkpoint)  # synchronous upload to the storage
        if directory is not None:
            shutil.rmtree(directory.parent, ignore_errors=True)  # our temp copy, now persisted

    @staticmethod
    def resume_epoch(run_dir: str) -> int:
        """1 + the epoch of Ray's latest checkpoint in ``run_dir`` (0 when none).

        Ray's latest is read from its own record (``ray_runtime.latest_checkpoint_name``),
        the epoch from our meta.json inside that checkpoint.
        """
        name = latest_checkpoint_name(run_dir)
        if name is None:
            return 0
        fs, path = resolve_filesystem(run_dir)
        try:
            if storage.is_uri(run_dir):  # checksums checked on a local copy
                found = intact_remote_checkpoint(run_dir, name)
                return 0 if found is None else int(ck.load_json(found, ck.META_FILE)["epoch"]) + 1
            if Path(path, name).is_dir() and ck.checkpoint_problem(Path(path, name)) is not None:
                found = ck.newest_intact(ck.run_checkpoints(path))  # as latest_checkpoint does
                return 0 if found is None else int(ck.load_json(found, ck.META_FILE)["epoch"]) + 1
            with fs.open_input_stream(f"{path}/{name}/{ck.META_FILE}") as f:
                return int(json.loads(f.read())["epoch"]) + 1
        except (OSError, KeyError, TypeError, ValueError):
            return 0


class LocalSession:
    """The loop runs in this process (rank 0 of 1); checkpoints live in ``run_dir``."""

    rank = 0
    world = 1
    distributed = False

    def __init__(self, use_gpu: bool, run_dir: str, datasets: dict[str, Any],
                 callbacks: Sequence = (), mirror: RunMirror | None = None):
        gpu = use_gpu and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
        self.run_dir = run_dir  # local: the run's directory, or its mirror's local copy
        self.mirror = mirror  # the run lives on object storage: every checkpoint is uploaded
        self.datasets = datasets  # name -> ray.data.Dataset (iterated whole: one process)
        self.callbacks = list(callbacks)  # ray.train.UserCallback: after_report(...)
        self.last_checkpoint: ray.train.Checkpoint | None = None

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def dataset_shard(self, name: str):
        return self.datasets[name]

    def latest_checkpoint(self) -> ray.train.Checkpoint | None:
        found = ck.newest_intact(ck.local_checkpoints(self.run_dir))  # damaged ones skipped
        return ray.train.Checkpoint.from_directory(str(found)) if found else None

    def checkpoint_dir(self, tag: int | str) -> Path:
        """Straight into the run directory (nothing copies it there afterwards)."""
        return Path(self.run_dir) / f"{ck.LOCAL_PREFIX}{tag}"

    def report(self, metrics: dict, directory: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if directory else None
        if checkpoint is not None:
            self.last_checkpoint = checkpoint
        for callback in self.callbacks:  # as Ray's controller calls them: rank 0's metrics
            callback.after_report(run_context=None, metrics=[dict(metrics)], checkpoint=checkpoint)
        if directory is not None:
            ck.prune_local_checkpoints(directory.parent, keep=KEEP_CHECKPOINTS)
            if self.mirror is not None:
                self.mirror.push(directory)

    @staticmethod
    def resume_epoch(run_dir: str) -> int:
        """1 + the epoch of the newest checkpoint this session wrote in ``run_dir`` (0: none)."""
        found = ck.newest_intact(ck.local_checkpoints(run_dir))  # the one latest_checkpoint uses
        if found is None:
            return 0
        return int(ck.load_json(found, ck.META_FILE)["epoch"]) + 1


def read_json(directory: str | None, name: str) -> Any:
    """JSON file ``name`` in ``directory`` (local path or URI); None when absent or unreadable."""
    if directory is None:
        return None
    fs, path = resolve_filesystem(directory)
    try:
        with fs.open_input_stream(f"{path}/{name}") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def latest_run_checkpoint(run_dir: str) -> str | None:
    """The checkpoint a new ``fit`` in ``run_dir`` would continue from, in either mode.

    Ray's latest (from its checkpoint-manager snapshot), else the newest whole
    checkpoint a local session wrote; None when the directory holds no run.
    """
    name = latest_checkpoint_name(run_dir)
    if name is not None:
        return f"{run_dir.rstrip('/')}/{name}"
    if "://" in run_dir:
        return None
    found = ck.newest_intact(ck.local_checkpoints(run_dir))
    return str(found) if found else None


class RunMirror:
    """A local-mode run whose directory is on object storage (``s3://...``).

    The session works in a local temporary copy holding the run's checkpoints as
    stored (damaged ones too: ``newest_intact`` checks their checksums and falls
    back, as for a local run); each new checkpoint is uploaded whole and the
    pruned ones are deleted from the store. ``close`` removes the local copy.
    """

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.local = tempfile.mkdtemp(prefix="msreid-run-", dir=local_scratch())
        try:
            for name in storage.list_dirs(self.uri):
                if name.startswith(ck.LOCAL_PREFIX):
                    storage.download_dir(storage.join(self.uri, name), Path(self.local, name))
        except BaseException:
            self.close()
            raise

    def push(self, directory: Path) -> None:
        """Upload checkpoint ``directory``; delete the stored ones pruned locally."""
        storage.upload_dir(directory, storage.join(self.uri, directory.name))
        kept = {p.name for p in ck.local_checkpoints(self.local)}
        for name in storage.list_dirs(self.uri):
            if name.startswith(ck.LOCAL_PREFIX) and name not in kept:
                storage.delete_dir(storage.join(self.uri, name))

    def uri_of(self, local_path: str | Path) -> str:
        return storage.join(self.uri, Path(local_path).name)

    def close(self) -> None:
        shutil.rmtree(self.local, ignore_errors=True)


def intact_remote_checkpoint(run_uri: str, name: str) -> Path | None:
    """A local copy of checkpoint ``name`` of the run at ``run_uri`` when it is whole, else of
    the newest whole checkpoint of that run (warning about each damaged one); None: none stored.

    The copy lives in a temporary directory removed when this process exits.
    """
    local = Path(tempfile.mkdtemp(prefix="msreid-ckpt-", dir=local_scratch()))
    atexit.register(shutil.rmtree, local, True)
    latest = storage.download_dir(storage.join(run_uri, name), local / name)
    if ck.checkpoint_problem(latest) is None:
        return latest
    for other in storage.list_dirs(run_uri):
        if other.startswith("checkpoint_") and other != name:
            storage.download_dir(storage.join(run_uri, other), local / other)
    return ck.newest_intact(ck.run_checkpoints(local))
