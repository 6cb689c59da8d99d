"""trainable.TrialReport: in the trial's own training thread (local mode) each epoch goes to Tune
with tune.report, in order; elsewhere (a Train controller) through Ray's TuneReportCallback.
Through the queue in local mode, the trial's final report could overtake the last epoch's item
and the trial's main thread then blocked forever (docstring of TrialReport)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from msreid.orchestration import trainable


class Forward:
    def __init__(self):
        self.calls = []

    def after_report(self, run_context, metrics, checkpoint):
        self.calls.append((metrics, checkpoint))


def _report(monkeypatch):
    reported = []
    monkeypatch.setattr(trainable, "TuneReportCallback", Forward)
    monkeypatch.setattr(trainable.tune, "report", reported.append)
    return trainable.TrialReport(), reported


def test_in_the_training_thread_each_epoch_is_reported_to_tune_directly(monkeypatch):
    callback, reported = _report(monkeypatch)
    callback.after_report(None, [{"epoch": 0, "val/mAP": 0.5}], None)
    callback.after_report(None, [{"epoch": 1, "val/mAP": 0.6}, {"epoch": 1, "val/mAP": 0.1}],
                          SimpleNamespace(path="/runs/x/checkpoint_epoch_1"))
    assert reported == [{"epoch": 0, "val/mAP": 0.5},
                        {"epoch": 1, "val/mAP": 0.6, "checkpoint_path": "/runs/x/checkpoint_epoch_1"}]
    assert callback.forward.calls == []


def test_elsewhere_the_report_goes_through_rays_queue_callback(monkeypatch):
    callback, reported = _report(monkeypatch)
    other = threading.Thread(target=callback.after_report, args=(None, [{"epoch": 0}], None))
    other.start()
    other.join()
    assert reported == [] and callback.forward.calls == [([{"epoch": 0}], None)]
