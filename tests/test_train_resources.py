"""A run asking for GPUs that no node offers is refused before it starts, naming what is missing
(locally: no GPU; on a cluster: no node offers it, and whether the autoscaler may add one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from msreid.train.resources import missing_gpus


def test_no_gpu_asked_nothing_missing():
    assert missing_gpus(False, 2, [0], joined=False, autoscaler_gpus=None, cuda_here=False) is None


def test_local_machine_without_gpu():
    text = missing_gpus(True, 2, [0], joined=False, autoscaler_gpus=None, cuda_here=False)
    assert "needs 2 GPU(s)" in text and "this machine has 0" in text
    text = missing_gpus(True, 0, [0], joined=False, autoscaler_gpus=None, cuda_here=False,
                        local=True)
    assert "torch.cuda.is_available() is False" in text
    assert missing_gpus(True, 0, [0], joined=False, autoscaler_gpus=None, cuda_here=True,
                        local=True) is None


def test_cluster_without_gpu_nodes_says_whether_autoscaling_may_add_them():
    text = missing_gpus(True, 2, [0, 1], joined=True, autoscaler_gpus=None, cuda_here=False)
    assert "live nodes offer 1 (2 node(s))" in text and "no autoscaler config" in text
    text = missing_gpus(True, 4, [0, 1], joined=True, autoscaler_gpus=2, cuda_here=False)
    assert "at most 2 GPU(s)" in text and "none will be added" in text
    # The autoscaler can start enough GPU nodes: the run waits for them, no error.
    assert missing_gpus(True, 4, [0, 1], joined=True, autoscaler_gpus=8, cuda_here=False) is None
    assert missing_gpus(True, 2, [1, 1], joined=True, autoscaler_gpus=None, cuda_here=False) is None


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_train_with_use_gpu_on_a_cpu_machine_is_one_user_error(ray_session, tmp_path, capsys):
    """`msreid train ... run.use_gpu=true` here: UserError at once, not a 60 s startup timeout."""
    import torch

    from msreid.cli import main
    from msreid.orchestration.datasets import synthetic_manifest

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    manifest = synthetic_manifest({"ids": 4, "cameras": 2, "tuples_per_id": 3, "height": 16,
                                   "width": 32}, root=tmp_path / "cache")
    preset = Path(__file__).resolve().parents[1] / "experiments" / "presets" / "smoke.yaml"
    code = main(["train", "--config", str(preset), f"data.manifest={manifest}", "run.use_gpu=true",
                 "run.num_workers=1", "--storage", str(tmp_path / "r")])
    assert code == 2
    assert "needs 1 GPU(s)" in capsys.readouterr().err
