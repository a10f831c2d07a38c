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
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lit_vision.images import IMAGE_EXTENSIONS, is_hidden, is_image_file
from lit_vision.errors import SplitError

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock file alone is the lock
    fcntl = None

SPLITS = ("train", "val", "test")
MANIFEST = "split_manifest.csv"
LinkMode = Literal["copy", "hardlink"]


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
    files: list[tuple[Path, Path]], class_dir: Path, label: str, val: float, test: float, seed: int,
    pattern: re.Pattern[str] | None,
) -> list[Assignment]:
    """Assign one class's ``(path as found, resolved path)`` pairs, keeping groups together."""
    groups: dict[str, list[tuple[Path, Path]]] = {}
    for f in files:
        groups.setdefault(group_key(f[0].name, pattern), []).append(f)
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
        out.extend(Assignment(real, path.relative_to(class_dir).as_posix(), label, split)
                   for path, real in groups[key])
    return out


@dataclass(frozen=True)
class Skipped:
    """A path below ``--src`` that split left out, and why."""

    path: Path
    reason: str  # a key of SKIP_REASONS
    detail: str  # where the link leads, or which path was taken instead


SKIP_REASONS = {
    "outside": "link(s) leading outside --src",
    "loop": "link(s) looping back to a folder being walked",
    "duplicate": "second path(s) to a file already taken",
    "broken": "broken or circular link(s)",
    "special": "non-regular file(s) (FIFO, socket, device)",
}


@dataclass
class SourceScan:
    """What split found below ``--src``: the images it takes and everything it leaves out."""

    images: dict[str, list[tuple[Path, Path]]] = field(default_factory=dict)  # class -> (found, resolved)
    classes: list[Path] = field(default_factory=list)  # class folders walked
    others: list[Path] = field(default_factory=list)  # non-image files: reported, never copied
    hidden: list[Path] = field(default_factory=list)  # image files under a hidden name: never data
    skipped: list[Skipped] = field(default_factory=list)
    stray: list[Path] = field(default_factory=list)  # images directly in src, outside any class

    def notes(self) -> list[str]:
        """One line per kind of path left out, for the summary (empty when nothing was)."""
        lines = []
        for reason, phrase in SKIP_REASONS.items():
            items = [s for s in self.skipped if s.reason == reason]
            if items:
                shown = ", ".join(f"{s.path} ({s.detail})" for s in items[:5])
                lines.append(f"skipped {len(items)} {phrase}: {shown}" + (", ..." if len(items) > 5 else "")
                             + ("; --follow_symlinks true takes them" if reason == "outside" else ""))
        if self.hidden:
            lines.append(f"left out {len(self.hidden)} hidden image file(s) (a name or folder starting "
                         f"with '.'), e.g. {self.hidden[0]}")
        return lines


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        raise SplitError(f"cannot read folder {folder}: {err}") from None


def _hidden_images(path: Path) -> list[Path]:
    """Image files at or below a hidden ``path``, counted without following links."""
    if path.is_dir() and not path.is_symlink():
        return sorted(Path(top, name) for top, _, names in os.walk(path) for name in names
                      if Path(name).suffix.lower() in IMAGE_EXTENSIONS)
    return [path] if path.suffix.lower() in IMAGE_EXTENSIONS else []


def _target(path: Path, parent_real: Path, src_real: Path, follow: bool, scan: SourceScan) -> Path | None:
    """Where ``path`` really is, or ``None`` (recorded in ``scan``) when split must not go there."""
    if not path.is_symlink():
        return parent_real / path.name  # parent_real is resolved, so this path has no links in it
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a circular link, before Python 3.13
        scan.skipped.append(Skipped(path, "broken", f"-> {os.readlink(path)}"))
        return None
    if not follow and not real.is_relative_to(src_real):
        scan.skipped.append(Skipped(path, "outside", f"-> {real}"))
        return None
    return real


def _walk_class(folder: Path, folder_real: Path, chain: tuple[Path, ...], class_dir: Path,
                src_real: Path, follow: bool, scan: SourceScan, found: list[tuple[Path, Path]]) -> None:
    """Collect ``(path, resolved path)`` of the images below ``folder``; ``chain``: real folders above."""
    for entry in _entries(folder):
        if is_hidden(entry, class_dir):
            scan.hidden += _hidden_images(entry)
            continue
        real = _target(entry, folder_real, src_real, follow, scan)
        if real is None:
            continue
        if real.is_dir():
            # A link to a folder we are inside (or above) would walk the same files forever.
            if any(c.is_relative_to(real) for c in chain):
                scan.skipped.append(Skipped(entry, "loop", f"-> {real}"))
            else:
                _walk_class(entry, real, (*chain, real), class_dir, src_real, follow, scan, found)
        elif not real.is_file():
            scan.skipped.append(Skipped(entry, "special", "not a regular file"))
        elif is_image_file(entry, class_dir):
            found.append((entry, real))
        else:
            scan.others.append(entry)


def scan_source(src: Path, follow_symlinks: bool = False) -> SourceScan:
    """Find the images below ``src/CLASS/``, resolving every link (policy: ``split_dataset``).

    Args:
        src: The raw folder.
        follow_symlinks: Also take what links lead to outside ``src``.

    Returns:
        The accepted images, one path per real file, and what was left out.
    """
    scan = SourceScan()
    src_real = src.resolve()
    found: list[tuple[Path, Path]] = []
    for entry in _entries(src):
        if is_hidden(entry, src):
            scan.hidden += _hidden_images(entry)
            continue
        real = _target(entry, src_real, src_real, follow_symlinks, scan)
        if real is None:
            continue
        if real.is_dir():
            if src_real.is_relative_to(real):
                scan.skipped.append(Skipped(entry, "loop", f"-> {real}"))
                continue
            scan.classes.append(entry)
            _walk_class(entry, real, (src_real, real), entry, src_real, follow_symlinks, scan, found)
        elif real.is_file() and is_image_file(entry, src):
            scan.stray.append(entry)
    # One path per real file, so no image is copied twice (or into two splits): its own path
    # wins over links to it, else the first in sorted order.
    by_real: dict[Path, list[Path]] = {}
    for path, real in found:
        by_real.setdefault(real, []).append(path)
    for real, paths in by_real.items():
        paths.sort(key=lambda p: (src_real / p.relative_to(src) != real, p))
        scan.images.setdefault(paths[0].relative_to(src).parts[0], []).append((paths[0], real))
        scan.skipped += [Skipped(p, "duplicate", f"same file as {paths[0]}") for p in paths[1:]]
    for items in scan.images.values():
        items.sort()
    # A hidden file that a link takes (e.g. CLASS/x.png -> ../.store/x.png) is not left out.
    scan.hidden = [p for p in scan.hidden if p.resolve() not in by_real]
    scan.skipped.sort(key=lambda s: s.path)
    return scan


def plan_split(
    src: Path, val: float = 0.15, test: float = 0.0, seed: int = 0, group_regex: str | None = None,
    follow_symlinks: bool = False,
) -> tuple[list[Assignment], SourceScan]:
    """Decide each image's split, stratified per class and keeping groups together.

    Returns:
        The assignments (sorted by class, then path; ``source`` is the resolved file) and the
        scan of ``src`` (non-image files, hidden images and skipped links: reported, never copied).
    """
    if not src.is_dir():
        raise SplitError(f"--src {src} is not a folder")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise SplitError(f"--val {val} and --test {test} must be in [0, 1) and sum below 1")
    try:
        pattern = re.compile(group_regex) if group_regex else None
    except re.error as err:
        raise SplitError(f"--group_regex {group_regex!r} is not a valid regex: {err}") from None
    scan = scan_source(src, follow_symlinks)
    if scan.stray:
        raise SplitError(f"{len(scan.stray)} image(s) directly in --src {src}, outside any class folder, "
                         f"e.g. {scan.stray[0]}")
    if not scan.images:
        notes = scan.notes()
        raise SplitError(f"--src {src} has no class sub-folders with images (expected RAW/CLASS/image files)"
                         + (f"; {notes[0]}" if notes else ""))
    assignments: list[Assignment] = []
    for class_dir in scan.classes:
        files = scan.images.get(class_dir.name)
        if files:
            assignments += _assign_class(files, class_dir, class_dir.name, val, test, seed, pattern)
        elif not any(s.path.is_relative_to(class_dir) for s in scan.skipped):
            # A class emptied by skipped links is listed in the summary; one with nothing is a mistake.
            hidden = sum(p.is_relative_to(class_dir) for p in scan.hidden)
            raise SplitError(f"class folder {class_dir} holds no images"
                             + (f" ({hidden} hidden image file(s) left out)" if hidden else ""))
    return assignments, scan


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _place(source: Path, target: Path, link: LinkMode) -> None:
    """Copy (or hard-link) one file atomically: a crash never leaves a half-written image.

    ``source`` is the resolved file. It is opened (or linked) without following a final link,
    so a source swapped for a link after the scan fails instead of bringing its target along;
    nothing in ``--dst`` is ever a symbolic link.
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


def verify_split(src: Path, dst: Path, check_hash: bool = True, against_source: bool = False,
                 follow_symlinks: bool = False) -> list[str]:
    """Check ``dst`` against its manifest and ``src``: every accepted source image in exactly one split.

    ``src`` is scanned as ``split`` scans it (``scan_source``), so skipped links and hidden
    files are not expected in ``dst``, and sources are read at their resolved paths.

    Args:
        src: The raw folder that was split.
        dst: The split folder.
        check_hash: Compare each copy's SHA-256 with the manifest (else sizes only).
        against_source: Also hash each source file, so a copy is checked byte for byte
            against the source as it is now (``split --verify``).
        follow_symlinks: Scan ``src`` as ``split --follow_symlinks true`` did.

    Returns:
        Problems found (empty when the split is complete and byte-identical).
    """
    manifest = dst / MANIFEST
    if not manifest.is_file():
        return [f"no {MANIFEST} in {dst}"]
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    scan = scan_source(src, follow_symlinks) if src.is_dir() else SourceScan()
    accepted = {(label, path.relative_to(src / label).as_posix()): real
                for label, items in scan.images.items() for path, real in items}
    problems: list[str] = []
    seen: Counter[tuple[str, str]] = Counter((r["class"], r["relpath"]) for r in rows)
    placed = {(r["split"], r["class"], r["relpath"]) for r in rows}
    for key, n in seen.items():
        if n > 1:
            problems.append(f"{key[0]}/{key[1]} is listed {n} times")
    for r in rows:
        target = dst / r["split"] / r["class"] / r["relpath"]
        source = src / r["class"] / r["relpath"]
        real = accepted.get((r["class"], r["relpath"]))
        if target.is_symlink() or not target.is_file():
            problems.append(f"missing {target}" if not target.is_symlink() else f"{target} is a symbolic link")
        elif target.stat().st_size != int(r["size"]) or (check_hash and sha256_file(target) != r["sha256"]):
            problems.append(f"{target} differs from its source {source}")
        elif against_source and (real is None or not real.is_file() or sha256_file(real) != r["sha256"]):
            problems.append(f"source {source} is missing or changed since the split")
        elif real is None:
            problems.append(f"{source} is in {MANIFEST} but is not an image split takes from --src {src}")
    for split in SPLITS:
        for p in sorted((dst / split).rglob("*")) if (dst / split).is_dir() else []:
            if p.is_symlink():  # split writes copies or hard links only; a link may lead anywhere
                if (split, *_key(p, dst / split)) not in placed:
                    problems.append(f"{p} is a symbolic link")
                continue
            if p.is_file() and p.name.endswith(".part") and p.name.startswith("."):
                problems.append(f"{p} is a temporary file of an interrupted split (rerun with --resume true)")
            if p.is_file() and not p.name.startswith("."):
                key = _key(p, dst / split)
                if key not in seen:
                    problems.append(f"{p} is not in the manifest")
                elif (split, *key) not in placed:  # a second copy in another split: leakage
                    problems.append(f"{p} is in {split}/ but the manifest puts it in another split")
    lost = set(accepted) - set(seen)
    problems += [f"source image {src / c / r} is in no split" for c, r in sorted(lost)[:20]]
    if len(lost) > 20:
        problems.append(f"... and {len(lost) - 20} more source images in no split")
    return problems


def _key(path: Path, split_dir: Path) -> tuple[str, str]:
    """``(class, relpath)`` of a file below ``dst/SPLIT/``."""
    rel = path.relative_to(split_dir)
    return rel.parts[0], Path(*rel.parts[1:]).as_posix()


LOCK = ".split.lock"


def _has_content(dst: Path) -> bool:
    """Whether ``dst`` holds anything but a lock file (a killed run's lock is not content)."""
    return any(p.name != LOCK for p in dst.iterdir())


@contextmanager
def _locked(dst: Path) -> Iterator[None]:
    """Hold ``dst/.split.lock`` exclusively, or refuse: one split writes into ``dst`` at a time.

    ``flock`` is released by the kernel when a process dies, so a killed run never blocks the
    next; the file itself is removed on the way out.
    """
    path = dst / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | (0 if fcntl else os.O_EXCL), 0o644)
        except FileExistsError:  # no flock (Windows): the file alone is the lock
            raise SplitError(f"--dst {dst} is locked by another split ({path}; remove it if none runs)") from None
        except OSError as err:
            raise SplitError(f"--dst {dst}: cannot create lock file {path}: {err}") from None
        if fcntl is None:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SplitError(f"--dst {dst} is being written by another split right now ({path} is locked)") from None
        # The previous holder may have removed the file after we opened it: our lock would then
        # be on an orphan, and a third run could lock a new file. Lock what the path names.
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            path.unlink()  # still ours: removing it before closing leaves no window for a wrong holder
        os.close(fd)


def _refuse_if_locked(dst: Path) -> None:
    """For read-only ``--verify``: refuse while a split writes into ``dst`` (creates nothing)."""
    path = dst / LOCK
    if fcntl is None or path.is_symlink() or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise SplitError(f"--dst {dst} is being written by another split right now ({path} is locked)") from None
    finally:
        os.close(fd)


def _check_dst(dst: Path) -> None:
    """One line for a ``--dst`` that cannot be a folder."""
    if dst.is_symlink() and not dst.exists():
        raise SplitError(f"--dst {dst} is a symbolic link to {os.readlink(dst)}, which does not exist")
    if dst.exists() and not dst.is_dir():
        raise SplitError(f"--dst {dst} exists and is not a folder")


def _check_dst_state(dst: Path, resume: bool, plan: dict) -> None:
    if dst.is_dir() and _has_content(dst):
        if not resume:
            raise SplitError(f"--dst {dst} exists and is not empty; choose a new folder "
                             "(or --resume true to complete an interrupted split)")
        _check_resumable(dst, plan)


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
    """Split raw class folders into ``dst/{train,val,test}/CLASS/`` and verify the result.

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
            whole match) land in the same split, e.g. ``'^(\\d+)_'`` for GTSRB tracks.
        link: ``copy`` (default) or ``hardlink`` (no extra disk; same filesystem only). Both
            read the resolved source file; ``dst`` never holds a symbolic link.
        quiet: Do not print the per-class table.
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
    plan = {"src": str(src.resolve()), "val": val, "test": test, "seed": seed,
            "group_regex": group_regex, "link": link, "follow_symlinks": follow_symlinks}
    _check_dst_state(dst, resume, plan)  # early, before a long scan; again below under the lock
    if dst.resolve().is_relative_to(src.resolve()):
        raise SplitError(f"--dst {dst} is inside --src {src}")
    assignments, scan = plan_split(src, val, test, seed, group_regex, follow_symlinks)
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SplitError(f"cannot create --dst {dst}: {err}") from None
    with _locked(dst):
        _check_dst_state(dst, resume, plan)
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
        problems = verify_split(src, dst, follow_symlinks=follow_symlinks)
    if problems:
        raise SplitError("split verification failed: " + "; ".join(problems[:5]))
    counts: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    for a in assignments:
        counts[a.split][a.label] += 1
    if not quiet:
        _print_table(counts, len(assignments), scan, dst)
    for line in scan.notes():  # even when quiet: what was left out is never silent
        print(line, file=sys.stderr)
    return counts


def _print_table(counts: dict[str, Counter[str]], total: int, scan: SourceScan, dst: Path) -> None:
    used = [s for s in SPLITS if counts[s]]
    labels = sorted(set().union(*(counts[s] for s in used)))
    width = max(5, *(len(c) for c in labels))
    print(f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in used))
    for c in labels:
        print(f"{c:<{width}} " + " ".join(f"{counts[s][c]:>7}" for s in used))
    print(f"{'total':<{width}} " + " ".join(f"{sum(counts[s].values()):>7}" for s in used))
    left_out = (f"; left out {len(scan.skipped)} skipped path(s) and {len(scan.hidden)} hidden image(s), "
                "listed below" if scan.skipped or scan.hidden else "")
    print(f"verified: all {total} source images are in exactly one split, byte-identical "
          f"(manifest: {dst / MANIFEST}){left_out}")
    if scan.others:
        print(f"not copied: {len(scan.others)} non-image file(s), e.g. {scan.others[0]}", file=sys.stderr)


PLAN = "split_plan.json"
PLAN_DEFAULTS = {"follow_symlinks": False}  # options added later: a plan without them used these


def _write_plan(dst: Path, plan: dict) -> None:
    """Record the options before copying, so ``--resume`` can tell the same plan from another."""
    tmp = dst / f".{PLAN}.part"
    tmp.write_text(json.dumps(plan, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, dst / PLAN)


def _read_plan(dst: Path) -> dict:
    try:
        return json.loads((dst / PLAN).read_text())
    except (OSError, ValueError) as err:
        raise SplitError(f"--resume: cannot read {dst / PLAN}: {err}") from None


def _check_resumable(dst: Path, plan: dict) -> None:
    """Refuse to resume into a folder that is not a partial split of the same plan."""
    if not (dst / PLAN).is_file():
        raise SplitError(f"--resume: {dst} has no {PLAN}, so it is not a split made by this tool")
    previous = _read_plan(dst)
    diff = [k for k in plan if previous.get(k, PLAN_DEFAULTS.get(k)) != plan[k]]
    if diff:
        raise SplitError(
            f"--resume: {dst} was split with different options ("
            + ", ".join(f"{k} {previous.get(k, PLAN_DEFAULTS.get(k))!r} now {plan[k]!r}" for k in diff) + ")"
        )


def _clean_partial(dst: Path, assignments: list[Assignment]) -> None:
    """Remove temporary files; refuse files the plan does not explain (no duplicates possible)."""
    planned = {(a.split, a.label, a.relpath) for a in assignments}
    unexpected = []
    for split in SPLITS:
        for p in sorted((dst / split).rglob("*")) if (dst / split).is_dir() else []:
            if p.is_symlink():
                unexpected.append(p)  # never ours: a copy is replaced, but a link is not overwritten blindly
                continue
            if not p.is_file():
                continue
            if p.name.startswith(".") and p.name.endswith(".part"):
                p.unlink()
                continue
            if (split, *_key(p, dst / split)) not in planned:
                unexpected.append(p)
    if unexpected:
        raise SplitError(f"--resume: {len(unexpected)} file(s) in {dst} are not part of this split plan, "
                         f"e.g. {unexpected[0]}")


def _same_file(source: Path, target: Path) -> bool:
    """Whether a previous run already placed an intact copy (size, then SHA-256)."""
    return (not target.is_symlink() and target.is_file() and target.stat().st_size == source.stat().st_size
            and sha256_file(target) == sha256_file(source))


def _verify_only(src: Path, dst: Path, quiet: bool, follow_symlinks: bool) -> dict[str, Counter[str]]:
    _refuse_if_locked(dst)
    if (dst / PLAN).is_file():  # scan src as the split did
        follow_symlinks = follow_symlinks or bool(_read_plan(dst).get("follow_symlinks", False))
    problems = verify_split(src, dst, against_source=True, follow_symlinks=follow_symlinks)
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
    for line in scan_source(src, follow_symlinks).notes():
        print(line, file=sys.stderr)
    return counts
