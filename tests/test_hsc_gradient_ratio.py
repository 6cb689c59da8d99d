"""experiments/hsc_gradient_ratio.py run as documented in docs/MODELS.md (tiny sizes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_hsc_gradient_ratio_script_prints_sum_as_batch_times_mean():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    out = subprocess.run(
        [sys.executable, "experiments/hsc_gradient_ratio.py", "--steps", "2", "--every", "1",
         "--ids", "4"], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    body = [[float(c) for c in r] for r in rows if r[0].strip().isdigit()]
    assert [r[0] for r in body] == [0, 1, 2]
    for _, paper_mean, paper_sum, official_mean, official_sum in body:
        # same batch and weights: the sum over 16 samples is 16 x their mean (3 digits printed)
        assert paper_sum == pytest.approx(16 * paper_mean, rel=1e-2)
        assert official_sum == pytest.approx(16 * official_mean, rel=1e-2)
