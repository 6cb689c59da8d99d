"""The artifact files a final test writes are the ones the tracking layer logs, under the
names they have always had (``msreid.evaluation.names``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from msreid.evaluation import RankResult, names
from msreid.tracking import trial_logging
from msreid.train.evaluate import write_artifacts

FILES = ["cmc.csv", "ranking.json", "missing_modality.csv", "per_challenge.csv",
         "cross_spectral.csv"]


def test_the_final_test_writes_every_artifact_the_tracking_logs(tmp_path):
    res = RankResult(np.array([0.5, 1.0]), 0.4, 0.2, 2, 1)
    challenges = pd.DataFrame([{"challenge": "normal", "num_queries": 2, "mAP": 0.4}])
    written = write_artifacts(tmp_path, res, {"r": res}, challenges, [{"query_row": 0}],
                              {("r", "r"): res})
    assert written == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    assert (tmp_path / "cmc.csv").read_text().splitlines() == ["rank,cmc", "1,0.5", "2,1.0"]
    assert (tmp_path / "cross_spectral.csv").read_text().splitlines()[0] == \
        "query,gallery,mAP,R1,R5,R10,mINP"
    assert sorted(names.ARTIFACT_FILES) == sorted(FILES)
    assert trial_logging.PERCENT_FILES == ("cmc.csv", "missing_modality.csv", "per_challenge.csv")


def test_optional_artifacts_are_left_out_when_there_is_nothing_to_write(tmp_path):
    res = RankResult(np.array([1.0]), 1.0, 1.0, 1, 0)
    assert write_artifacts(tmp_path, res, None, None, []) == ["cmc.csv", "ranking.json"]
