"""Tuples/s of the Ray Data input pipeline vs a plain torch DataLoader, and the train step's need.

One run, same cores, same augmentation, same batches of 16 tuples:
  * DataLoader: ``num_workers=N`` processes open the released concatenated
    JPEG files with PIL, cut the spectra, and apply torchvision ``v2``
    transforms (resize, flip, pad + crop, normalise, random erasing) to the
    spectra of a tuple jointly (v2 draws one set of parameters per call), as a
    careful hand-written loader would;
  * Ray Data (``msreid.train.pipeline``): the Parquet manifest in the object
    store, plan rows decoded by ``map_batches`` tasks on ``ray.init(num_cpus=N)``,
    consumed with ``iter_torch_batches(batch_size=1)`` and normalised in the
    consumer (on a GPU that happens on the device);
  * the consumer: a HAMNet training step (``perf/train_step.py``) on the same
    machine, i.e. how many tuples/s the pipeline has to deliver.

The data set is synthetic in the released RGBNT100 format (768 x 128 JPEGs),
generated once under --work.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python perf/input_pipeline.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_data(work: Path, ids: int, tuples_per_id: int) -> tuple[Path, Path]:
    """(released-layout root, manifest dir) of a synthetic RGBNT100 at the released piece size."""
    from msreid.data.ingest import ingest
    from msreid.data.synth import SynthSpec, generate

    root, manifest = work / "synth" / "rgbir", work / "manifest"
    if not manifest.exists():
        generate("rgbnt100", work / "synth", SynthSpec(ids=ids, tuples_per_id=tuples_per_id,
                                                       height=128, width=256), overwrite=True)
        ingest("rgbnt100", root, manifest)
    return root, manifest


class ReleasedJpegs(Dataset):
    """Baseline: one released JPEG per tuple -> S normalised float [3, H, W] tensors + label."""

    def __init__(self, folder: Path, size: tuple[int, int], spectra: int = 3, piece: int = 256):
        self.files = sorted(folder.glob("*.jpg"))
        pids = sorted({f.name[:4] for f in self.files})
        self.labels = [pids.index(f.name[:4]) for f in self.files]
        self.spectra, self.piece = spectra, piece
        self.transform = T.Compose([
            T.Resize(size, antialias=True), T.RandomHorizontalFlip(0.5), T.Pad(10),
            T.RandomCrop(size), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD),
            T.RandomErasing(0.5, value=0)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = Image.open(self.files[i]).convert("RGB")
        h = img.height
        pieces = [tv_tensors.Image(T.functional.pil_to_tensor(
            img.crop((j * self.piece, 0, (j + 1) * self.piece, h)))) for j in range(self.spectra)]
        return (*self.transform(*pieces), self.labels[i])  # one draw for all spectra


def rate(batches, n: int, warmup: int, consume=lambda b: None) -> float:
    """Tuples/s over ``n`` batches after ``warmup`` (start-up excluded)."""
    it = iter(batches)
    for _ in range(warmup):
        consume(next(it))
    seen, t = 0, time.perf_counter()
    for _ in range(n):
        seen += consume(next(it))
    return seen / (time.perf_counter() - t)


def dataloader_rate(root: Path, size, batch: int, cores: int, n: int, warmup: int) -> float:
    ds = ReleasedJpegs(root / "bounding_box_train", size)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=cores, drop_last=True,
                        persistent_workers=True, generator=torch.Generator().manual_seed(0))

    def forever():
        while True:
            yield from loader

    return rate(forever(), n, warmup, lambda b: int(b[-1].numel()))


def start_ray(manifest: Path, cores: int):
    """Ray with ``cores`` CPUs (kept for the whole run) and the manifest in its object store."""

    from msreid.train.ray_runtime import local_ray_environment, start_local_ray

    local_ray_environment()  # before msreid.train.pipeline imports Ray: loopback only
    from msreid.train.pipeline import load_manifest

    start_local_ray(cores, log_to_driver=False)
    return load_manifest(str(manifest))


def ray_rate(loaded, size, batch: int, n: int, warmup: int, per_task: int) -> float:
    from msreid.data.transforms import AugmentParams, normalize
    from msreid.train.pipeline import DecodeSpec, train_dataset
    from msreid.train.sampling import epoch_plan, split_rows

    index, meta = loaded
    rows = split_rows(meta.split, meta.pid, meta.camera, val_ids=0, per_camera=1, seed=0)
    epochs_needed = int(np.ceil((n + warmup) * batch / rows.train.size)) + 1
    plans = [epoch_plan(rows.train_labels, mode="uniform", batch_size=batch, p=0, k=0, seed=0,
                        epoch=e) for e in range(epochs_needed)]
    pos = np.concatenate(plans)
    epochs = np.concatenate([np.full(len(p), e) for e, p in enumerate(plans)])
    steps = np.concatenate([np.arange(len(p)) for p in plans])
    spec = DecodeSpec(index, ("rgb", "nir", "tir"), size,
                      AugmentParams(flip_prob=0.5, pad=10, erase_prob=0.5), 0)
    ds = train_dataset(spec, rows.train[pos], rows.train_labels[pos], epochs, steps,
                       steps * batch, batches_per_task=per_task)

    def consume(b) -> int:
        for s in spec.spectra:
            normalize(b[s][0], MEAN, STD)
        return int(b["labels"].numel())

    return rate(ds.iter_torch_batches(batch_size=1, prefetch_batches=2), n, warmup, consume)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/msreid-perf-input"))
    p.add_argument("--ids", type=int, default=20)
    p.add_argument("--tuples-per-id", type=int, default=24)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--batches", type=int, default=40, help="measured batches per pipeline")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--batches-per-task", type=int, default=8, help="data.batches_per_task")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backbone", default="resnet50", help="for the train step's consumption")
    args = p.parse_args()
    torch.set_num_threads(args.cores)
    from msreid.models import resolve_backbone

    size = tuple(resolve_backbone(args.backbone).input_size)
    root, manifest = make_data(args.work, args.ids, args.tuples_per_id)
    loaded = start_ray(manifest, args.cores)  # idle while the DataLoader runs
    runs = {"torch DataLoader + PIL (released JPEGs)": lambda: dataloader_rate(
                root, size, args.batch, args.cores, args.batches, args.warmup),
            "Ray Data pipeline, 1 batch per task": lambda: ray_rate(
                loaded, size, args.batch, args.batches, args.warmup, 1),
            f"Ray Data pipeline, {args.batches_per_task} batches per task": lambda: ray_rate(
                loaded, size, args.batch, args.batches, args.warmup, args.batches_per_task)}
    rates: dict[str, list[float]] = {k: [] for k in runs}
    loads = []
    for _ in range(args.rounds):  # interleaved: load changes hit every variant alike
        for name, fn in runs.items():
            loads.append(os.getloadavg()[0])
            rates[name].append(fn())
    import train_step  # perf/ is on sys.path when run as a script

    step = train_step.hamnet_step(args.backbone, args.batch, size, args.ids)
    sec = train_step.measure({"step": step}, repeats=2)["step"][0]
    print(f"{args.batch}-tuple batches of 3 x {size[0]}x{size[1]}, {args.cores} cores, "
          f"{args.batches} batches per measurement, {args.rounds} interleaved rounds; load "
          f"average {min(loads):.1f}..{max(loads):.1f} on {os.cpu_count()} cores")
    base = statistics.median(rates[next(iter(runs))])
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"{name:<44}{med:>8.1f} tuples/s ({med / base:.2f}x)  rounds: "
              + " ".join(f"{x:.0f}" for x in r))
    print(f"{'HAMNet train step (' + args.backbone + ') consumes':<44}"
          f"{args.batch / sec:>8.1f} tuples/s")


if __name__ == "__main__":
    main()
