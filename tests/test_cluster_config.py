"""cluster.yaml / cluster-onprem.yaml pass Ray's own launcher validator."""

from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_cluster_config_is_valid(name):
    raw = yaml.safe_load((ROOT / name).read_text())
    config = prepare_config(raw)
    validate_config(config)
    # The project reaches every node (ray submit copies only the script) ...
    assert config["file_mounts"] == {"~/msreid": "."}
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "-e ~/msreid" in setup
    # ... and an MLflow server runs on the head, on the private address only.
    start = " ".join(config["head_start_ray_commands"])
    assert "mlflow server" in start and "--allowed-hosts" in start
    assert "--host $PRIVATE_IP" in start and "0.0.0.0" not in start
    assert "--backend-store-uri sqlite:///" in start and "--artifacts-destination" in start


def test_aws_cluster_has_cpu_head_and_autoscaling_gpu_workers():
    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    assert workers["node_config"]["InstanceType"].startswith(("g", "p"))
    assert "s3://" in " ".join(config["setup_commands"] + config["head_start_ray_commands"])


def test_validator_rejects_a_broken_config():
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    raw["available_node_types"]["gpu_worker"]["min_workrs"] = 1  # typo
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))
