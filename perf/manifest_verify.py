"""Cost of verifying a manifest's checksums: read time with vs without ``verify_manifest``.

One run, same files, warm page cache (each measurement is repeated and the
median kept; the first read of every file is discarded):
  * baseline: read every part file with pyarrow (all columns, as training's
    Ray Data read does), i.e. ``read_manifest``;
  * verified: ``verify_manifest`` (sha256 of every part file, threaded) and then
    the same read; what ``msreid train`` does since issue 11.
Prints both times, the ratio verified / baseline and the hashing speed.

The manifest is a synthetic RGBNT100 at the released piece size (768 x 128
JPEGs), generated once under --work.

    .venv/bin/python perf/manifest_verify.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from msreid.data.ingest import ingest
from msreid.data.schema import manifest_files, read_manifest, verify_manifest
from msreid.data.synth import SynthSpec, generate


def make_manifest(work: Path, ids: int, tuples_per_id: int) -> Path:
    """Synthetic RGBNT100 (released 256 x 128 pieces) ingested to ``work/manifest``, once."""
    manifest = work / "manifest"
    if not manifest.exists():
        root = generate("rgbnt100", work / "synth", SynthSpec(ids=ids, tuples_per_id=tuples_per_id,
                                                              height=128, width=256), overwrite=True)
        ingest("rgbnt100", root, manifest)
    return manifest


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_manifest_args(description: str, argv: list[str] | None) -> argparse.Namespace:
    """--work, --ids, --tuples-per-id (the manifest of make_manifest) and --repeats."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--work", type=Path, default=Path("/tmp/msreid-perf-verify"))
    p.add_argument("--ids", type=int, default=40, help="ids per split (synthetic data)")
    p.add_argument("--tuples-per-id", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_manifest_args(__doc__.splitlines()[0], argv)
    manifest = str(make_manifest(args.work, args.ids, args.tuples_per_id))
    size = sum(Path(f).stat().st_size for f in manifest_files(manifest))
    read = lambda: read_manifest(manifest)  # noqa: E731
    read()  # warm the page cache
    baseline = median_seconds(read, args.repeats)
    verify_only = median_seconds(lambda: verify_manifest(manifest), args.repeats)
    verified = median_seconds(lambda: (verify_manifest(manifest), read()), args.repeats)
    print(f"manifest {manifest}: {len(manifest_files(manifest))} part file(s), {size / 1e6:.1f} MB")
    print(f"read                   {baseline * 1e3:8.1f} ms")
    print(f"verify                 {verify_only * 1e3:8.1f} ms  ({size / 1e6 / verify_only:.0f} MB/s)")
    print(f"verify + read          {verified * 1e3:8.1f} ms")
    print(f"ratio verified / read  {verified / baseline:8.2f}")


if __name__ == "__main__":
    main()
