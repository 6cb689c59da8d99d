"""The checks of tests/cluster/run_cluster_test.sh (run inside its network namespace).

  overlay               cluster-onprem.yaml + site-overlay.yaml -> the test's cluster config
  wait-nodes            until `ray status` on the head (via `ray exec`) counts N active nodes
  wait-running          until a child run of benchmark NAME is RUNNING on NODE (msreid.node_ip tag)
  wait-finished-children  until benchmark NAME has COUNT FINISHED children
  wait-parent           until benchmark NAME's parent run has STATUS
  final                 MLflow (parents, children, cells, nodes, equal metrics) and the shared path
                        (--s3-env: the bucket)
  mlflow-auth           the head's MLflow server refuses requests without the cluster's password
  no-local-results      (--s3) no node wrote data or results to its disk outside /tmp/ray
  no-secret             (--s3) the store's secret key is in no MLflow param/tag and no log
  no-leftovers          no Ray / MLflow process left in the nodes' PID namespaces

It reads the head's MLflow server (http://127.0.0.1:5000, basic auth with the password the
head generated) with the plain MLflow client: the expectations come from the suite and grid
YAML files, not from msreid's own code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
HEAD, WORKER = "127.0.0.1", "127.0.0.2"
METRICS_EQUAL = ("test/mAP", "test/R1", "test/R5", "test/R10", "test/mINP")


def fail(message: str) -> None:
    print(f"CLUSTER CHECK FAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def overlay(args) -> None:
    """The overlays over cluster-onprem.yaml, in order (top-level keys replaced whole)."""
    base = yaml.safe_load((ROOT / "cluster-onprem.yaml").read_text())
    for name in ["site-overlay.yaml", *(["site-overlay-s3.yaml"] if args.s3 else [])]:
        text = (HERE / name).read_text().replace("@WORK@", str(args.work))
        text = text.replace("@VENV@", str(args.venv)).replace("@S3@", args.s3 or "")
        for key, value in yaml.safe_load(text).items():
            base[key] = value
    Path(args.out).write_text(yaml.safe_dump(base, sort_keys=False))


def client(work: Path):
    secret = work / "node1" / "home" / ".msreid" / "secrets" / "mlflow_password"
    os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = secret.read_text().strip()
    from mlflow import MlflowClient

    return MlflowClient(f"http://{HEAD}:5000")


def runs(mlf, **tags) -> list:
    exp = mlf.get_experiment_by_name("msreid-benchmark")
    if exp is None:
        return []
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return mlf.search_runs([exp.experiment_id], query, max_results=1000)


def parents(mlf, name: str) -> list:
    return runs(mlf, **{"msreid.kind": "benchmark", "msreid.benchmark": name})


def children(mlf, name: str) -> list:
    found = parents(mlf, name)
    if not found:
        return []
    return runs(mlf, **{"mlflow.parentRunId": found[0].info.run_id})


def poll(what: str, timeout: float, probe) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if probe():
                return
        except Exception as exc:  # server starting, run not there yet: keep polling
            print(f"  ({what}: {type(exc).__name__}: {str(exc)[:200]})", flush=True)
        time.sleep(3)
    fail(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_nodes(args) -> None:
    def probe() -> bool:
        out = subprocess.run(["ray", "exec", str(args.work / "cluster.yaml"), "ray status"],
                             capture_output=True, text=True, timeout=120).stdout
        active = out.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in out else ""
        return sum(int(n) for n in re.findall(r"^\s*(\d+)\s+\S", active, re.M)) >= args.count
    poll(f"{args.count} active nodes", args.timeout, probe)


def wait_running(args) -> None:
    mlf = client(args.work)
    poll(f"a trial of {args.name} running on {args.node}", args.timeout, lambda: any(
        r.info.status == "RUNNING" and r.data.tags.get("msreid.node_ip") == args.node
        for r in children(mlf, args.name)))


def wait_finished_children(args) -> None:
    mlf = client(args.work)
    poll(f"{args.count} finished trial(s) of {args.name}", args.timeout, lambda: sum(
        r.info.status == "FINISHED" for r in children(mlf, args.name)) >= args.count)


def wait_parent(args) -> None:
    mlf = client(args.work)

    def probe() -> bool:
        found = parents(mlf, args.name)
        status = found[0].info.status if found else None
        if status in ("FAILED", "KILLED") and status != args.status:
            fail(f"parent run of {args.name} is {status}")
        return status == args.status
    poll(f"parent run of {args.name} {args.status}", args.timeout, probe)


def expected_cells() -> tuple[set[tuple[str, str, str]], list[str]]:
    """(table, row, column) of every cell of the test's suite, and the table's metrics."""
    suite = yaml.safe_load((HERE / "suite.yaml").read_text())
    (entry,) = suite["tables"]
    grid = yaml.safe_load((HERE / entry["grid"]).read_text())
    cells = {(grid["name"], row, col["name"]) for row in entry["rows"] for col in entry["columns"]}
    return cells, list(grid["metrics"])


def check_run(mlf, name: str) -> dict[str, dict]:
    """One FINISHED parent, one FINISHED child per trial key, every cell's metrics; {key: metrics}."""
    found = parents(mlf, name)
    if len(found) != 1 or found[0].info.status != "FINISHED":
        fail(f"{name}: expected one FINISHED parent run, found "
             f"{[(p.info.run_id, p.info.status) for p in found]}")
    kids = children(mlf, name)
    keys = [k.data.tags.get("msreid.trial_key") for k in kids]
    if len(keys) != len(set(keys)):
        fail(f"{name}: duplicate child runs for trial keys {sorted(keys)}")
    cells, metrics = expected_cells()
    have = {}
    for kid in kids:
        if kid.info.status != "FINISHED":
            fail(f"{name}: child {kid.info.run_id} is {kid.info.status}")
        for cell in json.loads(kid.data.tags["msreid.cells"]):
            have[tuple(cell)] = kid
    if set(have) != cells:
        fail(f"{name}: cells in MLflow {sorted(have)} != suite cells {sorted(cells)}")
    for cell, kid in have.items():
        missing = [m for m in metrics if f"test/{m}" not in kid.data.metrics]
        if missing:
            fail(f"{name}: cell {cell} lacks metrics {missing}")
    print(f"  {name}: 1 parent, {len(kids)} children, {len(cells)} cells with {metrics}")
    return {k.data.tags["msreid.trial_key"]: k for k in kids}


def final(args) -> None:
    mlf = client(args.work)
    by_run = {name: check_run(mlf, name) for name in args.runs}
    nodes = {n for kids in by_run.values() for k in kids.values()
             for n in k.data.tags.get("msreid.nodes", "").split(",") if n}
    if nodes != {HEAD, WORKER}:
        fail(f"trials ran on {sorted(nodes)}, expected both nodes {HEAD} and {WORKER}")
    retried = [k for k in by_run[args.stopped_worker_run].values()
               if k.data.tags.get("msreid.nodes", "").split(",")[0] == WORKER
               and len(k.data.tags["msreid.nodes"].split(",")) > 1]
    if not retried:
        fail(f"{args.stopped_worker_run}: no trial was retried after the worker node stopped")
    first, *others = args.runs
    for other in others:
        for key, kid in by_run[first].items():
            a = {m: kid.data.metrics[m] for m in METRICS_EQUAL}
            b = {m: by_run[other][key].data.metrics[m] for m in METRICS_EQUAL}
            if a != b:
                fail(f"trial {key}: {first} {a} != {other} {b}")
    print(f"  trials ran on {sorted(nodes)}; retried after the worker stopped: "
          f"{[k.data.tags['msreid.trial_key'] for k in retried]}; metrics of {args.runs} equal")
    if args.s3_env:
        check_bucket(args, {name: len(kids) for name, kids in by_run.items()})
        return
    shared = args.work / "shared" / "msreid"
    for name in args.runs:
        state = list((shared / "ray_results" / name).glob("experiment_state-*.json"))
        trained = list((shared / "ray_results" / name / "train").glob("*/"))
        if not state or len(trained) != len(by_run[name]):
            fail(f"{name}: Tune state {state} / {len(trained)} train dirs under {shared}/ray_results")
    if not list((shared / "cache").glob("synth-*/manifest.done")):
        fail(f"no synthetic data under {shared}/cache")
    if not any((shared / "mlflow-artifacts").rglob("cmc.csv")):
        fail(f"no MLflow artifacts under {shared}/mlflow-artifacts")
    print(f"  Tune state, checkpoints, synthetic data and MLflow artifacts under {shared}")


def bucket(env_file: Path):
    """(filesystem, root) of the object-storage test's prefix, with the test's own credentials."""
    import pyarrow.fs as pafs

    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    fs = pafs.S3FileSystem(access_key=env["AWS_ACCESS_KEY_ID"], region="us-east-1",
                           secret_key=env["AWS_SECRET_ACCESS_KEY"],
                           endpoint_override=env["AWS_ENDPOINT_URL"])
    return fs, "msreid/cluster"


def check_bucket(args, trials: dict[str, int]) -> None:
    """Tune state, one stored final checkpoint per trial, the synthetic manifest with its
    checksums, and the MLflow artifacts (tables of each run, evaluation CSVs) in the bucket."""
    import pyarrow.fs as pafs

    fs, root = bucket(args.s3_env)
    keys = [i.path[len(root) + 1:] for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if i.type == pafs.FileType.File]
    for name, count in trials.items():
        state = [k for k in keys if re.fullmatch(rf"ray_results/{name}/experiment_state-.*\.json", k)]
        final = rf"ray_results/{name}/train/[^/]+/checkpoint_epoch_final/checksums\.json"
        finals = {k.split("/")[3] for k in keys if re.fullmatch(final, k)}
        if not state or len(finals) != count:
            fail(f"{name}: bucket holds Tune state {state} and final checkpoints of {sorted(finals)}"
                 f" ({count} trials)")
    for what, pattern in (("the synthetic manifest's parts", r"cache/synth-[^/]+/manifest/part-\d+\.parquet"),
                          ("its checksums", r"cache/synth-[^/]+/manifest/_SHA256SUMS"),
                          ("its completion marker", r"cache/synth-[^/]+/manifest\.done"),
                          ("the trials' evaluation CSVs (MLflow)", r"mlflow-artifacts/.*/cmc\.csv"),
                          ("the benchmark tables (MLflow)", r"mlflow-artifacts/.*/tables/.*")):
        if not any(re.fullmatch(pattern, k) for k in keys):
            fail(f"no {what} in the bucket (s3://{root}/{pattern}); it holds {len(keys)} objects")
    print(f"  Tune state, {sum(trials.values())} final checkpoints, the synthetic manifest with "
          f"_SHA256SUMS and the MLflow artifacts in s3://{root} ({len(keys)} objects)")


RESULT_FILE = re.compile(r"\.(parquet|pt|safetensors|csv|png)$|_SHA256SUMS$|manifest\.done$|"
                         r"experiment_state|checkpoint_|checksums\.json$")


def no_local_results(args) -> None:
    """No node wrote data or results to its own disk outside its Ray temp dir (/tmp/ray).

    Allowed: the code copy (~/msreid), node settings and secrets, the head's MLflow backend
    (SQLite, ~/mlflow) and pip/torch caches, none of which holds a result file.
    """
    found = []
    for node in ("node1", "node2"):
        for top, shown, skip in (("home", "~", "msreid"), ("tmp", "/tmp", "ray")):
            base = args.work / node / top
            for path in base.rglob("*"):
                rel = path.relative_to(base)
                if rel.parts[0] != skip and path.is_file() and RESULT_FILE.search(str(rel)):
                    found.append(f"{node}:{shown}/{rel}")
    if found:
        fail("results written to a node's local disk:\n  " + "\n  ".join(found[:30]))
    print("  no node wrote data or results to its disk outside its Ray temp dir")


def no_secret(args) -> None:
    """The store's secret key is in no MLflow param or tag, no log of the run, no printed output."""
    secret = dict(line.split("=", 1) for line in args.s3_env.read_text().splitlines())[
        "AWS_SECRET_ACCESS_KEY"]
    mlf = client(args.work)
    for exp in mlf.search_experiments():
        for run in mlf.search_runs([exp.experiment_id], max_results=1000):
            for kind, values in (("param", run.data.params), ("tag", run.data.tags)):
                if any(secret in str(v) for v in values.values()):
                    fail(f"run {run.info.run_id}: the S3 secret key is in a {kind}")
    logs = [p for p in (args.work / "logs").glob("*.log")]
    logs += [p for n in ("node1", "node2") for p in (args.work / n / "tmp" / "ray").rglob("*")
             if p.is_file() and p.suffix in (".log", ".out", ".err", ".json")]
    logs += list((args.work / "node1" / "home" / "mlflow").glob("*.log"))
    leaked = [str(p) for p in logs if secret.encode() in p.read_bytes()]
    if leaked:
        fail(f"the S3 secret key is in {leaked[:10]}")
    print(f"  the S3 secret key is in no MLflow param/tag and none of {len(logs)} log files")


def mlflow_auth(args) -> None:
    import requests

    url = f"http://{HEAD}:5000/api/2.0/mlflow/experiments/search?max_results=1"
    anonymous = requests.get(url, timeout=30).status_code
    password = (args.work / "node1" / "home" / ".msreid" / "secrets" / "mlflow_password").read_text()
    admin = requests.get(url, auth=("admin", password.strip()), timeout=30).status_code
    if (anonymous, admin) != (401, 200):
        fail(f"MLflow server: {anonymous} without credentials, {admin} with them (want 401, 200)")
    print(f"  MLflow server: {anonymous} without the password, {admin} with it")


LEFT = re.compile(r"ray|raylet|gcs_server|mlflow|uvicorn|gunicorn|node\.sh|python", re.I)


def leftovers(ns_pids: list[int]) -> list[str]:
    """Processes of the nodes' PID namespaces (other than their init and sshd) that look like ours."""
    namespaces = {}
    for holder in ns_pids:
        kids = Path(f"/proc/{holder}/task/{holder}/children").read_text().split()
        namespaces[os.readlink(f"/proc/{kids[0]}/ns/pid")] = int(kids[0])
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ns = os.readlink(proc / "ns" / "pid")
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if ns in namespaces and int(proc.name) != namespaces[ns] and comm != "sshd" \
                and LEFT.search(cmd):
            found.append(f"{proc.name} {cmd[:150]}")
    return found


def no_leftovers(args) -> None:
    deadline = time.time() + args.timeout
    while True:
        found = leftovers(args.ns_pids)
        if not found:
            return
        if time.time() > deadline:
            fail("processes left after `ray down`:\n  " + "\n  ".join(found))
        time.sleep(3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overlay")
    o.add_argument("--root")
    o.add_argument("--venv", required=True)
    o.add_argument("--out", required=True)
    o.add_argument("--s3", help="the object-storage variant: the S3 endpoint URL")
    for name in ("wait-nodes", "wait-running", "wait-finished-children", "wait-parent"):
        s = sub.add_parser(name)
        s.add_argument("--timeout", type=float, default=300)
        s.add_argument("--name")
        s.add_argument("--node")
        s.add_argument("--count", type=int, default=1)
        s.add_argument("--status")
    f = sub.add_parser("final")
    f.add_argument("--runs", nargs="+", required=True)
    f.add_argument("--stopped-worker-run", required=True)
    f.add_argument("--s3-env", type=Path, help="object-storage variant: the store's AWS variables")
    sub.add_parser("no-local-results")
    sub.add_parser("no-secret").add_argument("--s3-env", type=Path, required=True)
    sub.add_parser("mlflow-auth")
    n = sub.add_parser("no-leftovers")
    n.add_argument("--ns-pids", type=int, nargs="+", required=True)
    n.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    {"overlay": overlay, "wait-nodes": wait_nodes, "wait-running": wait_running,
     "wait-finished-children": wait_finished_children, "wait-parent": wait_parent,
     "final": final, "mlflow-auth": mlflow_auth, "no-leftovers": no_leftovers,
     "no-local-results": no_local_results, "no-secret": no_secret}[args.cmd](args)


if __name__ == "__main__":
    main()
