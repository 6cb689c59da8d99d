#!/usr/bin/env bash
# What cluster.yaml / cluster-onprem.yaml run on a node (the project is mounted at ~/msreid):
#
#   node.sh setup                 every node: .bashrc hook for node_env.sh, the venv
#   node.sh secrets               head: Ray auth token, MLflow admin password (kept across ray up)
#   node.sh mlflow-restart        head: (re)start the MLflow server, stopped again with the head's Ray
#   node.sh set-head IP           worker: remember the head's address (MLflow URI)
#   node.sh follow-head IP PORT   worker: stop this node's Ray once the head's GCS is gone
#
# No process is found by matching command lines (a pattern guard matches the very shell that runs
# it): the MLflow server and the worker watcher are tracked by pid files.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="$HOME/.msreid"
mkdir -p "$STATE"
. "$HERE/node_env.sh"

setup() {
  # One fixed line in ~/.bashrc; deleted and re-added so a re-run never duplicates it. The values
  # live in files that every `ray up` rewrites, so a changed setting takes effect.
  touch "$HOME/.bashrc"
  sed -i '/# msreid-cluster-env$/d' "$HOME/.bashrc"
  echo ". \"\$HOME/msreid/experiments/cluster/node_env.sh\" # msreid-cluster-env" >> "$HOME/.bashrc"
  if [ -n "$MSREID_VENV_GIVEN" ]; then
    "$MSREID_VENV/bin/python" -c "import ray, torch, mlflow, timm" || {
      echo "msreid: MSREID_VENV=$MSREID_VENV lacks the project's dependencies" >&2; exit 2; }
  else
    # The Makefile's venv: torch pinned exactly as for `make test`; a no-op when up to date.
    make -s -C "$HOME/msreid" venv VENV="$MSREID_VENV"
    if [ -n "${MSREID_PIP_EXTRA:-}" ]; then
      # shellcheck disable=SC2086
      "$MSREID_VENV/bin/pip" install --quiet $MSREID_PIP_EXTRA
    fi
  fi
  case "${MSREID_CACHE:-}" in ''|*://*) ;; *) mkdir -p "$MSREID_CACHE" ;; esac
}

secret() {  # secret FILE: a random token in FILE (mode 600), created once
  if [ ! -s "$1" ]; then
    (umask 077; mkdir -p "$(dirname "$1")"; python -c 'import secrets; print(secrets.token_hex(24))' > "$1")
  fi
}

secrets() {
  ray get-auth-token --generate > /dev/null  # ~/.ray/auth_token; `ray start` then requires it
  secret "$STATE/secrets/mlflow_password"
  secret "$STATE/secrets/flask_secret"
  msreid_node_ip > "$STATE/head_ip"
}

stop_group() {  # stop_group PIDFILE: TERM the process group started by start_group
  local pid
  pid="$(cat "$1" 2> /dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null; then
    kill -TERM -- "-$pid" 2> /dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2> /dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2> /dev/null || true
  fi
  rm -f "$1"
}

start_group() {  # start_group PIDFILE LOG CMD...: CMD in its own session, detached from SSH
  setsid nohup "${@:3}" > "$2" 2>&1 < /dev/null &
  echo $! > "$1"
}

mlflow_restart() {
  local ip artifacts
  ip="$(msreid_node_ip)"
  artifacts="$MSREID_SHARED/mlflow-artifacts"
  stop_group "$STATE/mlflow.pid"
  mkdir -p "$HOME/mlflow"
  case "$artifacts" in *://*) ;; *) mkdir -p "$artifacts" ;; esac
  cat > "$STATE/mlflow_auth.ini" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$HOME/mlflow/basic_auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
  # Basic auth (the admin password is the cluster's secret, synced to the workers): bound to all
  # addresses so that the nodes reach it at the head's IP and `ray attach -p 5000` at localhost.
  MLFLOW_AUTH_CONFIG_PATH="$STATE/mlflow_auth.ini" \
  MLFLOW_AUTH_ADMIN_PASSWORD="$(cat "$STATE/secrets/mlflow_password")" \
  MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$STATE/secrets/flask_secret")" \
    start_group "$STATE/mlflow.pid" "$HOME/mlflow/server.log" "$HERE/node.sh" _mlflow-run \
      --app-name basic-auth --host 0.0.0.0 --port 5000 --workers 2 \
      --backend-store-uri "sqlite:///$HOME/mlflow/mlflow.db" --artifacts-destination "$artifacts" \
      --allowed-hosts "$ip:5000,$ip,localhost:5000,localhost,127.0.0.1:5000,127.0.0.1"
  for _ in $(seq 180); do
    if python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:5000/health', timeout=2)" \
        2> /dev/null; then
      echo "MLflow server up on $ip:5000 (log ~/mlflow/server.log)"; return 0
    fi
    kill -0 "$(cat "$STATE/mlflow.pid")" 2> /dev/null || break
    sleep 1
  done
  echo "msreid: the MLflow server did not start; ~/mlflow/server.log:" >&2
  tail -20 "$HOME/mlflow/server.log" >&2
  exit 1
}

mlflow_run() {  # the server, stopped (with its workers: the whole group) when the head's Ray stops
  mlflow server "$@" &
  local server=$!
  sleep 10
  while kill -0 "$server" 2> /dev/null && pgrep -x gcs_server > /dev/null; do sleep 3; done
  kill -TERM 0
}

follow_head() {
  stop_group "$STATE/follow.pid"
  start_group "$STATE/follow.pid" /dev/null "$HERE/node.sh" _follow "$1" "$2"
}

follow() {  # `ray down` runs `ray stop` on the head only: stop here when its GCS stays unreachable
  local misses=0
  while sleep 3; do
    pgrep -x raylet > /dev/null || exit 0  # this node's Ray was stopped some other way
    if timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2> /dev/null; then misses=0; else misses=$((misses + 1)); fi
    if [ "$misses" -ge 3 ]; then ray stop --force > /dev/null 2>&1 || true; exit 0; fi
  done
}

case "${1:-}" in
  setup) setup ;;
  secrets) secrets ;;
  mlflow-restart) mlflow_restart ;;
  _mlflow-run) shift; mlflow_run "$@" ;;
  set-head) echo "$2" > "$STATE/head_ip" ;;
  follow-head) follow_head "$2" "$3" ;;
  _follow) follow "$2" "$3" ;;
  *) echo "usage: node.sh setup|secrets|mlflow-restart|set-head IP|follow-head IP PORT" >&2; exit 2 ;;
esac
