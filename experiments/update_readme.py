"""Rewrite the README's smoke tables from what a benchmark run printed (``make readme-tables``).

  python experiments/full_benchmark.py | tee runs/smoke_benchmark.txt
  python experiments/update_readme.py runs/smoke_benchmark.txt [--readme README.md]

Takes the printed tables (from the first ``**Table`` caption to the last
``check:`` line) and puts them between the README's
``<!-- smoke-tables:begin -->`` / ``<!-- smoke-tables:end -->`` markers, and
the printed ``wall time N s`` into the sentence ``took N s wall``. So the
README shows exactly what ``make benchmark`` printed on the current code.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

BEGIN, END = "<!-- smoke-tables:begin -->", "<!-- smoke-tables:end -->"


def tables_block(output: str) -> str:
    """The tables and check lines of a benchmark's output; ValueError when there are none."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("**Table")]
    checks = [i for i, line in enumerate(lines) if line.startswith(("check: ", "CHECK FAILED: "))]
    if not starts or not checks or checks[-1] < starts[0]:
        raise ValueError("no '**Table' caption followed by a 'check:' line in the output")
    return "\n".join(lines[starts[0]:checks[-1] + 1]).strip()


def rewrite(readme: str, output: str) -> str:
    """``readme`` with the block between the markers and the wall time taken from ``output``."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise ValueError(f"the README needs exactly one {BEGIN} and one {END}")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    new = f"{head}{BEGIN}\n{tables_block(output)}\n{END}{tail}"
    wall = re.search(r"^wall time (\d+) s", output, flags=re.M)
    if wall:
        new = re.sub(r"took \d+ s wall", f"took {wall.group(1)} s wall", new)
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="a file holding what full_benchmark.py printed")
    parser.add_argument("--readme", default=str(Path(__file__).resolve().parents[1] / "README.md"))
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    try:
        text = rewrite(readme.read_text(), Path(args.output).read_text())
    except (OSError, ValueError) as exc:
        print(f"update_readme: error: {exc}", file=sys.stderr)
        return 2
    readme.write_text(text)
    print(f"update_readme: {readme} now shows the tables of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
