"""Dataset scan: unreadable images, stray files, empty or mismatched classes, leaks between splits."""

from __future__ import annotations

import io
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

from lit_vision.images import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    file_sha256,
    is_hidden_image,
    is_image_file,
    load_image,
)
from lit_vision.progress import progress

SPLITS = ("train", "val", "test")
Severity = Literal["error", "warning"]
# "full": decode every pixel (finds truncated JPEGs); "verify": header and structure (PNG CRCs);
# "none": list and hash only (enough for the class and leakage checks).
DecodeMode = Literal["full", "verify", "none"]
# Files that operating systems and tools drop into folders; never images, ignored quietly.
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", ".ds_store", "icon\r"})
SPLIT_ORDER = {s: i for i, s in enumerate(SPLITS)}


@dataclass(frozen=True)
class Finding:
    """One problem found by the scan.

    ``kind`` is one of ``unreadable``, ``unsupported_image``, ``stray_image``, ``not_image``,
    ``empty_class``, ``missing_class``, ``extra_class``, ``leak`` (the same bytes in two splits),
    ``duplicate`` (the same bytes twice within a split), ``conflicting_labels`` or
    ``hidden_image`` (an image under a hidden file or folder name, which nothing reads).
    """

    kind: str
    severity: Severity
    path: str
    detail: str = ""
    # Whether skipping the file removes the problem (``on_bad: skip``); class-level findings
    # cannot be skipped.
    skippable: bool = False


@dataclass
class ScanReport:
    """What :func:`scan_dataset` found; ``findings`` are sorted by severity, kind and path."""

    root: Path
    images: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    # SHA-256 of every image file read without problems, by path: the disk cache's key.
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        """Findings that stop training unless skipped."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings that are reported but do not stop training."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No errors."""
        return not self.errors

    def skippable_files(self) -> list[str]:
        """Image files that ``on_bad: skip`` leaves out (unreadable files, leaked copies)."""
        return sorted({f.path for f in self.errors if f.skippable})

    def unskippable(self) -> list[Finding]:
        """Errors that skipping files cannot fix (e.g. a class of val/ missing from train/)."""
        return [f for f in self.errors if not f.skippable]

    def summary(self, severity: Severity = "error", limit: int = 5) -> str:
        """One line per kind of finding: count, then the first ``limit`` paths with details."""
        by_kind: dict[str, list[Finding]] = defaultdict(list)
        for f in self.findings:
            if f.severity == severity:
                by_kind[f.kind].append(f)
        lines = []
        for kind, items in by_kind.items():
            shown = "; ".join(f"{f.path}" + (f" ({f.detail})" if f.detail else "") for f in items[:limit])
            more = f"; ... and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"{len(items)} {KIND_TEXT.get(kind, kind)}: {shown}{more}")
        return "\n".join(lines)

    def describe(self, limit: int = 5) -> str:
        """The whole report as text, for ``lit-vision check``."""
        counts = ", ".join(f"{s} {n}" for s, n in self.images.items())
        lines = [f"scanned {self.root}: {counts} image files"]
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} system file(s) such as {self.ignored[0]}")
        if self.errors:
            lines.append(f"ERRORS ({len(self.errors)}):")
            lines += ["  " + line for line in self.summary("error", limit).splitlines()]
        if self.warnings:
            lines.append(f"warnings ({len(self.warnings)}):")
            lines += ["  " + line for line in self.summary("warning", limit).splitlines()]
        if not self.findings:
            lines.append("no problems found")
        return "\n".join(lines)


KIND_TEXT = {
    "unreadable": "unreadable or truncated image(s)",
    "unsupported_image": "image(s) with an extension lit_vision does not read (rename to .jpg/.png/...)",
    "stray_image": "image(s) outside any class folder",
    "not_image": "non-image file(s), ignored",
    "empty_class": "class folder(s) without images",
    "missing_class": "class(es) of train/ absent from this split",
    "extra_class": "class(es) not in train/",
    "leak": "image(s) whose exact bytes are also in another split (leakage)",
    "duplicate": "exact duplicate image(s) within a split",
    "conflicting_labels": "image(s) whose exact bytes appear under two classes",
    "hidden_image": "image(s) in hidden files/folders, ignored",
}


def check_image_bytes(
    data: bytes, mode: DecodeMode = "full", size: int = 64, *, max_megapixels: float | None = None
) -> str | None:
    """Why these bytes are not a readable image, or ``None`` when they are (see ``check_image_file``)."""
    return check_image_file(io.BytesIO(data), mode, size, max_megapixels=max_megapixels)


def check_image_file(
    path: str | Path | io.BytesIO,
    mode: DecodeMode = "full",
    size: int = 64,
    *,
    max_megapixels: float | None = None,
) -> str | None:
    """Why this file is not a readable image, or ``None`` when it is.

    The file is read from disk by the decoder, never whole into memory (a 2 GB file with an
    image name costs no more than its header). Never raises: corrupted files make PIL raise
    all kinds of exceptions (struct.error, IndexError, ...), and a scan must report them,
    not die on them.
    """
    if mode == "none":
        return None
    try:
        if mode == "full":
            load_image(path, size, max_megapixels=max_megapixels)
        else:
            with Image.open(path) as img:
                img.verify()
                if img.size[0] < 1 or img.size[1] < 1:
                    return f"empty image {img.size}"
    except ImageDecodeError as err:
        return err.reason
    except UnidentifiedImageError:
        return "not a recognised image format"
    except Exception as err:  # noqa: BLE001 - any decoder failure is a finding, never a crash
        return f"{type(err).__name__}: {err}"[:200]
    return None


def _sniff_image(path: Path) -> str | None:
    """The PIL format of a file without an image extension, if it is one."""
    try:
        with Image.open(path) as img:
            return img.format
    except Exception:  # noqa: BLE001 - anything PIL cannot open is simply not an image
        return None


def _is_junk(path: Path) -> bool:
    name = path.name.lower()
    return name in JUNK_NAMES or name.startswith("._") or any(p.startswith(".") for p in path.parts)


def _is_system_file(path: Path) -> bool:
    """Files tools drop next to images (``Thumbs.db``, ``._x.jpg``): ignored, not images."""
    name = path.name.lower()
    return name in JUNK_NAMES or name.startswith("._")


@dataclass
class _Listing:
    images: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # split -> (path, class)
    classes: dict[str, list[str]] = field(default_factory=dict)  # split -> class folders
    others: list[Path] = field(default_factory=list)  # non-image files inside class folders
    stray: list[Path] = field(default_factory=list)  # files directly in a split folder
    ignored: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)  # images under hidden names: never read


def _hidden_images(entry: Path, root: Path) -> list[str]:
    """Image files in or under a hidden split-level entry (``train/.x.png``, ``train/.cls/``)."""
    files = sorted(entry.rglob("*")) if entry.is_dir() else [entry]
    return [str(p) for p in files if p.is_file() and is_hidden_image(p, root) and not _is_system_file(p)]


def _list(root: Path, splits: Sequence[str]) -> _Listing:
    out = _Listing()
    for split in splits:
        split_dir = root / split
        out.images[split] = []
        out.classes[split] = []
        for entry in sorted(split_dir.iterdir()):
            if _is_junk(entry.relative_to(root)):
                hidden = _hidden_images(entry, split_dir)
                out.hidden += hidden
                if not hidden or entry.is_dir():
                    out.ignored.append(str(entry))
            elif entry.is_dir():
                out.classes[split].append(entry.name)
                for p in sorted(entry.rglob("*")):
                    if not p.is_file():
                        continue
                    # The DataModule's rule (is_image_file below the class folder), so what
                    # check passes is exactly what training reads.
                    if is_image_file(p, root=entry):
                        out.images[split].append((str(p), entry.name))
                    elif _is_system_file(p):
                        out.ignored.append(str(p))
                    elif is_hidden_image(p, entry):
                        out.hidden.append(str(p))
                    elif _is_junk(p.relative_to(root)):
                        out.ignored.append(str(p))
                    else:
                        out.others.append(p)
            elif entry.is_file():
                out.stray.append(entry)
    return out


def scan_dataset(
    root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    decode: DecodeMode | Callable[[str, int], DecodeMode] = "full",
    size: int = 64,
    workers: int | None = None,
    max_megapixels: float | None = None,
    show_progress: bool = True,
) -> ScanReport:
    """Scan ``ROOT/{train,val,test}/CLASS/*`` for everything that would break or bias training.

    Every image file is checked according to ``decode`` and, when readable, hashed
    (SHA-256: exact duplicates, leakage between splits, the disk cache's key), both reading
    the file in blocks from disk, on a thread pool (PIL and hashlib release the GIL).

    Args:
        root: The split folder.
        splits: Splits to scan; default: those of train/val/test that exist.
        decode: ``full`` (every pixel; finds truncated files), ``verify`` (headers and PNG
            checksums only), ``none``; or a function ``(split, n_images) -> mode``.
        size: Side the full decode resizes to (the DataModule passes its image size).
        workers: Threads; default ``min(8, cpu count)``.
        max_megapixels: The decoder's size limit (``load_image``); larger images are
            unreadable.
        show_progress: A progress bar on stderr while files are checked and hashed, shown
            only for large datasets (``progress.MIN_FILES`` files or more).

    Returns:
        The report; it never raises for a bad file.
    """
    root = Path(root).expanduser()
    if splits is None:
        splits = [s for s in SPLITS if (root / s).is_dir()]
    listing = _list(root, splits)
    report = ScanReport(root, {s: len(v) for s, v in listing.images.items()}, ignored=listing.ignored)
    add = report.findings.append

    jobs: list[tuple[str, str, str, DecodeMode]] = []
    for split, items in listing.images.items():
        mode = decode(split, len(items)) if callable(decode) else decode
        jobs += [(split, path, label, mode) for path, label in items]

    def _one(job: tuple[str, str, str, DecodeMode]) -> tuple[str | None, str | None]:
        problem = check_image_file(job[1], job[3], size, max_megapixels=max_megapixels)
        if problem is not None:
            return None, problem  # not hashed: an unreadable file is left out, not compared
        try:
            return file_sha256(job[1]), None
        except OSError as err:
            return None, f"cannot read file: {err.strerror or err}"

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(progress(pool.map(_one, jobs, chunksize=32), len(jobs), "scanning",
                                enabled=show_progress))

    by_hash: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for (split, path, label, _), (digest, problem) in zip(jobs, results, strict=True):
        if problem is not None:
            add(Finding("unreadable", "error", path, problem, skippable=True))
        elif digest is not None:
            report.digests[path] = digest
            by_hash[digest].append((split, path, label))
    for copies in by_hash.values():
        if len(copies) < 2:
            continue
        copies.sort(key=lambda c: (SPLIT_ORDER.get(c[0], 9), c[1]))
        keep_split, keep_path, keep_label = copies[0]
        for split, path, label in copies[1:]:
            if split != keep_split:
                # The copy in the later split is the one to drop: train keeps its image.
                add(Finding("leak", "error", path, f"same bytes as {keep_path}", skippable=True))
            elif label != keep_label:
                add(Finding("conflicting_labels", "warning", path, f"same bytes as {keep_path}"))
            else:
                add(Finding("duplicate", "warning", path, f"same bytes as {keep_path}"))

    for p in listing.others:
        fmt = _sniff_image(p)
        if fmt is not None:
            add(Finding("unsupported_image", "error", str(p), f"a {fmt} image; would be left out", skippable=True))
        else:
            add(Finding("not_image", "warning", str(p)))
    for path in listing.hidden:
        add(Finding("hidden_image", "warning", path))
    for p in listing.stray:
        if is_image_file(p) or _sniff_image(p) is not None:
            add(Finding("stray_image", "error", str(p), "not in a class folder; would be left out", skippable=True))
        else:
            add(Finding("not_image", "warning", str(p)))

    train_classes = set(listing.classes.get("train", []))
    for split in splits:
        have = {label for _, label in listing.images[split]}
        for c in listing.classes[split]:
            if c not in have:
                severity: Severity = "error" if split == "train" else "warning"
                add(Finding("empty_class", severity, str(root / split / c)))
        if split != "train" and "train" in listing.classes:
            for c in sorted(train_classes - set(listing.classes[split])):
                add(Finding("missing_class", "warning", str(root / split / c), "no folder; not evaluated"))
            for c in sorted(set(listing.classes[split]) - train_classes):
                add(Finding("extra_class", "error", str(root / split / c), "the model cannot predict it"))

    rank = {"error": 0, "warning": 1}
    report.findings.sort(key=lambda f: (rank[f.severity], f.kind, f.path))
    return report


def format_skipped(paths: Iterable[str], limit: int = 5) -> str:
    """``N file(s): a, b, ... and K more`` for log lines."""
    paths = list(paths)
    more = f" ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"{len(paths)} file(s): {', '.join(paths[:limit])}{more}"


def accepted_extensions() -> str:
    """The image extensions the DataModule reads, for messages."""
    return " ".join(sorted(IMAGE_EXTENSIONS))
