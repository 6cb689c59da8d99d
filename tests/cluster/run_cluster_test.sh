#!/usr/bin/env bash
# `make cluster-test`: the documented cluster commands on a real 2-node Ray cluster on this machine.
#
# Runs as root (CI does). Everything happens inside a network namespace holding only `lo`:
#   node 1 (head) = an sshd on 127.0.0.1, node 2 (worker) = an sshd on 127.0.0.2, each in its own
#   PID and mount namespace (one node's `ray stop` cannot see the other's processes) with its own
#   $HOME (a passwd entry of its own) and /tmp (so its own Ray temp dir), and distinct Ray ports
#   (~/.msreid/node.env).
# It then runs, from the repository root, the REAL `ray up`, `ray submit`, `ray exec` and
# `ray down` on cluster-onprem.yaml with tests/cluster/site-overlay.yaml merged over it (IPs, SSH
# user and key, shared directory, and MSREID_VENV = this checkout's venv: nothing is installed on
# the nodes, no internet is needed), and checks (tests/cluster/cluster_check.py):
#   1. `ray up` starts the head and the worker (autoscaler), the MLflow server and the auth token;
#   2. run A (`ray submit`, reduced grid: 3 trials, 1 epoch, tiny synthetic data): the worker node
#      is stopped while it runs a trial; the trial is retried and the run succeeds;
#   3. run B (`ray submit --tmux`): the driver is killed after the first finished trial, then
#      `ray submit --tmux ... --resume` finishes it without duplicate runs;
#   4. trials ran on both nodes; the head's MLflow server has each run's parent and a child with
#      every table cell; results are on the shared path; run A's metrics (with the node failure)
#      equal run B's;
#   5. `ray down` leaves no Ray or MLflow process on either node.
# Everything it started is stopped, even on failure (trap). MSREID_CLUSTER_KEEP=1 keeps the work dir.
#
# The checkout and the venv may live anywhere, /tmp included: each node's own /tmp would hide them,
# so both stay visible inside every node at their own paths (start_node). The venv's path must not
# have spaces (Ray cannot start workers from it).
# `run_cluster_test.sh --s3` (`make cluster-test-s3`) is the cloud shape: the same run with NO shared
# directory. An S3-compatible store (SeaweedFS, tests/s3_store.py) runs on 127.0.0.3; the site values
# (site-overlay-s3.yaml) put MSREID_SHARED=s3://msreid/cluster and AWS_ENDPOINT_URL, each node has
# its own ~/.aws/credentials, and each node sees neither the other node's directories nor the
# store's (empty mounts over them), so a node reading another's files fails the run. After the
# checks above it also checks the bucket (Tune state, checkpoints, the synthetic manifest with its
# _SHA256SUMS, MLflow artifacts), that no node wrote results to its disk outside /tmp/ray, that the
# worker rebuilds the tables (`msreid report`) through the head's MLflow server with no S3
# credentials, and that the store's secret key is in no MLflow param/tag and no log.
# `run_cluster_test.sh --nodes-only` stops after starting the two nodes: over SSH, each node runs
# `node.sh setup` from the checkout with the test's site values (the venv check that `ray up` runs
# first) and shows that its /tmp is its own; seconds instead of minutes (tests/cluster/
# test_checkout_anywhere.py runs it from a copy under /tmp).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
VENV="${MSREID_CLUSTER_VENV:-$ROOT/.venv}"
HERE="$ROOT/tests/cluster"

if [ "${1:-}" != "--in-netns" ]; then
  MODE=full
  if [ "${1:-}" = "--nodes-only" ]; then MODE=nodes-only; fi
  if [ "${1:-}" = "--s3" ]; then MODE=s3; fi
  if [ "$(id -u)" != 0 ]; then
    echo "cluster test: needs root (network/PID namespaces, one sshd per node)" >&2; exit 2
  fi
  [ -x "$VENV/bin/python" ] && { [ "$MODE" = nodes-only ] || [ -x "$VENV/bin/ray" ]; } ||
    { echo "cluster test: no venv at $VENV (run make venv)" >&2; exit 2; }
  case "$VENV" in *[[:space:]]*)
    # Ray's raylet splits the python path at spaces when it starts workers (seen on Ray 2.60:
    # `bash: line 1: /tmp/msreid: No such file or directory`, no trial ever starts).
    echo "cluster test: Ray cannot start workers from a venv whose path has a space: $VENV;" \
         "clone the repository to a path without spaces, or point MSREID_CLUSTER_VENV at such a" \
         "venv" >&2; exit 2 ;;
  esac
  missing=""
  for pair in sshd:openssh-server ssh:openssh-client rsync:rsync tmux:tmux ip:iproute2 \
              pgrep:procps; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "${pair%%:*}" > /dev/null || missing="$missing ${pair#*:}"
  done
  if [ -n "$missing" ]; then
    echo "cluster test: installing$missing (Debian packages)"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing > /dev/null ||
      { apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing > /dev/null; }
  fi
  WORK="$(mktemp -d /var/tmp/msreid-cluster-test.XXXXXX)"
  start=$(date +%s)
  set +e
  # --kill-child: if this script is stopped, the inner one gets TERM and runs its cleanup trap.
  unshare --net --fork --kill-child=TERM "${BASH_SOURCE[0]}" --in-netns "$WORK" "$MODE"
  rc=$?
  set -e
  echo "cluster test: $([ $rc = 0 ] && echo PASSED || echo "FAILED (exit $rc)") in $(( $(date +%s) - start )) s"
  if [ "${MSREID_CLUSTER_KEEP:-0}" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
fi

# ---------------------------------------------------------------- inside the network namespace
WORK="$2"
MODE="$3"
# The venv by its real path: that is the directory a node must see (a symlink to it may not help).
VENV="$(cd "$VENV" && pwd -P)"
T0=$(date +%s)
LOGS="$WORK/logs"
mkdir -p "$LOGS" "$WORK/client/tmp" "$WORK/home"
[ "$MODE" = s3 ] || mkdir -p "$WORK/shared"  # the object-storage shape has no shared directory
S3_ENV="$WORK/client/s3.env"  # --s3: the store's AWS variables (the client's view only)
CFG="$WORK/cluster.yaml"
KEY="$WORK/client/id_ed25519"
SSH=(ssh -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
     -o BatchMode=yes)
SYNTH='{"ids":6,"cameras":3,"tuples_per_id":6,"height":32,"width":64}'
SUITE='~/msreid/tests/cluster/suite.yaml'  # expanded by the head's shell
export PATH="$VENV/bin:$PATH"
export RAY_TMPDIR="$WORK/client/tmp" TMPDIR="$WORK/client/tmp"  # the launcher's state files
export RAY_UP_enable_autoscaler_v2=1  # the default, said aloud: the YAML itself picks v1 on the head
CHECK=("$VENV/bin/python" "$HERE/cluster_check.py" --work "$WORK")
NS_PIDS=()
BG_PIDS=()

log() { echo "[cluster test +$(( $(date +%s) - T0 ))s] $*"; }

config_list() {  # config_list KEY...: the lists KEY... of the test's cluster config, one item a line
  "$VENV/bin/python" -c 'import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
print("\n".join(item for key in sys.argv[2:] for item in config[key]))' "$CFG" "$@"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ $rc != 0 ]; then
    log "FAILED; last lines of the logs:"
    for f in "$LOGS"/*.log "$WORK"/node*/home/mlflow/server.log "$WORK"/s3/weed.log; do
      [ -f "$f" ] && { echo "---- $f"; tail -25 "$f"; }
    done
  fi
  for pid in "${BG_PIDS[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
  # --s3: the store itself runs in its own session; its launcher stops it, this makes sure.
  if [ -s "$WORK/s3/weed.pid" ]; then kill -TERM "$(cat "$WORK/s3/weed.pid")" 2> /dev/null || true; fi
  # Killing a node's namespace holder kills its PID 1 and so every process of that node.
  for pid in "${NS_PIDS[@]}"; do kill -KILL "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 143' INT TERM

ray_ports() {  # distinct ports per node: both nodes share this namespace's loopback
  local base=$1
  echo "--num-cpus=2 --object-store-memory=300000000 --node-manager-port=$((base + 1))" \
       "--object-manager-port=$((base + 2)) --min-worker-port=$((base + 100))" \
       "--max-worker-port=$((base + 599)) --dashboard-agent-listen-port=$((base + 3))" \
       "--dashboard-agent-grpc-port=$((base + 4)) --metrics-export-port=$((base + 5))" \
       "--runtime-env-agent-port=$((base + 6))"
}

# PID 1 of a node (bash -c "$NODE_INIT" node-init NODE_DIR HOME_PATH VISIBLE...): its own
# /etc/passwd, $HOME and /tmp, then its sshd. Each VISIBLE path under /tmp (the checkout, the venv)
# is first bind-mounted at the same place inside the node's /tmp, so it stays where the client has it.
# HIDE (colon-separated, --s3): directories this node must not see, covered by empty mounts.
NODE_INIT='set -e
d=$1 home=$2
shift 2
mount --bind "$d/passwd" /etc/passwd
mount --bind "$d/home" "$home"
IFS=: read -ra hide <<< "${HIDE:-}"
for path in "${hide[@]}"; do mount -t tmpfs -o ro,size=64k none "$path"; done
for path in "$@"; do
  case "$path" in
    /tmp/*) mkdir -p "$d/tmp/${path#/tmp/}"; mount --bind "$path" "$d/tmp/${path#/tmp/}" ;;
  esac
done
mount --rbind "$d/tmp" /tmp
/usr/sbin/sshd -D -e -f "$d/sshd_config" &
wait'
# What the nodes must see of this machine: the checkout and the venv (once, if it is inside it).
VISIBLE=("$ROOT")
case "$VENV/" in "$ROOT"/*) ;; *) VISIBLE+=("$VENV") ;; esac

start_node() {  # start_node N: sshd on 127.0.0.N in its own PID + mount namespace
  local n=$1 d="$WORK/node$1"
  mkdir -p "$d/home/.ssh" "$d/home/.msreid" "$d/tmp"
  chmod 700 "$d/home" "$d/home/.ssh"
  chmod 1777 "$d/tmp"
  cp "$KEY.pub" "$d/home/.ssh/authorized_keys"
  cp "$WORK/client/host_ed25519" "$d/host_ed25519"  # in the node's own directory
  : > "$d/home/.bashrc"
  local hide=""
  if [ "$MODE" = s3 ]; then
    # The node's credentials where the AWS SDKs look (as `aws configure` or an instance role).
    mkdir -p "$d/home/.aws"
    "$VENV/bin/python" -c 'import sys
env = dict(l.split("=", 1) for l in open(sys.argv[1]).read().splitlines())
print("[default]\naws_access_key_id = %s\naws_secret_access_key = %s" % (
    env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]))' "$S3_ENV" > "$d/home/.aws/credentials"
    mkdir -p "$WORK/node$((3 - n))"
    hide="$WORK/node$((3 - n)):$WORK/s3:$WORK/client"
  fi
  echo "MSREID_RAY_START_ARGS='$(ray_ports $((20000 + 1000 * n)))'" > "$d/home/.msreid/node.env"
  cat > "$d/sshd_config" <<EOF
ListenAddress 127.0.0.$n
Port 22
HostKey $d/host_ed25519
PidFile $d/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile .ssh/authorized_keys
MaxSessions 50
MaxStartups 50
Subsystem sftp internal-sftp
EOF
  # The node's root logs in with HOME = $WORK/home, the same path on both nodes as on real machines
  # (Ray syncs ~/... between nodes as absolute paths), holding this node's own $d/home.
  sed "s#^root:\([^:]*\):0:0:\([^:]*\):[^:]*:#root:\1:0:0:\2:$WORK/home:#" /etc/passwd > "$d/passwd"
  HIDE="$hide" unshare --pid --fork --kill-child=KILL --mount --mount-proc --propagation private \
    bash -c "$NODE_INIT" node-init "$d" "$WORK/home" "${VISIBLE[@]}" > "$LOGS/sshd-node$n.log" 2>&1 &
  NS_PIDS+=($!)
  echo $! > "$d/ns.pid"
}

ip link set lo up
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$KEY"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client/host_ed25519"
S3_ARGS=()
if [ "$MODE" = s3 ]; then  # the object store, a third machine on 127.0.0.3
  "$VENV/bin/python" "$ROOT/tests/s3_store.py" --dir "$WORK/s3" --ip 127.0.0.3 --bucket msreid \
    --env-file "$S3_ENV" > "$LOGS/s3-store.log" 2>&1 &
  BG_PIDS+=($!)
  for _ in $(seq 300); do [ -s "$S3_ENV" ] && break; sleep 0.2; done
  [ -s "$S3_ENV" ] || { log "the S3 store did not start"; exit 1; }
  S3_ARGS=(--s3 "$(sed -n 's/^AWS_ENDPOINT_URL=//p' "$S3_ENV")")
  log "S3 store (SeaweedFS) on ${S3_ARGS[1]}, bucket msreid"
fi
start_node 1
start_node 2
for n in 1 2; do
  for _ in $(seq 50); do "${SSH[@]}" "root@127.0.0.$n" true 2> /dev/null && break; sleep 0.2; done
  "${SSH[@]}" "root@127.0.0.$n" true
done
log "2 nodes (sshd on 127.0.0.1, 127.0.0.2, own PID/mount namespaces)"

"${CHECK[@]}" overlay --root "$ROOT" --venv "$VENV" --out "$CFG" "${S3_ARGS[@]}"
cd "$ROOT"  # file_mounts: ~/msreid <- "." (the repository root), as users run it

if [ "$MODE" = nodes-only ]; then
  # On the head, what `ray up` does before `ray start`, by hand: the file mount (the checkout to
  # ~/msreid, minus the YAML's rsync_exclude), then the YAML's initialization and setup commands
  # (site values; node.sh setup, which imports the project's dependencies with the venv's python,
  # 10-15 s under load: the worker, started the same way, only runs that python).
  mapfile -t EXCLUDES < <(config_list rsync_exclude)
  mapfile -t COMMANDS < <(config_list initialization_commands setup_commands)
  rsync -a -e "${SSH[*]}" "${EXCLUDES[@]/#/--exclude=}" ./ root@127.0.0.1:msreid/
  for command in "${COMMANDS[@]}"; do "${SSH[@]}" root@127.0.0.1 "$command"; done
  mark="$(basename "$WORK")"
  for n in 1 2; do
    "${SSH[@]}" "root@127.0.0.$n" "$(printf %q "$VENV/bin/python") -c pass &&
                                   test -d $(printf %q "$ROOT") && touch /tmp/$mark"
    [ -e "$WORK/node$n/tmp/$mark" ] && [ ! -e "/tmp/$mark" ] ||
      { log "node $n: /tmp is not the node's own $WORK/node$n/tmp"; exit 1; }
    log "node $n: the venv $VENV and the checkout $ROOT visible, /tmp its own"
  done
  exit 0
fi

# 1. ray up
timeout 600 ray up -y "$CFG" > "$LOGS/ray-up.log" 2>&1
log "ray up done"
"${CHECK[@]}" wait-nodes --count 2 --timeout 300
log "the worker joined (2 nodes)"

submit() {  # submit NAME [ray submit options] [-- extra script args]
  local name=$1; shift
  ray submit "$@" "$CFG" experiments/full_benchmark.py -- --preset "$SUITE" --name "$name" \
    --synth "'$SYNTH'" --quiet
}

# 2. run A: the worker node is stopped while it runs a trial
submit ctest-a > "$LOGS/run-a.log" 2>&1 &
RUN_A=$!
BG_PIDS+=($RUN_A)
"${CHECK[@]}" wait-running --name ctest-a --node 127.0.0.2 --timeout 420
"${SSH[@]}" root@127.0.0.2 '. ~/.bashrc; ray stop --force' > "$LOGS/stop-worker.log" 2>&1
log "stopped the worker node's Ray while it ran a trial"
wait $RUN_A || { log "run A failed"; exit 1; }
log "run A finished"

# 3. run B in tmux; its driver is killed after the first finished trial, then resumed
submit ctest-b --tmux > "$LOGS/run-b.log" 2>&1
"${CHECK[@]}" wait-finished-children --name ctest-b --count 1 --timeout 420
# The driver: the python process running the submitted script (in the head's own PID namespace).
ray exec "$CFG" "kill -KILL \$(pgrep -f '^[^ ]*python[^ ]* [^ ]*full_benchmark[.]py')" \
  > "$LOGS/kill-driver.log" 2>&1
log "killed run B's driver"
ray exec "$CFG" 'tmux kill-server' > /dev/null 2>&1 || true
ray submit --tmux "$CFG" experiments/full_benchmark.py -- --preset "$SUITE" --name ctest-b \
  --synth "'$SYNTH'" --quiet --resume ctest-b > "$LOGS/run-b-resume.log" 2>&1
"${CHECK[@]}" wait-parent --name ctest-b --status FINISHED --timeout 420
ray exec "$CFG" 'tmux capture-pane -p -S -60' > "$LOGS/run-b-resume-output.log" 2>&1 || true
ray exec "$CFG" 'tmux kill-server' > /dev/null 2>&1 || true  # the finished driver's pane
log "run B resumed and finished"

# 4. what the cluster holds
if [ "$MODE" = s3 ]; then
  "${CHECK[@]}" final --runs ctest-a ctest-b --stopped-worker-run ctest-a --s3-env "$S3_ENV"
  "${CHECK[@]}" no-local-results
  # The worker rebuilds the tables through the head's MLflow server, without any S3 credentials.
  "${SSH[@]}" root@127.0.0.2 '. ~/.bashrc; env -u AWS_ENDPOINT_URL AWS_SHARED_CREDENTIALS_FILE=/dev/null \
    AWS_CONFIG_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true msreid report --experiment msreid-benchmark' \
    > "$LOGS/report.log" 2>&1
  grep -q "RGB-N-T MSN" "$LOGS/report.log" || { log "msreid report on the worker: no table"; exit 1; }
  log "the worker rebuilt the tables (msreid report) through MLflow, without S3 credentials"
  "${CHECK[@]}" no-secret --s3-env "$S3_ENV"
else
  "${CHECK[@]}" final --runs ctest-a ctest-b --stopped-worker-run ctest-a
fi
# MLflow: basic auth on every address; the head's localhost:5000 (the end of the tunnel that
# `ray attach -p 5000` opens) serves it.
"${CHECK[@]}" mlflow-auth
ray exec "$CFG" "python -c \"import urllib.request as u; u.urlopen('http://localhost:5000/health')\"" \
  > "$LOGS/mlflow-localhost.log" 2>&1
log "checks passed"

# 5. ray down
timeout 300 ray down -y "$CFG" > "$LOGS/ray-down.log" 2>&1
"${CHECK[@]}" no-leftovers --ns-pids "${NS_PIDS[@]}" --timeout 60
log "ray down left no Ray/MLflow process on either node"
