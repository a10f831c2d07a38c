"""Resuming an interrupted split: the recorded plan, leftovers cleaned, intact copies kept."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lit_vision.errors import SplitError
from lit_vision.images import file_sha256
from lit_vision.split_plan import SPLITS, Assignment
from lit_vision.split_verify import entry_key

PLAN = "split_plan.json"
PLAN_DEFAULTS = {"follow_symlinks": False}  # options added later: a plan without them used these


def write_plan(dst: Path, plan: dict[str, Any]) -> None:
    """Record the options before copying, so ``--resume`` can tell the same plan from another."""
    tmp = dst / f".{PLAN}.part"
    tmp.write_text(json.dumps(plan, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, dst / PLAN)


def read_plan(dst: Path) -> dict[str, Any]:
    """The options recorded in ``dst/split_plan.json``; one line when it cannot be read."""
    try:
        return json.loads((dst / PLAN).read_text())
    except (OSError, ValueError) as err:
        raise SplitError(f"--resume: cannot read {dst / PLAN}: {err}") from None


def check_resumable(dst: Path, plan: dict[str, Any]) -> None:
    """Refuse to resume into a folder that is not a partial split of the same plan."""
    if not (dst / PLAN).is_file():
        raise SplitError(f"--resume: {dst} has no {PLAN}, so it is not a split made by this tool")
    previous = read_plan(dst)
    diff = [k for k in plan if previous.get(k, PLAN_DEFAULTS.get(k)) != plan[k]]
    if diff:
        raise SplitError(
            f"--resume: {dst} was split with different options ("
            + ", ".join(
                f"{k} {previous.get(k, PLAN_DEFAULTS.get(k))!r} now {plan[k]!r}" for k in diff
            )
            + ")"
        )


def clean_partial(dst: Path, assignments: list[Assignment]) -> None:
    """Remove temporary files; refuse files the plan does not explain (no duplicates possible)."""
    planned = {(a.split, a.label, a.relpath) for a in assignments}
    unexpected = []
    for split in SPLITS:
        for p in sorted((dst / split).rglob("*")) if (dst / split).is_dir() else []:
            if p.is_symlink():
                unexpected.append(
                    p
                )  # never ours: a copy is replaced, but a link is not overwritten blindly
                continue
            if not p.is_file():
                continue
            if p.name.startswith(".") and p.name.endswith(".part"):
                p.unlink()
                continue
            if (split, *entry_key(p, dst / split)) not in planned:
                unexpected.append(p)
    if unexpected:
        raise SplitError(
            f"--resume: {len(unexpected)} file(s) in {dst} are not part of this split plan, "
            f"e.g. {unexpected[0]}"
        )


def same_file(source: Path, target: Path) -> bool:
    """Whether a previous run already placed an intact copy (size, then SHA-256)."""
    return (
        not target.is_symlink()
        and target.is_file()
        and target.stat().st_size == source.stat().st_size
        and file_sha256(target) == file_sha256(source)
    )
