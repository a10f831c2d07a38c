"""Split raw class folders (RAW/CLASS/*) into ROOT/train, ROOT/val and ROOT/test, verified.

The steps live one per module: ``source`` walks the raw folder link-safely, ``split_plan``
decides each image's split, this module copies under ``split_lock``, ``split_verify`` checks the
result against the manifest and the source, and ``split_resume`` completes an interrupted run.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from lit_vision.errors import SplitError
from lit_vision.images import file_sha256
from lit_vision.progress import progress
from lit_vision.source import Skipped, SourceScan, scan_source
from lit_vision.split_lock import LOCK, locked, refuse_if_locked
from lit_vision.split_plan import SPLITS, Assignment, group_key, plan_split
from lit_vision.split_resume import (
    PLAN,
    check_resumable,
    clean_partial,
    read_plan,
    same_file,
    write_plan,
)
from lit_vision.split_verify import MANIFEST, read_manifest, verify_split, write_manifest

__all__ = [
    "LOCK",
    "MANIFEST",
    "PLAN",
    "SPLITS",
    "Assignment",
    "LinkMode",
    "Skipped",
    "SourceScan",
    "SplitError",
    "copy_split",
    "group_key",
    "plan_split",
    "scan_source",
    "split_dataset",
    "verify_split",
]

LinkMode = Literal["copy", "hardlink"]
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _place(source: Path, target: Path, link: LinkMode) -> None:
    """Copy (or hard-link) one file atomically: a crash never leaves a half-written image.

    ``source`` is the resolved file. It is opened (or linked) without following a final link,
    so a source swapped for a link after the scan fails instead of bringing its target along;
    nothing in ``--dst`` is ever a symbolic link.

    Args:
        source: The resolved source file.
        target: Where it goes below ``--dst``.
        link: ``copy`` or ``hardlink``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    if link == "hardlink":
        # link(2) on a symbolic link links the link itself (an absolute one would point outside).
        os.link(source, tmp, follow_symlinks=False)
        if tmp.is_symlink():
            tmp.unlink()
            raise OSError(f"{source} is a symbolic link")
    else:
        with open(os.open(source, os.O_RDONLY | _NOFOLLOW), "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            stat = os.fstat(fin.fileno())
        os.chmod(tmp, stat.st_mode & 0o7777)
        os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(tmp, target)


def copy_split(
    assignments: list[Assignment],
    dst: Path,
    link: LinkMode,
    *,
    resume: bool = False,
    show_progress: bool = False,
) -> list[dict[str, str | int]]:
    """Place every assigned image below ``dst/SPLIT/CLASS/``.

    Args:
        assignments: The plan (``plan_split``).
        dst: The destination folder.
        link: ``copy`` or ``hardlink``.
        resume: Keep copies a previous run already placed intact.
        show_progress: A progress bar on stderr (large splits only).

    Returns:
        The manifest's rows, one per image, in the order of ``assignments``.
    """
    rows: list[dict[str, str | int]] = []
    for a in progress(
        assignments,
        len(assignments),
        "copying" if link == "copy" else "linking",
        enabled=show_progress,
    ):
        target = dst / a.split / a.label / a.relpath
        try:
            if not (resume and same_file(a.source, target)):
                _place(a.source, target, link)
        except OSError as err:
            raise SplitError(f"cannot {link} {a.source} to {target}: {err}") from None
        rows.append(
            {
                "relpath": a.relpath,
                "class": a.label,
                "split": a.split,
                "size": a.source.stat().st_size,
                "sha256": file_sha256(a.source),
            }
        )
    return rows


def _check_dst(dst: Path) -> None:
    """One line for a ``--dst`` that cannot be a folder."""
    if dst.is_symlink() and not dst.exists():
        raise SplitError(
            f"--dst {dst} is a symbolic link to {os.readlink(dst)}, which does not exist"
        )
    if dst.exists() and not dst.is_dir():
        raise SplitError(f"--dst {dst} exists and is not a folder")


def _check_dst_state(dst: Path, resume: bool, plan: dict[str, Any]) -> None:
    """Refuse a non-empty ``dst`` unless resuming the same plan (a lock file is not content)."""
    if dst.is_dir() and any(p.name != LOCK for p in dst.iterdir()):
        if not resume:
            raise SplitError(
                f"--dst {dst} exists and is not empty; choose a new folder "
                "(or --resume true to complete an interrupted split)"
            )
        check_resumable(dst, plan)


def _counts(pairs: list[tuple[str, str]]) -> dict[str, Counter[str]]:
    """Per split, the number of images per class, from ``(split, class)`` pairs."""
    counts: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    for split, label in pairs:
        counts[split][label] += 1
    return counts


def split_dataset(
    src: str | Path,
    dst: str | Path,
    val: float = 0.15,
    test: float = 0.0,
    seed: int = 0,
    group_regex: str | None = None,
    link: LinkMode = "copy",
    quiet: bool = False,
    resume: bool = False,
    verify: bool = False,
    follow_symlinks: bool = False,
) -> dict[str, Counter[str]]:
    r"""Split raw class folders into ``dst/{train,val,test}/CLASS/`` and verify the result.

    Args:
        src: Raw folder, one sub-folder per class (images at any depth below it). Hidden files
            and folders (name starting with ``.``) are never data: left out, and counted in the
            summary.
        dst: Destination; must not exist or be empty. Locked while split writes, so a second
            split into the same ``dst`` refuses instead of interleaving.
        val: Fraction of each class for validation (0 for none).
        test: Fraction of each class for testing (0 for none).
        seed: Seed of the deterministic shuffle.
        group_regex: Regex on file names; images with the same key (first capture group, or
            whole match) land in the same split, e.g. ``'^(\d+)_'`` for GTSRB tracks.
        link: ``copy`` (default) or ``hardlink`` (no extra disk; same filesystem only). Both
            read the resolved source file; ``dst`` never holds a symbolic link.
        quiet: Do not print the per-class table or progress bars.
        resume: Complete an interrupted split into ``dst``: same source and options (checked
            against ``dst/split_plan.json``); files already copied intact are kept, temporary
            ``.part`` files removed, the rest copied.
        verify: Only re-check an existing ``dst`` against ``src``, byte for byte (both hashed),
            and report; nothing is written.
        follow_symlinks: Also take files and folders that links lead to outside ``src``. By
            default nothing outside ``src`` (after resolving links) enters ``dst``: such links
            are skipped. Either way, links looping back to a folder being walked, broken links,
            and second paths to a file already taken (its own path wins over links to it, else
            the first in sorted order) are skipped; the summary counts each kind of skip
            and names the first few.

    Returns:
        Per split, the number of images per class.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    _check_dst(dst)
    if verify:
        return _verify_only(src, dst, quiet, follow_symlinks)
    plan = {
        "src": str(src.resolve()),
        "val": val,
        "test": test,
        "seed": seed,
        "group_regex": group_regex,
        "link": link,
        "follow_symlinks": follow_symlinks,
    }
    _check_dst_state(dst, resume, plan)  # early, before a long scan; again below under the lock
    if dst.resolve().is_relative_to(src.resolve()):
        raise SplitError(f"--dst {dst} is inside --src {src}")
    assignments, scan = plan_split(src, val, test, seed, group_regex, follow_symlinks)
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SplitError(f"cannot create --dst {dst}: {err}") from None
    with locked(dst):
        _check_dst_state(dst, resume, plan)
        if resume:
            clean_partial(dst, assignments)
        write_plan(dst, plan)
        write_manifest(
            dst, copy_split(assignments, dst, link, resume=resume, show_progress=not quiet)
        )
        problems = verify_split(src, dst, follow_symlinks=follow_symlinks, show_progress=not quiet)
    if problems:
        raise SplitError("split verification failed: " + "; ".join(problems[:5]))
    counts = _counts([(a.split, a.label) for a in assignments])
    if not quiet:
        _print_table(counts, len(assignments), scan, dst)
    for line in scan.notes():  # even when quiet: what was left out is never silent
        print(line, file=sys.stderr)
    return counts


def _print_table(counts: dict[str, Counter[str]], total: int, scan: SourceScan, dst: Path) -> None:
    """The per-class table of a finished split, and what was left out."""
    used = [s for s in SPLITS if counts[s]]
    labels = sorted(set().union(*(counts[s] for s in used)))
    width = max(5, *(len(c) for c in labels))
    print(f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in used))
    for c in labels:
        print(f"{c:<{width}} " + " ".join(f"{counts[s][c]:>7}" for s in used))
    print(f"{'total':<{width}} " + " ".join(f"{sum(counts[s].values()):>7}" for s in used))
    left_out = (
        f"; left out {len(scan.skipped)} skipped path(s) and {len(scan.hidden)} hidden image(s), "
        "listed below"
        if scan.skipped or scan.hidden
        else ""
    )
    print(
        f"verified: all {total} source images are in exactly one split, byte-identical "
        f"(manifest: {dst / MANIFEST}){left_out}"
    )
    if scan.others:
        print(
            f"not copied: {len(scan.others)} non-image file(s), e.g. {scan.others[0]}",
            file=sys.stderr,
        )


def _verify_only(
    src: Path, dst: Path, quiet: bool, follow_symlinks: bool
) -> dict[str, Counter[str]]:
    """``split --verify``: re-check ``dst`` against ``src`` byte for byte; nothing is written."""
    refuse_if_locked(dst)
    if (dst / PLAN).is_file():  # scan src as the split did
        follow_symlinks = follow_symlinks or bool(read_plan(dst).get("follow_symlinks", False))
    problems = verify_split(
        src, dst, against_source=True, follow_symlinks=follow_symlinks, show_progress=not quiet
    )
    if problems:
        raise SplitError(
            f"--verify: {len(problems)} problem(s) in {dst}: "
            + "; ".join(problems[:5])
            + (" ..." if len(problems) > 5 else "")
        )
    rows = read_manifest(dst)
    if not quiet:
        print(
            f"verified: all {len(rows)} images of {dst} match {src} byte for byte, each in exactly one split"
        )
    for line in scan_source(src, follow_symlinks).notes():
        print(line, file=sys.stderr)
    return _counts([(r["split"], r["class"]) for r in rows])
