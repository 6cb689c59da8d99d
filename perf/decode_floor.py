"""The Ray Data input pipeline against its decode floor, in tuples per CPU-second (issue 22).

One run, per released layout (RGBNT100: RGB | NIR | TIR, RGBN300: RGB | NIR; pieces 256 x
128 in one JPEG per tuple, synthetic data from ``msreid.data.synth`` at that size):

  * floor, one process, one thread: the bare decode of the training tuples' manifest blobs
    plus the crop of each spectrum (a numpy / tensor view, no copy), with PIL
    (libjpeg-turbo) and with ``torchvision.io.decode_jpeg``. Nothing else: no Arrow, no
    augmentation, no batching.
  * the pipeline: ``msreid.train.pipeline.train_dataset`` (plan rows of ``--batch`` tuples,
    ``--batches-per-task`` per task, flip + pad 10 + crop + random erasing 0.5), read with
    ``iter_torch_batches(batch_size=1)`` as the training loop reads it, on a local Ray of
    ``--cores`` CPUs whose workers have decoded a pass before (imports done). Its CPU time
    is that of every process of this Ray instance: this driver (which consumes the batches)
    and all its descendants (gcs_server, raylet, the agents and every Ray worker), read with
    psutil before the pass's iterator is made and after its last batch (a whole pass: the
    tasks run ahead of the consumer, so a window inside the pass would miscount).
    Processes born in between count whole; a process that exits in between would be lost,
    so their number is printed (0 expected: a local msreid Ray keeps its idle workers).

The ratio pipeline / best floor is issue 22's goal (>= 0.60). Per process group the CPU
seconds show where the rest goes, and ``--profile`` adds the CPU time of each step of the
decode task's function timed in this process (the same code a Ray task runs, minus Ray).

    OMP_NUM_THREADS=1 .venv/bin/python perf/decode_floor.py            # ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np
import psutil

LAYOUTS = {"rgbnt100": ("rgb", "nir", "tir"), "rgbn300": ("rgb", "nir")}


def make_data(work: Path, layout: str, ids: int, tuples_per_id: int) -> Path:
    """The manifest dir of a synthetic ``layout`` at the released piece size (made once)."""
    from msreid.data.ingest import ingest
    from msreid.data.synth import SynthSpec, generate

    manifest = work / layout / "manifest"
    if not manifest.exists():
        root = generate(layout, work / layout / "synth",
                        SynthSpec(ids=ids, tuples_per_id=tuples_per_id, height=128, width=256),
                        overwrite=True)
        ingest(layout, root, manifest)
    return manifest


def training_rows(manifest: Path, spectra) -> tuple[list[bytes], list[list[tuple[int, ...]]]]:
    """(blob, boxes of ``spectra``) of every training tuple, read with pyarrow (no Ray)."""
    from msreid.data.schema import read_manifest

    table = read_manifest(str(manifest))
    rows = [r for r in table.to_pylist() if r["split"] == "train"]
    assert all(r[f"{s}_src"] == 0 for r in rows for s in spectra)  # one JPEG per tuple
    return [r["blobs"][0] for r in rows], [[tuple(r[f"{s}_box"]) for s in spectra] for r in rows]


def floor_pil(blobs, boxes) -> None:
    from PIL import Image

    for blob, bx in zip(blobs, boxes):
        img = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        for left, top, right, bottom in bx:
            img[top:bottom, left:right]


def floor_torchvision(blobs, boxes) -> None:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    for blob, bx in zip(blobs, boxes):
        img = decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8),
                          mode=ImageReadMode.RGB)
        for left, top, right, bottom in bx:
            img[:, top:bottom, left:right]


def cpu_rate(fn, n: int, repeats: int) -> tuple[float, list[float]]:
    """Median tuples per CPU-second of ``fn()`` (``n`` tuples) over ``repeats``, after one warm-up."""
    fn()
    rates = []
    for _ in range(repeats):
        c = time.process_time()
        fn()
        rates.append(n / (time.process_time() - c))
    return statistics.median(rates), rates


def ray_processes() -> dict[int, psutil.Process]:
    """This driver and all its descendants: every process of the local Ray it started."""
    me = psutil.Process()
    return {p.pid: p for p in [me, *me.children(recursive=True)]}


def group(p: psutil.Process) -> str:
    try:
        name, cmd = p.name(), " ".join(p.cmdline()[:1])
    except psutil.NoSuchProcess:
        return "gone"
    if p.pid == os.getpid():
        return "driver (consumer)"
    if cmd.startswith("ray::") or name.startswith("ray::"):
        return "Ray workers (decode tasks)"
    return "Ray system (gcs, raylet, agents)"


def cpu_snapshot(procs: dict[int, psutil.Process]) -> dict[int, float]:
    out = {}
    for pid, p in procs.items():
        try:
            t = p.cpu_times()
            out[pid] = t.user + t.system  # own threads; children are in procs themselves
        except psutil.NoSuchProcess:
            pass
    return out


def start_ray(cores: int) -> None:
    from msreid.train.ray_runtime import local_ray_environment, start_local_ray

    local_ray_environment()  # before anything imports Ray: loopback only (docs/RAY.md)
    start_local_ray(cores, log_to_driver=False, configure_logging=False)


def pipeline(loaded, spectra, batch: int, per_task: int, n_batches: int, erase: float,
             decoder: str = "pil"):
    """(DecodeSpec, train_dataset of ``n_batches`` plan rows, the plan arrays)."""
    from msreid.data.transforms import AugmentParams
    from msreid.train.pipeline import DecodeSpec, train_dataset
    from msreid.train.sampling import epoch_plan, split_rows

    index, meta = loaded
    rows = split_rows(meta.split, meta.pid, meta.camera, val_ids=0, per_camera=1, seed=0)
    per_epoch = rows.train.size // batch
    plans = [epoch_plan(rows.train_labels, mode="uniform", batch_size=batch, p=0, k=0, seed=0,
                        epoch=e) for e in range(n_batches // per_epoch + 1)]
    pos = np.concatenate(plans)[:n_batches]
    epochs = np.concatenate([np.full(len(p), e) for e, p in enumerate(plans)])[:n_batches]
    steps = np.concatenate([np.arange(len(p)) for p in plans])[:n_batches]
    spec = DecodeSpec(index, tuple(spectra), (128, 256),
                      AugmentParams(flip_prob=0.5, pad=10, erase_prob=erase), 0,
                      **({"decoder": decoder} if decoder != "pil" else {}))
    ds = train_dataset(spec, rows.train[pos], rows.train_labels[pos], epochs, steps,
                       steps * batch, batches_per_task=per_task)
    return spec, ds, (rows.train[pos], rows.train_labels[pos], epochs, steps, steps * batch)


def pipeline_rate(ds, prefetch: int) -> dict:
    """Tuples per CPU-second (all processes of this Ray) and per wall second of one whole pass.

    From before the iterator is made to after its last batch: the decode tasks run ahead of
    the consumer (as far as Ray Data's object store budget lets them), so a window that starts
    or ends mid-pass counts batches decoded outside it; a whole pass counts every task once.
    """
    procs = ray_processes()
    before, t0 = cpu_snapshot(procs), time.perf_counter()
    seen = 0
    for b in ds.iter_torch_batches(batch_size=1, prefetch_batches=prefetch):
        seen += int(b["labels"].numel())
    wall = time.perf_counter() - t0
    procs_after = ray_processes()
    after = cpu_snapshot(procs_after)
    by_group: dict[str, float] = {}
    for pid, c in after.items():
        g = group(procs_after[pid])
        by_group[g] = by_group.get(g, 0.0) + c - before.get(pid, 0.0)
    lost = len(set(before) - set(after))
    cpu = sum(by_group.values())
    return {"tuples": seen, "wall": wall, "cpu": cpu, "per_cpu_s": seen / cpu,
            "per_wall_s": seen / wall, "groups": by_group, "lost": lost}


def profile_stages(spec, plan: np.ndarray, per_task: int, repeats: int = 6) -> dict[str, float]:
    """CPU ms per tuple of each step of a decode task's function, run here (no Ray task):
    the steps ``msreid.train.pipeline._decode_into`` takes, on ``per_task`` plan rows."""
    from msreid.data.decode import decode_row
    from msreid.data.transforms import at_size, augment_into, draw_each
    from msreid.train.pipeline import fetch_rows
    from msreid.train.sampling import sample_rngs

    acc: dict[str, float] = {}

    def timed(name, fn):
        c = time.process_time()
        out = fn()
        acc[name] = acc.get(name, 0.0) + time.process_time() - c
        return out

    n = per_task * plan.shape[1]
    for r in range(repeats + 1):
        if r == 1:
            acc.clear()  # the first round warms (imports, caches)
        rows = plan[(r * per_task) % len(plan):][:per_task].reshape(-1)
        out = timed("output arrays", lambda: [np.empty((rows.size, 3, *spec.size), np.uint8)
                                              for _ in spec.spectra])
        fetched = timed("fetch rows (object store views)", lambda: fetch_rows(spec.index, rows))
        dec = timed(f"decode ({spec.decoder})",
                    lambda: [decode_row(x, spec.spectra, spec.decoder) for x in fetched])
        pieces = timed("pieces at size", lambda: at_size(dec, spec.spectra, spec.size))
        draws = timed("augmentation draws", lambda: draw_each(
            sample_rngs(0, 0, np.arange(rows.size)), spec.size, spec.augment))
        timed("flip + pad + crop + erase into the output",
              lambda: augment_into(out, pieces, draws, spec.augment))
    return {k: 1e3 * v / (repeats * n) for k, v in acc.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/msreid-perf-decode-floor"))
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--ids", type=int, default=20)
    p.add_argument("--tuples-per-id", type=int, default=24)
    p.add_argument("--batch", type=int, default=16, help="tuples per plan row (the paper's 16)")
    p.add_argument("--batches-per-task", type=int, default=8, help="data.batches_per_task")
    p.add_argument("--batches", type=int, default=192,
                   help="batches of the measured pass (one per round)")
    p.add_argument("--prefetch", type=int, default=2, help="data.prefetch_batches")
    p.add_argument("--erase", type=float, default=0.5, help="random erasing probability")
    p.add_argument("--cores", type=int, default=2, help="the local Ray's CPUs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--decoders", nargs="+", default=["pil"], choices=["pil", "torchvision"],
                   help="the pipeline's JPEG decoder(s) (DecodeSpec.decoder), each measured")
    p.add_argument("--profile", action="store_true",
                   help="also time the steps of the decode task's function in this process")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)  # the floor is one thread; the decode tasks use one each
    start_ray(args.cores)
    loads = [os.getloadavg()[0]]
    results = {}
    for layout in args.layouts:
        spectra = LAYOUTS[layout]
        manifest = make_data(args.work, layout, args.ids, args.tuples_per_id)
        blobs, boxes = training_rows(manifest, spectra)
        from msreid.train.pipeline import load_manifest

        loaded = load_manifest(str(manifest))  # once: its blocks stay in the object store
        for decoder in args.decoders:
            _, ds, _ = pipeline(loaded, spectra, args.batch, args.batches_per_task,
                                4 * args.batches_per_task, args.erase, decoder)
            for _ in ds.iter_torch_batches(batch_size=1):  # warm the decode workers (imports)
                pass
        floors = {"PIL": [], "torchvision": []}
        ray_runs: dict[str, list[dict]] = {d: [] for d in args.decoders}
        for _ in range(args.rounds):  # interleaved: a load change hits every variant alike
            loads.append(os.getloadavg()[0])
            floors["PIL"].append(cpu_rate(lambda: floor_pil(blobs, boxes), len(blobs), 1)[0])
            floors["torchvision"].append(
                cpu_rate(lambda: floor_torchvision(blobs, boxes), len(blobs), 1)[0])
            for decoder in args.decoders:
                spec, ds, arrays = pipeline(loaded, spectra, args.batch, args.batches_per_task,
                                            args.batches, args.erase, decoder)
                ray_runs[decoder].append(pipeline_rate(ds, args.prefetch))
            loads.append(os.getloadavg()[0])
        stages = {d: profile_stages(dataclasses.replace(spec, decoder=d), arrays[0],
                                    args.batches_per_task) for d in args.decoders} \
            if args.profile else {}
        results[layout] = (floors, ray_runs, len(blobs), stages)

    print(f"{args.batch}-tuple batches, {args.batches_per_task} per task, passes of "
          f"{args.batches} batches, erase {args.erase}, Ray of {args.cores} CPUs, "
          f"{args.rounds} interleaved rounds (medians); load average {min(loads):.2f}.."
          f"{max(loads):.2f} on {os.cpu_count()} cores")
    for layout, (floors, by_decoder, n, stages) in results.items():
        pil, tv = (statistics.median(floors[k]) for k in ("PIL", "torchvision"))
        best = max(pil, tv)
        print(f"\n{layout} ({len(LAYOUTS[layout])} spectra, {n} training tuples)")
        print(f"  floor PIL decode + crop            {pil:8.0f} tuples/CPU-s   rounds: "
              + " ".join(f"{x:.0f}" for x in floors["PIL"]))
        print(f"  floor torchvision decode + crop    {tv:8.0f} tuples/CPU-s   rounds: "
              + " ".join(f"{x:.0f}" for x in floors["torchvision"]))
        for decoder, runs in by_decoder.items():
            rate = statistics.median(r["per_cpu_s"] for r in runs)
            wall = statistics.median(r["per_wall_s"] for r in runs)
            print(f"  Ray Data pipeline, {decoder:<16}{rate:8.0f} tuples/CPU-s   rounds: "
                  + " ".join(f"{r['per_cpu_s']:.0f}" for r in runs)
                  + f"   ({wall:.0f} tuples/wall-s)")
            print(f"    ratio to the best floor          {rate / best:8.2f}   (to PIL: "
                  f"{rate / pil:.2f})")
            mid = sorted(runs, key=lambda r: r["per_cpu_s"])[len(runs) // 2]
            print(f"    CPU of the median round: {mid['cpu']:.2f} s for {mid['tuples']} tuples, "
                  f"processes lost {mid['lost']}")
            for g, c in sorted(mid["groups"].items(), key=lambda kv: -kv[1]):
                print(f"      {g:<34}{c:7.2f} s  {1e3 * c / mid['tuples']:6.3f} ms/tuple "
                      f"({c / mid['cpu']:.0%})")
            if decoder in stages:
                print(f"    the decode task's steps, in this process: "
                      f"{sum(stages[decoder].values()):.3f} ms/tuple")
                for k, v in stages[decoder].items():
                    print(f"      {k:<44}{v:6.3f} ms/tuple")

if __name__ == "__main__":
    main()
