"""The equality table of docs/TRAINING.md: one tiny config on 0, 1 and 2 workers (issue 12).

Generates the tests' tiny synthetic manifest (6 train + 6 test ids, 3 cameras,
32 x 64 pieces), trains the smoke preset for 2 epochs with a global batch of 8
in uniform mode and in P x K = 2 x 4 + triplet mode, on run.num_workers 0
(in-process), 1 and 2 (gloo DDP), and prints per-epoch train/loss, val mAP and
test mAP (in %) plus the largest deviation from the 0-worker run.

    .venv/bin/python perf/worker_equality.py [--out /tmp/msreid-equality]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from msreid.config import load_config
from msreid.data.ingest import ingest
from msreid.data.synth import SynthSpec, generate
from msreid.train.ray_runtime import local_ray_environment

PRESET = Path(__file__).resolve().parents[1] / "experiments" / "presets" / "smoke.yaml"
MODES = {"uniform": (), "pk": ("data.batch_mode=pk", "data.P=2", "data.K=4", "loss.triplet=true")}


def manifest(base: Path) -> str:
    root = generate("rgbnt100", base / "synth",
                    SynthSpec(ids=6, cameras=3, tuples_per_id=6, height=32, width=64, seed=1))
    ingest("rgbnt100", root, base / "manifest", piece_size="auto")
    return str(base / "manifest")


def run(data: str, mode: str, workers: int, storage: Path) -> dict:
    from msreid.train.fit import fit  # imports Ray: after main's local_ray_environment()

    cfg = load_config(PRESET, [
        f"data.manifest={data}", "data.image_size=[32, 64]", "data.batch_size=8",
        "data.val_ids=2", "optim.epochs=2", "run.eval_every=1", f"run.num_workers={workers}",
        *(("run.cpus_per_worker=0.5",) if workers else ()), *MODES[mode]])
    out = fit(cfg, storage_path=str(storage), name=f"{mode}-{workers}")
    epochs = [h for h in out.history if "train/loss" in h]
    return {"loss": [h["train/loss"] for h in epochs], "val": epochs[-1]["val/mAP"],
            "test": out.metrics["test/mAP"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="working directory (default: a temp dir)")
    args = parser.parse_args()
    local_ray_environment()  # the local Ray fit starts stays on loopback
    base = Path(args.out or tempfile.mkdtemp(prefix="msreid-equality-"))
    data = manifest(base)
    print("| mode | workers | train/loss epoch 0 | train/loss epoch 1 | val mAP (epoch 1) "
          "| test mAP | max rel. loss diff vs 0 | max mAP diff vs 0 (points) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode in MODES:
        ref = None
        for workers in (0, 1, 2):
            r = run(data, mode, workers, base / "runs")
            ref = ref or r
            rel = max(abs(a - b) / abs(b) for a, b in zip(r["loss"], ref["loss"]))
            gap = 100 * max(abs(r["val"] - ref["val"]), abs(r["test"] - ref["test"]))
            print(f"| {mode} | {workers} | {r['loss'][0]:.6f} | {r['loss'][1]:.6f} | "
                  f"{100 * r['val']:.2f} | {100 * r['test']:.2f} | {rel:.1e} | {gap:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
