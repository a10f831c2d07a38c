"""Split planning: each source image's split, stratified per class, groups kept together."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lit_vision.errors import SplitError
from lit_vision.source import SourceScan, scan_source

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Assignment:
    """One source image and where it goes.

    Attributes:
        source: The resolved source file.
        relpath: Path below the class folder, kept as is in the destination.
        label: The class.
        split: ``train``, ``val`` or ``test``.
    """

    source: Path
    relpath: str
    label: str
    split: str


def group_key(name: str, pattern: re.Pattern[str] | None) -> str:
    """The group a file belongs to: the regex's first capture group, its whole match, or the name."""
    if pattern is None:
        return name
    match = pattern.search(name)
    if match is None:
        return name
    return match.group(1) if pattern.groups else match.group(0)


def _assign_class(
    files: list[tuple[Path, Path]],
    class_dir: Path,
    val: float,
    test: float,
    seed: int,
    pattern: re.Pattern[str] | None,
) -> list[Assignment]:
    """Assign one class's ``(path as found, resolved path)`` pairs, keeping groups together."""
    label = class_dir.name
    groups: dict[str, list[tuple[Path, Path]]] = {}
    for f in files:
        groups.setdefault(group_key(f[0].name, pattern), []).append(f)
    keys = sorted(groups)
    random.Random(f"{seed}/{label}").shuffle(keys)
    n = len(files)
    targets = {"test": round(test * n), "val": round(val * n)}
    out: list[Assignment] = []
    taken: Counter[str] = Counter()
    for i, key in enumerate(keys):
        # The last group always trains, so no class ends up absent from train/.
        if i < len(keys) - 1 and taken["test"] < targets["test"]:
            split = "test"
        elif i < len(keys) - 1 and taken["val"] < targets["val"]:
            split = "val"
        else:
            split = "train"
        taken[split] += len(groups[key])
        out.extend(
            Assignment(real, path.relative_to(class_dir).as_posix(), label, split)
            for path, real in groups[key]
        )
    return out


def _check_options(
    src: Path, val: float, test: float, group_regex: str | None
) -> re.Pattern[str] | None:
    """One line for an unusable ``--src``, ``--val``/``--test`` or ``--group_regex``; the compiled regex."""
    if not src.is_dir():
        raise SplitError(f"--src {src} is not a folder")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise SplitError(f"--val {val} and --test {test} must be in [0, 1) and sum below 1")
    try:
        return re.compile(group_regex) if group_regex else None
    except re.error as err:
        raise SplitError(f"--group_regex {group_regex!r} is not a valid regex: {err}") from None


def _check_scan(src: Path, scan: SourceScan) -> None:
    """Refuse stray images directly in ``src``, and a ``src`` without any class of images."""
    if scan.stray:
        raise SplitError(
            f"{len(scan.stray)} image(s) directly in --src {src}, outside any class folder, "
            f"e.g. {scan.stray[0]}"
        )
    if not scan.images:
        notes = scan.notes()
        raise SplitError(
            f"--src {src} has no class sub-folders with images (expected RAW/CLASS/image files)"
            + (f"; {notes[0]}" if notes else "")
        )


def plan_split(
    src: Path,
    val: float = 0.15,
    test: float = 0.0,
    seed: int = 0,
    group_regex: str | None = None,
    follow_symlinks: bool = False,
) -> tuple[list[Assignment], SourceScan]:
    """Decide each image's split, stratified per class and keeping groups together.

    Args:
        src: The raw folder, one sub-folder per class.
        val: Fraction of each class for validation.
        test: Fraction of each class for testing.
        seed: Seed of the deterministic shuffle (per class).
        group_regex: Regex on file names whose key keeps a group in one split.
        follow_symlinks: Also take what links lead to outside ``src``.

    Returns:
        The assignments (sorted by class, then path; ``source`` is the resolved file) and the
        scan of ``src`` (non-image files, hidden images and skipped links: reported, never copied).
    """
    pattern = _check_options(src, val, test, group_regex)
    scan = scan_source(src, follow_symlinks)
    _check_scan(src, scan)
    assignments: list[Assignment] = []
    for class_dir in scan.classes:
        files = scan.images.get(class_dir.name)
        if files:
            assignments += _assign_class(files, class_dir, val, test, seed, pattern)
        elif not any(s.path.is_relative_to(class_dir) for s in scan.skipped):
            # A class emptied by skipped links is listed in the summary; one with nothing is a mistake.
            hidden = sum(p.is_relative_to(class_dir) for p in scan.hidden)
            raise SplitError(
                f"class folder {class_dir} holds no images"
                + (f" ({hidden} hidden image file(s) left out)" if hidden else "")
            )
    return assignments, scan
