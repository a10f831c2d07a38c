"""Split raw class folders (RAW/CLASS/*) into ROOT/train, ROOT/val and ROOT/test, verified."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lit_vision.images import is_image_file

SPLITS = ("train", "val", "test")
MANIFEST = "split_manifest.csv"
LinkMode = Literal["copy", "hardlink"]


class SplitError(ValueError):
    """A problem with split's arguments or folders; the message names the path or option."""


@dataclass(frozen=True)
class Assignment:
    """One source image and where it goes."""

    source: Path
    relpath: str  # path below the class folder, kept as is in the destination
    label: str
    split: str


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def group_key(name: str, pattern: re.Pattern[str] | None) -> str:
    """The group a file belongs to: the regex's first capture group, its whole match, or the name."""
    if pattern is None:
        return name
    match = pattern.search(name)
    if match is None:
        return name
    return match.group(1) if pattern.groups else match.group(0)


def _assign_class(
    files: list[Path], class_dir: Path, label: str, val: float, test: float, seed: int,
    pattern: re.Pattern[str] | None,
) -> list[Assignment]:
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(group_key(f.name, pattern), []).append(f)
    keys = sorted(groups)
    random.Random(f"{seed}/{label}").shuffle(keys)
    n = len(files)
    targets = {"test": round(test * n), "val": round(val * n)}
    out: list[Assignment] = []
    taken = Counter()
    for i, key in enumerate(keys):
        # The last group always trains, so no class ends up absent from train/.
        if i < len(keys) - 1 and taken["test"] < targets["test"]:
            split = "test"
        elif i < len(keys) - 1 and taken["val"] < targets["val"]:
            split = "val"
        else:
            split = "train"
        taken[split] += len(groups[key])
        out.extend(Assignment(f, f.relative_to(class_dir).as_posix(), label, split) for f in groups[key])
    return out


def plan_split(
    src: Path, val: float = 0.15, test: float = 0.0, seed: int = 0, group_regex: str | None = None
) -> tuple[list[Assignment], list[Path]]:
    """Decide each image's split, stratified per class and keeping groups together.

    Returns:
        The assignments (sorted by class, then path) and the non-image files that were found
        (reported, never copied).
    """
    if not src.is_dir():
        raise SplitError(f"--src {src} is not a folder")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise SplitError(f"--val {val} and --test {test} must be in [0, 1) and sum below 1")
    try:
        pattern = re.compile(group_regex) if group_regex else None
    except re.error as err:
        raise SplitError(f"--group-regex {group_regex!r} is not a valid regex: {err}") from None
    class_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise SplitError(f"--src {src} has no class sub-folders (expected RAW/CLASS/image files)")
    stray = [p for p in src.iterdir() if p.is_file() and is_image_file(p)]
    if stray:
        raise SplitError(f"{len(stray)} image(s) directly in {src}, outside any class folder, e.g. {stray[0]}")
    assignments: list[Assignment] = []
    others: list[Path] = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file())
        images = [p for p in files if is_image_file(p)]
        others += [p for p in files if not is_image_file(p)]
        if not images:
            raise SplitError(f"class folder {class_dir} holds no images")
        assignments += _assign_class(images, class_dir, class_dir.name, val, test, seed, pattern)
    return assignments, others


def _place(source: Path, target: Path, link: LinkMode) -> None:
    """Copy (or hard-link) one file atomically: a crash never leaves a half-written image."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    if link == "hardlink":
        if tmp.exists():
            tmp.unlink()
        os.link(source, tmp)
    else:
        shutil.copyfile(source, tmp)
        shutil.copystat(source, tmp)
    os.replace(tmp, target)


def verify_split(src: Path, dst: Path, check_hash: bool = True, against_source: bool = False) -> list[str]:
    """Check ``dst`` against its manifest and ``src``: every source image in exactly one split.

    Args:
        src: The raw folder that was split.
        dst: The split folder.
        check_hash: Compare each copy's SHA-256 with the manifest (else sizes only).
        against_source: Also hash each source file, so a copy is checked byte for byte
            against the source as it is now (``split --verify``).

    Returns:
        Problems found (empty when the split is complete and byte-identical).
    """
    manifest = dst / MANIFEST
    if not manifest.is_file():
        return [f"no {MANIFEST} in {dst}"]
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    problems: list[str] = []
    seen: Counter[tuple[str, str]] = Counter((r["class"], r["relpath"]) for r in rows)
    placed = {(r["split"], r["class"], r["relpath"]) for r in rows}
    for key, n in seen.items():
        if n > 1:
            problems.append(f"{key[0]}/{key[1]} is listed {n} times")
    for r in rows:
        target = dst / r["split"] / r["class"] / r["relpath"]
        source = src / r["class"] / r["relpath"]
        if not target.is_file():
            problems.append(f"missing {target}")
        elif target.stat().st_size != int(r["size"]) or (check_hash and sha256_file(target) != r["sha256"]):
            problems.append(f"{target} differs from its source {source}")
        elif against_source and (not source.is_file() or sha256_file(source) != r["sha256"]):
            problems.append(f"source {source} is missing or changed since the split")
    for split in SPLITS:
        for p in sorted((dst / split).rglob("*")) if (dst / split).is_dir() else []:
            if p.is_file() and p.name.endswith(".part") and p.name.startswith("."):
                problems.append(f"{p} is a temporary file of an interrupted split (rerun with --resume true)")
            if p.is_file() and not p.name.startswith("."):
                rel = p.relative_to(dst / split)
                key = (rel.parts[0], Path(*rel.parts[1:]).as_posix())
                if key not in seen:
                    problems.append(f"{p} is not in the manifest")
                elif (split, *key) not in placed:  # a second copy in another split: leakage
                    problems.append(f"{p} is in {split}/ but the manifest puts it in another split")
    expected = set()
    for p in src.rglob("*"):
        rel = p.relative_to(src).parts
        if len(rel) > 1 and not rel[0].startswith(".") and p.is_file() and is_image_file(p):
            expected.add((rel[0], Path(*rel[1:]).as_posix()))
    lost = expected - set(seen)
    problems += [f"source image {src / c / r} is in no split" for c, r in sorted(lost)[:20]]
    if len(lost) > 20:
        problems.append(f"... and {len(lost) - 20} more source images in no split")
    return problems


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
) -> dict[str, Counter[str]]:
    """Split raw class folders into ``dst/{train,val,test}/CLASS/`` and verify the result.

    Args:
        src: Raw folder, one sub-folder per class (images at any depth below it).
        dst: Destination; must not exist or be empty.
        val: Fraction of each class for validation (0 for none).
        test: Fraction of each class for testing (0 for none).
        seed: Seed of the deterministic shuffle.
        group_regex: Regex on file names; images with the same key (first capture group, or
            whole match) land in the same split, e.g. ``'^(\\d+)_'`` for GTSRB tracks.
        link: ``copy`` (default) or ``hardlink`` (no extra disk; same filesystem only).
        quiet: Do not print the per-class table.
        resume: Complete an interrupted split into ``dst``: same source and options (checked
            against ``dst/split_plan.json``); files already copied intact are kept, temporary
            ``.part`` files removed, the rest copied.
        verify: Only re-check an existing ``dst`` against ``src``, byte for byte (both hashed),
            and report; nothing is written.

    Returns:
        Per split, the number of images per class.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if verify:
        return _verify_only(src, dst, quiet)
    plan = {"src": str(src.resolve()), "val": val, "test": test, "seed": seed,
            "group_regex": group_regex, "link": link}
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        if not resume:
            raise SplitError(f"--dst {dst} exists and is not empty; choose a new folder "
                             "(or --resume true to complete an interrupted split)")
        _check_resumable(dst, plan)
    if dst.resolve().is_relative_to(src.resolve()):
        raise SplitError(f"--dst {dst} is inside --src {src}")
    assignments, others = plan_split(src, val, test, seed, group_regex)
    dst.mkdir(parents=True, exist_ok=True)
    if resume:
        _clean_partial(dst, assignments)
    _write_plan(dst, plan)
    rows = []
    for a in assignments:
        target = dst / a.split / a.label / a.relpath
        try:
            if not (resume and _same_file(a.source, target)):
                _place(a.source, target, link)
        except OSError as err:
            raise SplitError(f"cannot {link} {a.source} to {target}: {err}") from None
        rows.append({"relpath": a.relpath, "class": a.label, "split": a.split,
                     "size": a.source.stat().st_size, "sha256": sha256_file(a.source)})
    with open(dst / MANIFEST, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["relpath", "class", "split", "size", "sha256"])
        writer.writeheader()
        writer.writerows(rows)
    problems = verify_split(src, dst)
    if problems:
        raise SplitError("split verification failed: " + "; ".join(problems[:5]))
    counts: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    for a in assignments:
        counts[a.split][a.label] += 1
    if not quiet:
        _print_table(counts, len(assignments), others, dst)
    return counts


def _print_table(counts: dict[str, Counter[str]], total: int, others: list[Path], dst: Path) -> None:
    used = [s for s in SPLITS if counts[s]]
    labels = sorted(set().union(*(counts[s] for s in used)))
    width = max(5, *(len(c) for c in labels))
    print(f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in used))
    for c in labels:
        print(f"{c:<{width}} " + " ".join(f"{counts[s][c]:>7}" for s in used))
    print(f"{'total':<{width}} " + " ".join(f"{sum(counts[s].values()):>7}" for s in used))
    print(f"verified: all {total} source images are in exactly one split, byte-identical "
          f"(manifest: {dst / MANIFEST})")
    if others:
        print(f"not copied: {len(others)} non-image file(s), e.g. {others[0]}", file=sys.stderr)


PLAN = "split_plan.json"


def _write_plan(dst: Path, plan: dict) -> None:
    """Record the options before copying, so ``--resume`` can tell the same plan from another."""
    tmp = dst / f".{PLAN}.part"
    tmp.write_text(json.dumps(plan, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, dst / PLAN)


def _check_resumable(dst: Path, plan: dict) -> None:
    """Refuse to resume into a folder that is not a partial split of the same plan."""
    if not (dst / PLAN).is_file():
        raise SplitError(f"--resume: {dst} has no {PLAN}, so it is not a split made by this tool")
    try:
        previous = json.loads((dst / PLAN).read_text())
    except (OSError, ValueError) as err:
        raise SplitError(f"--resume: cannot read {dst / PLAN}: {err}") from None
    diff = [k for k in plan if previous.get(k) != plan[k]]
    if diff:
        raise SplitError(
            f"--resume: {dst} was split with different options ("
            + ", ".join(f"{k} {previous.get(k)!r} now {plan[k]!r}" for k in diff) + ")"
        )


def _clean_partial(dst: Path, assignments: list[Assignment]) -> None:
    """Remove temporary files; refuse files the plan does not explain (no duplicates possible)."""
    planned = {(a.split, a.label, a.relpath) for a in assignments}
    unexpected = []
    for split in SPLITS:
        for p in sorted((dst / split).rglob("*")) if (dst / split).is_dir() else []:
            if not p.is_file():
                continue
            if p.name.startswith(".") and p.name.endswith(".part"):
                p.unlink()
                continue
            rel = p.relative_to(dst / split)
            if (split, rel.parts[0], Path(*rel.parts[1:]).as_posix()) not in planned:
                unexpected.append(p)
    if unexpected:
        raise SplitError(f"--resume: {len(unexpected)} file(s) in {dst} are not part of this split plan, "
                         f"e.g. {unexpected[0]}")


def _same_file(source: Path, target: Path) -> bool:
    """Whether a previous run already placed an intact copy (size, then SHA-256)."""
    return (target.is_file() and target.stat().st_size == source.stat().st_size
            and sha256_file(target) == sha256_file(source))


def _verify_only(src: Path, dst: Path, quiet: bool) -> dict[str, Counter[str]]:
    problems = verify_split(src, dst, against_source=True)
    if problems:
        raise SplitError(f"--verify: {len(problems)} problem(s) in {dst}: " + "; ".join(problems[:5])
                         + (" ..." if len(problems) > 5 else ""))
    with open(dst / MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))
    counts: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    for r in rows:
        counts[r["split"]][r["class"]] += 1
    if not quiet:
        print(f"verified: all {len(rows)} images of {dst} match {src} byte for byte, each in exactly one split")
    return counts
