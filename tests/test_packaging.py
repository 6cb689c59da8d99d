"""The package layout: msreid importable, `platform` still the standard library."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_platform_is_the_standard_library_module():
    import platform

    assert hasattr(platform, "python_version"), platform
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_msreid_help_lists_every_subcommand():
    from msreid.cli import COMMANDS

    out = subprocess.run([sys.executable, "-m", "msreid.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out
