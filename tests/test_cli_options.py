"""Flags generated from an options dataclass: one per field, typed, and back to the dataclass."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from msreid.cli_options import add_dataclass_arguments, options_from_args


@dataclass(frozen=True)
class Opts:
    name: str = field(default="a", metadata={"help": "a name"})
    count: int | None = field(default=None, metadata={"help": "how many"})
    data: tuple[str, ...] = field(default=(), metadata={"help": "repeatable"})
    extra: dict = field(default_factory=dict, metadata={"help": "JSON"})
    fast: bool = False
    hidden: object = None
    mode: str = field(default="a", metadata={"help": "one of two", "choices": ("a", "b")})


def parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Opts, skip=("hidden",), **kwargs)
    return p


def test_defaults_round_trip_to_the_dataclass():
    assert options_from_args(Opts, parser().parse_args([])) == Opts()


def test_each_type_has_its_form():
    args = parser().parse_args(["--name", "b", "--count", "3", "--data", "x", "--data", "y",
                                "--extra", '{"ids": 2}', "--fast"])
    assert options_from_args(Opts, args, hidden=7) == Opts("b", 3, ("x", "y"), {"ids": 2}, True, 7)


def test_overrides_rename_and_change_the_form():
    p = parser(overrides={"data": {"flag": "--set", "action": None, "nargs": "+"}})
    assert options_from_args(Opts, p.parse_args(["--set", "u", "v"])).data == ("u", "v")
    with pytest.raises(SystemExit):
        p.parse_args(["--data", "u"])


def test_a_field_without_a_command_line_form_must_be_skipped():
    with pytest.raises(TypeError, match="field hidden"):
        add_dataclass_arguments(argparse.ArgumentParser(), Opts)


def test_choices_come_from_the_field():
    assert options_from_args(Opts, parser().parse_args(["--mode", "b"])).mode == "b"
    with pytest.raises(SystemExit):
        parser().parse_args(["--mode", "c"])
