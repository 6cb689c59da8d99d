"""cluster.yaml / cluster-onprem.yaml pass Ray's own launcher validator, and the node scripts
they run behave on re-runs. (The real 2-node cluster run is `make cluster-test`.)"""

import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "experiments" / "cluster"


def _config(name):
    return prepare_config(yaml.safe_load((ROOT / name).read_text()))


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_cluster_config_is_valid(name):
    config = _config(name)
    validate_config(config)
    # The project reaches every node (ray submit copies only the script) ...
    assert config["file_mounts"] == {"~/msreid": "."}
    assert config["setup_commands"][-1] == "bash ~/msreid/experiments/cluster/node.sh setup"
    # ... the head's Ray token and MLflow password reach the workers ...
    assert set(config["cluster_synced_files"]) == {"~/.ray/auth_token",
                                                   "~/.msreid/secrets/mlflow_password"}
    assert config["head_setup_commands"][-1] == "bash ~/msreid/experiments/cluster/node.sh secrets"
    # ... every node pins the address the launcher reached it at, and the head runs MLflow.
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "--node-ip-address=$(msreid_node_ip)" in head and "--node-ip-address=$(msreid_node_ip)" in workers
    assert head.endswith("node.sh mlflow-restart")
    assert workers.endswith("node.sh follow-head $RAY_HEAD_IP 6379")
    # The breaks of issue 10 are gone for good (see docs/BENCHMARK.md, "On a cluster").
    text = (ROOT / name).read_text() + (CLUSTER / "node.sh").read_text() + (
        CLUSTER / "node_env.sh").read_text()
    for bad in ("hostname -I", "pgrep -f", "grep -q", "RAY_AUTH_MODE=disabled"):
        assert bad not in text, bad


def test_onprem_head_selects_the_autoscaler_that_launches_local_workers():
    config = _config("cluster-onprem.yaml")
    (start,) = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    assert "RAY_enable_autoscaler_v2=0 ray start --head" in start
    assert "$MSREID_RAY_START_ARGS" in start


def test_aws_cluster_has_cpu_head_and_autoscaling_gpu_workers():
    config = _config("cluster.yaml")
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    assert workers["node_config"]["InstanceType"].startswith(("g", "p"))
    assert "MSREID_SHARED=s3://" in " ".join(config["initialization_commands"])


def test_validator_rejects_a_broken_config():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    raw["available_node_types"]["gpu_worker"]["min_workrs"] = 1  # typo
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


def _shell(home: Path, script: str, **env) -> str:
    full = {"PATH": os.environ["PATH"], "HOME": str(home), **env}
    return subprocess.run(["bash", "-c", script], env=full, capture_output=True, text=True,
                          check=True, timeout=60).stdout


def _site(home: Path, shared: str, venv: str = "") -> None:
    (home / ".msreid").mkdir(parents=True, exist_ok=True)
    # The on-prem YAML's initialization command, with these values.
    (home / ".msreid" / "site.env").write_text(f"MSREID_SHARED={shared}\nMSREID_VENV={venv}\n")


def test_node_environment_follows_the_site_file_on_every_re_run(tmp_path):
    home = tmp_path / "home"
    _site(home, "/nfs/a")
    (home / ".msreid" / "head_ip").write_text("10.0.0.5\n")
    show = (". {env}; . {env}; echo $MSREID_STORAGE_PATH $MSREID_CACHE $MLFLOW_TRACKING_URI "
            "$RAY_ADDRESS $RAY_AUTH_MODE; echo $PATH | tr : '\\n' | grep -c msreid-venv")
    show = show.format(env=CLUSTER / "node_env.sh")
    out = _shell(home, show).split("\n")
    assert out[0] == "/nfs/a/ray_results /nfs/a/cache http://10.0.0.5:5000 auto token"
    assert out[1] == "1"  # sourced twice, PATH holds the venv once
    _site(home, "s3://bucket/x")  # a changed setting, as a second `ray up` writes it
    out = _shell(home, show).split("\n")
    assert out[0] == "s3://bucket/x/ray_results s3://bucket/x/cache http://10.0.0.5:5000 auto token"


def test_node_ip_is_the_address_the_launcher_connected_to(tmp_path):
    home = tmp_path / "home"
    _site(home, "/nfs/a")
    ip = f". {CLUSTER / 'node_env.sh'}; msreid_node_ip"
    assert _shell(home, ip, SSH_CONNECTION="10.1.2.3 50022 192.168.7.11 22").strip() == "192.168.7.11"
    (home / ".msreid" / "node.env").write_text("MSREID_NODE_IP=172.16.0.9\n")
    assert _shell(home, ip, SSH_CONNECTION="10.1.2.3 50022 192.168.7.11 22").strip() == "172.16.0.9"
    (home / ".msreid" / "node.env").unlink()
    with pytest.raises(subprocess.CalledProcessError) as err:
        _shell(home, ip)
    assert "MSREID_NODE_IP" in err.value.stderr


def test_setup_keeps_one_bashrc_line_and_checks_a_given_venv(tmp_path):
    home = tmp_path / "home"
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")  # "has the dependencies"
    (venv / "bin" / "python").chmod(0o755)
    _site(home, str(tmp_path / "shared"), str(venv))
    (home / ".bashrc").write_text("# user's own\n")
    setup = f"bash {CLUSTER / 'node.sh'} setup"
    _shell(home, setup)
    _shell(home, setup)
    lines = (home / ".bashrc").read_text().splitlines()
    assert lines[0] == "# user's own" and len(lines) == 2 and "node_env.sh" in lines[1]
    assert (tmp_path / "shared" / "cache").is_dir()
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")  # imports fail
    with pytest.raises(subprocess.CalledProcessError) as err:
        _shell(home, setup)
    assert "lacks the project's dependencies" in err.value.stderr


def test_a_trial_that_cannot_read_its_manifest_names_the_node_and_the_path(tmp_path):
    from msreid.config import load_config
    from msreid.errors import UserError
    from msreid.orchestration.trainable import check_manifest_here

    missing = tmp_path / "head-only-cache" / "manifest"
    cfg = load_config(ROOT / "experiments" / "presets" / "smoke.yaml", [f"data.manifest={missing}"])
    with pytest.raises(UserError) as err:
        check_manifest_here(cfg, "10.0.0.7")
    assert f"node 10.0.0.7: cannot read the manifest {missing}" in str(err.value)
    assert "MSREID_CACHE" in str(err.value)


def _node_script_calls(config: dict) -> list[str]:
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in config[k] if "node.sh" in c]


def test_aws_config_runs_what_the_object_storage_cluster_test_proves():
    """cluster.yaml: the node scripts of cluster-onprem.yaml (which `make cluster-test-s3` runs
    with the S3 overlay), and the same site.env keys with an s3:// MSREID_SHARED."""
    aws, onprem = _config("cluster.yaml"), _config("cluster-onprem.yaml")
    assert _node_script_calls(aws) == _node_script_calls(onprem)
    s3 = yaml.safe_load((ROOT / "tests" / "cluster" / "site-overlay-s3.yaml").read_text())
    site = " ".join(aws["initialization_commands"])
    tested = " ".join(s3["initialization_commands"])
    keys = {w.split("=")[0] for w in site.split() if "=" in w and w.split("=")[0].isupper()}
    assert keys == {"MSREID_SHARED", "MSREID_VENV"}
    assert keys <= {w.split("=")[0] for w in tested.split() if "=" in w}
    assert "MSREID_SHARED=s3://" in site and "MSREID_SHARED=s3://" in tested
    comments = (ROOT / "cluster.yaml").read_text()
    assert "EFS" not in comments and "pass --data" not in comments
