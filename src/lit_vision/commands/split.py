"""``lit-vision split``: raw class folders -> ROOT/train, ROOT/val, ROOT/test, verified."""

from __future__ import annotations

from lit_vision.commands.parsing import function_parser, parse
from lit_vision.split import split_dataset


def main(args: list[str]) -> int:
    """Parse the options of :func:`lit_vision.split.split_dataset` and split; 0 when verified."""
    split_dataset(**parse(function_parser("split", split_dataset, skip={"quiet"}), args))
    return 0
