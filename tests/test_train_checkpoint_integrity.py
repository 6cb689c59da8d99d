"""Checkpoints carry SHA-256 checksums; a resume skips a damaged newest checkpoint (warning naming
it) and uses the newest whole one; when none is whole, one UserError names every path."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch

from msreid.errors import UserError
from msreid.train import checkpoint as ck
from msreid.train.ray_runtime import SNAPSHOT_FILE
from msreid.train.session import LocalSession, RaySession


def write(directory, epoch: int):
    return ck.write_checkpoint(directory, {ck.MODEL_FILE: {"w": torch.full((64,), float(epoch))},
                                           ck.META_FILE: {"epoch": epoch}})


def damage(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else bytes(len(data)))


def test_checksums_are_the_sha256_of_each_file(tmp_path):
    d = write(tmp_path / "c", 0)
    recorded = json.loads((d / ck.CHECKSUM_FILE).read_text())
    assert recorded == {name: hashlib.sha256((d / name).read_bytes()).hexdigest()
                        for name in (ck.META_FILE, ck.MODEL_FILE)}
    assert ck.checkpoint_problem(d) is None


@pytest.mark.parametrize("how", ["truncate", "zero"])
def test_local_resume_falls_back_to_the_newest_whole_checkpoint(tmp_path, how, caplog):
    run = tmp_path / "run"
    for epoch in (0, 1, 2):
        write(run / f"{ck.LOCAL_PREFIX}{epoch}", epoch)
    bad = run / f"{ck.LOCAL_PREFIX}2"
    damage(bad / ck.MODEL_FILE, how)
    with caplog.at_level(logging.WARNING, logger="msreid.train.checkpoint"):
        assert LocalSession.resume_epoch(str(run)) == 2  # epoch 1's checkpoint: continue at 2
        chosen = LocalSession(False, str(run), {}).latest_checkpoint()
    assert chosen.path.endswith(f"{ck.LOCAL_PREFIX}1")
    assert str(bad) in caplog.text and "model.pt" in caplog.text
    assert torch.equal(ck.load_pt(chosen.path, ck.MODEL_FILE)["w"], torch.full((64,), 1.0))


def test_no_whole_checkpoint_is_one_error_naming_each_path(tmp_path):
    run = tmp_path / "run"
    for epoch in (0, 1):
        damage(write(run / f"{ck.LOCAL_PREFIX}{epoch}", epoch) / ck.MODEL_FILE, "zero")
    with pytest.raises(UserError) as err:
        LocalSession.resume_epoch(str(run))
    assert f"{ck.LOCAL_PREFIX}0" in str(err.value) and f"{ck.LOCAL_PREFIX}1" in str(err.value)


def test_checkpoint_without_checksums_is_checked_by_loading(tmp_path):
    d = write(tmp_path / "old", 0)
    (d / ck.CHECKSUM_FILE).unlink()  # as written before checksums existed
    assert ck.checkpoint_problem(d) is None
    damage(d / ck.MODEL_FILE, "truncate")
    assert ck.checkpoint_problem(d).startswith("model.pt does not load")


def test_ray_resume_skips_a_damaged_latest_checkpoint(tmp_path):
    run = tmp_path / "run"
    names = ["checkpoint_2026-12-01_10-00-00.000000", "checkpoint_2026-12-01_10-01-00.000000"]
    for epoch, name in enumerate(names):
        write(run / name, epoch)
    (run / SNAPSHOT_FILE).write_text(json.dumps(
        {"latest_checkpoint_result": {"checkpoint_dir_name": names[1]}}))
    assert RaySession.resume_epoch(str(run)) == 2
    damage(run / names[1] / ck.MODEL_FILE, "zero")
    assert RaySession.resume_epoch(str(run)) == 1  # epoch 0's checkpoint
