"""Cost of reading a manifest from S3-compatible object storage instead of a local disk.

One run, same manifest, both measured here (median of --repeats after one warm-up each):
  * baseline: the manifest on local disk (warm page cache);
  * s3: the same files uploaded to an S3-compatible store on loopback (SeaweedFS,
    tests/s3_store.py, started by this script).
Two reads each, the ones a benchmark trial does:
  * ``verify_manifest``: every byte hashed against ``_SHA256SUMS`` (streamed in chunks);
  * ``load_manifest``: the training read, one Ray task per part file reading it with
    pyarrow straight into Ray's object store; nothing is copied to local disk first.
Prints the times and the ratio s3 / local. Loopback has no network latency or bandwidth
limit: the ratio is the store's and the S3 protocol's own cost, a lower bound for a real
network.

    .venv/bin/python perf/s3_read.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import ray
from manifest_verify import make_manifest, median_seconds, parse_manifest_args

from msreid import storage
from msreid.data.schema import manifest_files, verify_manifest
from msreid.train.pipeline import load_manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import s3_store  # noqa: E402  (tests/s3_store.py: the loopback store of the tests)


def training_read(manifest: str) -> None:
    index, meta = load_manifest(manifest)
    ray.get(list(index.refs))  # every part in the object store
    del index, meta


def main(argv: list[str] | None = None) -> None:
    args = parse_manifest_args(__doc__.splitlines()[0], argv)
    local = str(make_manifest(args.work, args.ids, args.tuples_per_id))
    files = manifest_files(local)
    size = sum(Path(f).stat().st_size for f in files)
    store = s3_store.start(args.work / "s3")
    try:
        os.environ.update(store.env())  # before ray.init: the read tasks inherit it
        remote = f"s3://{store.bucket}/perf/manifest"
        storage.upload_dir(local, remote)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        rows = []
        for name, read in (("verify_manifest", verify_manifest), ("load_manifest", training_read)):
            times = {}
            for where, manifest in (("local", local), ("s3", remote)):
                read(manifest)  # warm-up (page cache, store caches, Ray workers)
                times[where] = median_seconds(lambda m=manifest: read(m), args.repeats)
            rows.append((name, times))
    finally:
        ray.shutdown()
        store.stop()
    print(f"manifest: {len(files)} part file(s), {size / 1e6:.1f} MB; load average "
          f"{os.getloadavg()[0]:.1f}; median of {args.repeats}")
    print(f"{'read':<16} {'local':>9} {'s3':>9} {'ratio':>7} {'s3 MB/s':>8}")
    for name, t in rows:
        print(f"{name:<16} {t['local'] * 1e3:7.1f}ms {t['s3'] * 1e3:7.1f}ms "
              f"{t['s3'] / t['local']:6.2f}x {size / 1e6 / t['s3']:8.0f}")


if __name__ == "__main__":
    main()
