"""The ``msreid`` command: one argparse sub-command per user task.

Each sub-command lives in its own module, which exposes
``add_arguments(parser)`` and ``main(args) -> int``; its docstring's first
line is the sub-command's help. Modules are imported only when needed so
that ``msreid ingest`` does not pay for importing Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from msreid.errors import user_error_message
from msreid.train.ray_runtime import local_ray_environment

# Explicit table of sub-commands (no registry filled by import side effects).
COMMANDS: dict[str, str] = {
    "ingest": "msreid.data.ingest",
    "inspect": "msreid.data.inspect",
    "synth": "msreid.data.synth_cli",
    "report": "msreid.tracking.report",
    "ui": "msreid.tracking.ui",
    "train": "msreid.train.cli",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msreid",
        description="Multi-spectral re-identification: datasets to Parquet manifests, "
        "training on Ray, benchmarks tracked in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only import the module of the chosen sub-command, except for --help listings.
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name in COMMANDS.items():
        if wanted in COMMANDS and name != wanted:
            sub.add_parser(name, help="(see msreid %s --help)" % name)
            continue
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        first = doc.splitlines()[0] if doc else name
        p = sub.add_parser(
            name,
            help=first,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    local_ray_environment()  # before a sub-command imports Ray: a local Ray stays on loopback
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args._module.main(args) or 0)
    except Exception as exc:
        message = user_error_message(exc)
        if message is None:
            raise
        print(f"msreid {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
