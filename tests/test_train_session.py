"""The two training sessions' bookkeeping, without a Ray cluster: checkpoints, callbacks, resume."""

from __future__ import annotations

import json

import torch

from msreid.train import checkpoint as ck
from msreid.train.ray_runtime import SNAPSHOT_FILE
from msreid.train.session import LocalSession, RaySession


class Recorder:
    def __init__(self):
        self.calls = []

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.calls.append((run_context, metrics, checkpoint.path if checkpoint else None))


def _write(session: LocalSession, epoch) -> str:
    meta = {"epoch": epoch if epoch != "final" else 2}
    return str(ck.write_checkpoint(session.checkpoint_dir(epoch), {ck.META_FILE: meta}))


def test_local_session_reports_to_callbacks_and_keeps_the_two_newest(tmp_path):
    rec = Recorder()
    session = LocalSession(False, str(tmp_path / "run"), {"train": "ds"}, [rec])
    assert session.latest_checkpoint() is None and LocalSession.resume_epoch(session.run_dir) == 0
    assert (session.rank, session.world, session.distributed) == (0, 1, False)
    assert session.dataset_shard("train") == "ds"
    paths = []
    for epoch in (0, 1, 2, "final"):
        paths.append(_write(session, epoch))
        session.report({"epoch": epoch}, session.checkpoint_dir(epoch))
    session.report({"epoch": "no checkpoint"}, None)
    # Ray's controller passes a list with rank 0's metrics; local mode has no run context
    assert rec.calls == [(None, [{"epoch": e}], p) for e, p in zip((0, 1, 2, "final"), paths)] \
        + [(None, [{"epoch": "no checkpoint"}], None)]
    left = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert left == ["checkpoint_epoch_2", "checkpoint_epoch_final"]
    assert session.latest_checkpoint().path == paths[-1]
    assert LocalSession.resume_epoch(session.run_dir) == 3  # final's meta says epoch 2


def test_local_session_model_stays_unwrapped(tmp_path):
    model = torch.nn.Linear(2, 2)
    assert LocalSession(False, str(tmp_path), {}).prepare_model(model) is model


def test_ray_resume_epoch_reads_rays_checkpoint_snapshot(tmp_path):
    assert RaySession.resume_epoch(str(tmp_path)) == 0  # no snapshot yet
    ck.write_checkpoint(tmp_path / "checkpoint_2026", {ck.META_FILE: {"epoch": 4}})
    (tmp_path / SNAPSHOT_FILE).write_text(json.dumps(
        {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_2026"}}))
    assert RaySession.resume_epoch(str(tmp_path)) == 5
    (tmp_path / SNAPSHOT_FILE).write_text("{}")  # unreadable record: start from scratch
    assert RaySession.resume_epoch(str(tmp_path)) == 0
