# shellcheck shell=bash
# The environment of every msreid cluster node: sourced from ~/.bashrc (the launcher's shells
# source it before each command), so `ray start`, the driver of `ray submit` and, through the
# raylet, every trial see the same values. Re-sourcing is harmless; every value is recomputed.
#
#   ~/.msreid/site.env   site values, rewritten at each `ray up` by the YAML's initialization_commands
#                        MSREID_SHARED  storage every node sees at the same path: a directory
#                                       (NFS) or s3://bucket/prefix (endpoint and credentials by
#                                       the AWS conventions: AWS_ENDPOINT_URL, AWS_PROFILE, roles)
#                        MSREID_VENV    empty: ~/msreid-venv built by `make venv`; a path: use that
#                                       existing venv as is (no pip on the nodes)
#   ~/.msreid/node.env   optional, per node: MSREID_RAY_START_ARGS (extra `ray start` flags),
#                        MSREID_NODE_IP (this node's address, when it is not the SSH address)
#   ~/.msreid/head_ip    the head's address, written when the node joins
#   ~/.msreid/secrets/   mlflow_password (head: generated at `ray up`; workers: synced from the head)
MSREID_SHARED=/shared/msreid
MSREID_VENV=
MSREID_RAY_START_ARGS=
[ -f "$HOME/.msreid/site.env" ] && . "$HOME/.msreid/site.env"
[ -f "$HOME/.msreid/node.env" ] && . "$HOME/.msreid/node.env"
export MSREID_SHARED MSREID_RAY_START_ARGS
# S3-compatible storage other than AWS (MinIO, Ceph RGW, SeaweedFS): AWS_ENDPOINT_URL in site.env.
# Credentials stay where the AWS SDKs look for them (~/.aws/credentials, AWS_PROFILE, IAM roles).
for var in AWS_ENDPOINT_URL AWS_PROFILE AWS_REGION AWS_DEFAULT_REGION; do
  if [ -n "${!var:-}" ]; then export "${var?}"; fi
done
MSREID_VENV_GIVEN="${MSREID_VENV:+1}"
export MSREID_VENV="${MSREID_VENV:-$HOME/msreid-venv}"
case ":$PATH:" in *":$MSREID_VENV/bin:"*) ;; *) export PATH="$MSREID_VENV/bin:$PATH" ;; esac
# The code every node runs is the copy `ray up` mounted at ~/msreid (file_mounts), whatever the
# venv has installed; grids and presets are found there too.
export MSREID_PROJECT_DIR="$HOME/msreid"
export PYTHONPATH="$HOME/msreid/platform"
# Both a directory and an s3:// URI: Ray Train/Tune storage, and the generated (synthetic) data,
# written once by the driver and read (checksums verified) from there by every trial.
export MSREID_STORAGE_PATH="$MSREID_SHARED/ray_results"
export MSREID_CACHE="$MSREID_SHARED/cache"
# A driver started on a node (ray submit) joins the running cluster; token auth stays on
# (`ray start` enables it when ~/.ray/auth_token exists; every node has the head's token).
export RAY_ADDRESS=auto
export RAY_AUTH_MODE=token
if [ -s "$HOME/.msreid/head_ip" ]; then
  export MLFLOW_TRACKING_URI="http://$(cat "$HOME/.msreid/head_ip"):5000"
fi
export MLFLOW_TRACKING_USERNAME=admin
if [ -s "$HOME/.msreid/secrets/mlflow_password" ]; then
  MLFLOW_TRACKING_PASSWORD="$(cat "$HOME/.msreid/secrets/mlflow_password")"
  export MLFLOW_TRACKING_PASSWORD
fi

# This node's address: the one the launcher reached it at over SSH (the head_ip / worker_ips of
# the YAML on-prem, the private IP on AWS), not a guess among its interfaces.
msreid_node_ip() {
  if [ -n "${MSREID_NODE_IP:-}" ]; then echo "$MSREID_NODE_IP"; return; fi
  # shellcheck disable=SC2086
  set -- ${SSH_CONNECTION:-}
  if [ -n "${3:-}" ]; then echo "$3"; return; fi
  echo "msreid: cannot tell this node's address (no SSH_CONNECTION): set MSREID_NODE_IP in" \
       "~/.msreid/node.env" >&2
  return 1
}
