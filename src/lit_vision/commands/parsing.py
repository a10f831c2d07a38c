"""One way to build a subcommand's parser: jsonargparse, with ``--config`` and ``--print_config``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser


def command_parser(prog: str, description: str) -> ArgumentParser:
    """A strict parser: unknown options are errors, ``--config FILE`` and ``--print_config`` work."""
    parser = ArgumentParser(prog=f"lit-vision {prog}", description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="Options from a YAML/JSON file.")
    return parser


def function_parser(
    prog: str, func: Callable[..., Any], skip: set[str] | None = None
) -> ArgumentParser:
    """A parser whose options are ``func``'s parameters (types, defaults and help from its docstring)."""
    doc = (func.__doc__ or "").strip().splitlines()
    parser = command_parser(prog, doc[0] if doc else prog)
    parser.add_function_arguments(func, skip=skip or set())
    return parser


def parse(parser: ArgumentParser, args: list[str]) -> dict[str, Any]:
    """Parse ``args`` and return the options as a plain dict, without ``--config``."""
    cfg = parser.parse_args(args).as_dict()
    cfg.pop("config", None)
    cfg.pop("__path__", None)
    return cfg
