"""``lit-vision check``: scan a split folder; exit 1 when it has errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lit_vision.check import scan_dataset
from lit_vision.commands.parsing import command_parser, parse
from lit_vision.errors import DataError


def check(
    root: str, decode: Literal["full", "verify", "none"] = "full", size: int = 64, limit: int = 10
) -> int:
    """Scan a split folder and print the findings.

    Args:
        root: The split folder (train/ val/ [test/]).
        decode: full: decode every pixel (finds truncated files); verify: headers only; none:
            list and hash only.
        size: Side the full decode resizes to.
        limit: Files listed per kind of problem.

    Returns:
        0 when the scan found no errors, 1 otherwise.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"--data.root {folder} is not a folder")
    report = scan_dataset(folder, decode=decode, size=size)
    print(report.describe(limit))
    return 0 if report.ok else 1


def main(args: list[str]) -> int:
    """Parse ``--data.root`` and the scan options, then :func:`check`."""
    parser = command_parser(
        "check",
        "Scan a split folder for unreadable images, stray files, "
        "class mismatches and leaks between splits.",
    )
    parser.add_argument(
        "--data.root", required=True, help="The split folder (train/ val/ [test/])."
    )
    parser.add_function_arguments(check, skip={"root"})
    cfg = parse(parser, args)
    return check(cfg.pop("data")["root"], **cfg)
