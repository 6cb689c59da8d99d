"""The modules a Ray Data decode worker imports leave torch out (docs/PERFORMANCE.md, "Trial
overheads"): every fresh worker process would pay ~2 s of CPU for it, and a worker only needs
torch to resize pieces, which then imports it."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import numpy as np
import msreid.train.pipeline
from msreid.data.transforms import resize, stack_tuples
piece = np.zeros((2, 6, 3), dtype=np.uint8)
stack_tuples([{"rgb": piece}], ("rgb",), (2, 6))   # already at size: no torch
print("before", "torch" in sys.modules)
out = stack_tuples([{"rgb": piece}], ("rgb",), (4, 12))   # a resize: torch, imported now
print("after", "torch" in sys.modules, out.shape)
"""


def test_decode_path_imports_torch_only_to_resize():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "before False" in out.stdout
    assert "after True (1, 1, 3, 4, 12)" in out.stdout
