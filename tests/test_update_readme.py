"""experiments/update_readme.py: the README's smoke tables are rewritten from a benchmark's output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "update_readme.py"

OUTPUT = """trial progress ...
+-------+

**Table 3: RGBNT100 (test set, in %)**

| Modality | mAP |
|---|---|
| RGB one-stream | 16.8 |

check: table3 mAP 55.7 > 16.8: PASS

wall time 812 s; MLflow: sqlite:///x.db
"""

README = """# msreid

intro

<!-- smoke-tables:begin -->
**Table 3: old**

| Modality | mAP |
|---|---|
| RGB one-stream | 16.9 |

check: old: PASS
<!-- smoke-tables:end -->

This run (2 shared cores) took 749 s wall.
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_the_block_and_the_wall_time_are_replaced(tmp_path):
    out, readme = tmp_path / "out.txt", tmp_path / "README.md"
    out.write_text(OUTPUT)
    readme.write_text(README)
    assert _run(str(out), "--readme", str(readme)).returncode == 0
    assert readme.read_text() == """# msreid

intro

<!-- smoke-tables:begin -->
**Table 3: RGBNT100 (test set, in %)**

| Modality | mAP |
|---|---|
| RGB one-stream | 16.8 |

check: table3 mAP 55.7 > 16.8: PASS
<!-- smoke-tables:end -->

This run (2 shared cores) took 812 s wall.
"""


def test_output_without_tables_is_an_error_and_changes_nothing(tmp_path):
    out, readme = tmp_path / "out.txt", tmp_path / "README.md"
    out.write_text("trial failed: boom\n")
    readme.write_text(README)
    res = _run(str(out), "--readme", str(readme))
    assert res.returncode == 2 and "no '**Table' caption" in res.stderr
    assert readme.read_text() == README


def test_the_project_readme_has_one_block_of_tables():
    text = (ROOT / "README.md").read_text()
    assert text.count("<!-- smoke-tables:begin -->") == text.count("<!-- smoke-tables:end -->") == 1
    block = text.split("<!-- smoke-tables:begin -->")[1].split("<!-- smoke-tables:end -->")[0]
    assert block.strip().startswith("**Table 3") and "\ncheck: " in block


def test_make_readme_tables_runs_the_benchmark_then_the_script():
    res = subprocess.run(["make", "-n", "readme-tables", "VENV=/nonexistent"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    lines = res.stdout.splitlines()
    bench = [i for i, line in enumerate(lines)
             if "experiments/full_benchmark.py" in line and "tee" in line]
    update = [i for i, line in enumerate(lines) if "experiments/update_readme.py" in line]
    assert bench and update and bench[0] < update[0], res.stdout
