"""Command-line flags generated from a frozen options dataclass, and the dataclass back from them.

One ``--flag`` per field (``max_concurrent_trials`` -> ``--max-concurrent-trials``),
its type, default, help and choices taken from the field (``metadata["help"]``,
``metadata["choices"]``), so a script's flags cannot drift from the options it
fills. The type decides the argparse form:

* ``int`` / ``float`` / ``str`` (optionally ``| None``): one value;
* ``tuple[T, ...]``: the flag repeats (``--data a --data b``), values of type T;
* ``dict``: a JSON object (``--synth '{"ids": 20}'``);
* ``bool``: a switch.

Per-field ``overrides`` (argparse keyword arguments, plus ``flag`` for another
flag name) cover what a type cannot say: a metavar, ``nargs``, a longer help.

``command_line`` goes the other way: the flags that reproduce a parsed namespace,
for messages that print the command to run again (``--resume NAME``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import types
import typing
from dataclasses import MISSING, Field, fields
from typing import Any


def _value_type(hint: Any) -> Any:
    """``X`` for ``X | None`` / ``Optional[X]``, else ``hint``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _argparse_kwargs(f: Field, hint: Any) -> dict[str, Any]:
    """argparse keyword arguments for one field, from its type, default and help."""
    kind, default = _value_type(hint), _default(f)
    kwargs: dict[str, Any] = {"default": default, "help": f.metadata.get("help")}
    if "choices" in f.metadata:  # the field's closed set of values, written once beside it
        kwargs["choices"] = f.metadata["choices"]
    if kind is bool:
        kwargs["action"] = "store_true"
    elif kind in (int, float, str):
        kwargs["type"] = kind
    elif typing.get_origin(kind) is tuple:
        kwargs.update(action="append", type=typing.get_args(kind)[0],
                      default=None if default is None else list(default))
    elif kind is dict or typing.get_origin(kind) is dict:
        kwargs["type"] = json.loads
    else:
        raise TypeError(f"field {f.name}: no command-line form for {hint!r}; skip it")
    return kwargs


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type,
                            skip: tuple[str, ...] = (),
                            overrides: dict[str, dict[str, Any]] | None = None,
                            show_defaults: bool = False) -> None:
    """Add one flag per field of the dataclass ``cls`` (except ``skip``) to ``parser``."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        kwargs = _argparse_kwargs(f, hints[f.name]) | (overrides or {}).get(f.name, {})
        flag = kwargs.pop("flag", "--" + f.name.replace("_", "-"))
        if show_defaults and kwargs.get("help"):
            kwargs["help"] += " (default: %(default)s)"
        parser.add_argument(flag, dest=f.name, **kwargs)


def options_from_args(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """``cls`` filled from the parsed flags (repeated flags as tuples), then from ``given``."""
    values = {}
    for f in fields(cls):
        if f.name in given or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values, **given)


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 drop: tuple[str, ...] = ()) -> list[str]:
    """The flags that make ``parser`` parse to ``args`` again: every optional whose value is
    not its default, in the parser's order, except the destinations in ``drop``."""
    out: list[str] = []
    for action in parser._actions:  # argparse's list of arguments (public since 3.0 in practice)
        if not action.option_strings or action.dest in drop or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = max(action.option_strings, key=len)  # the long form
        if action.nargs == 0:  # a switch (store_true / store_const)
            out.append(flag)
        elif action.nargs == "?" and value == action.const:
            out.append(flag)
        elif isinstance(value, list) and action.nargs in ("+", "*"):
            out += [flag, *map(_flag_value, value)]
        elif isinstance(value, list):  # action="append": the flag once per value
            for item in value:
                out += [flag, _flag_value(item)]
        else:
            out += [flag, _flag_value(value)]
    return out


def _flag_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)


def script_command(script: str, parser: argparse.ArgumentParser, args: argparse.Namespace,
                   drop: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``("python", SCRIPT, *flags)``: the command that runs ``script`` with ``args`` again.

    SCRIPT is relative to the working directory when it lies below it (as the docs spell it).
    """
    path = os.path.relpath(script)
    return ("python", script if path.startswith("..") else path, *command_line(parser, args, drop))


def shell_command(argv: tuple[str, ...] | list[str]) -> str:
    """``argv`` quoted for a POSIX shell, ready to copy."""
    return shlex.join(argv)
