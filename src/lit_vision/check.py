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
from lit_vision.scan_report import KIND_TEXT, Finding, ScanReport, Severity

# Re-exported: the report types live in scan_report; callers import them from here too.
__all__ = [
    "KIND_TEXT",
    "SPLITS",
    "DecodeMode",
    "Finding",
    "ScanReport",
    "Severity",
    "accepted_extensions",
    "check_image_bytes",
    "check_image_file",
    "format_skipped",
    "scan_dataset",
]

SPLITS = ("train", "val", "test")
# "full": decode every pixel (finds truncated JPEGs); "verify": header and structure (PNG CRCs);
# "none": list and hash only (enough for the class and leakage checks).
DecodeMode = Literal["full", "verify", "none"]
# Files that operating systems and tools drop into folders; never images, ignored quietly.
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", ".ds_store", "icon\r"})
SPLIT_ORDER = {s: i for i, s in enumerate(SPLITS)}
# One image to check: (split, path, class, decode mode).
_Job = tuple[str, str, str, DecodeMode]


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
    """System files and anything under a hidden name (relative to the split root)."""
    name = path.name.lower()
    return name in JUNK_NAMES or name.startswith("._") or any(p.startswith(".") for p in path.parts)


def _is_system_file(path: Path) -> bool:
    """Files tools drop next to images (``Thumbs.db``, ``._x.jpg``): ignored, not images."""
    name = path.name.lower()
    return name in JUNK_NAMES or name.startswith("._")


@dataclass
class _Listing:
    """What ``_list`` found under the split folders, before any file is read."""

    images: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # split -> (path, class)
    classes: dict[str, list[str]] = field(default_factory=dict)  # split -> class folders
    others: list[Path] = field(default_factory=list)  # non-image files inside class folders
    stray: list[Path] = field(default_factory=list)  # files directly in a split folder
    ignored: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)  # images under hidden names: never read


def _hidden_images(entry: Path, root: Path) -> list[str]:
    """Image files in or under a hidden split-level entry (``train/.x.png``, ``train/.cls/``)."""
    files = sorted(entry.rglob("*")) if entry.is_dir() else [entry]
    return [
        str(p) for p in files if p.is_file() and is_hidden_image(p, root) and not _is_system_file(p)
    ]


def _list(root: Path, splits: Sequence[str]) -> _Listing:
    """Sort every entry of ``ROOT/SPLIT/`` into images, class folders, strays and ignored files."""
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
    report = ScanReport(
        root, {s: len(v) for s, v in listing.images.items()}, ignored=listing.ignored
    )
    jobs: list[_Job] = []
    for split, items in listing.images.items():
        mode = decode(split, len(items)) if callable(decode) else decode
        jobs += [(split, path, label, mode) for path, label in items]
    results = _check_and_hash(jobs, size, workers, max_megapixels, show_progress)
    report.findings += _copy_findings(jobs, results, report.digests)
    report.findings += _file_findings(listing)
    report.findings += _class_findings(root, splits, listing)
    rank = {"error": 0, "warning": 1}
    report.findings.sort(key=lambda f: (rank[f.severity], f.kind, f.path))
    return report


def _check_and_hash(
    jobs: list[_Job],
    size: int,
    workers: int | None,
    max_megapixels: float | None,
    show_progress: bool,
) -> list[tuple[str | None, str | None]]:
    """Check and hash every image on a thread pool: ``(digest, None)`` or ``(None, problem)``."""

    def one(job: _Job) -> tuple[str | None, str | None]:
        problem = check_image_file(job[1], job[3], size, max_megapixels=max_megapixels)
        if problem is not None:
            return None, problem  # not hashed: an unreadable file is left out, not compared
        try:
            return file_sha256(job[1]), None
        except OSError as err:
            return None, f"cannot read file: {err.strerror or err}"

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return list(
            progress(
                pool.map(one, jobs, chunksize=32), len(jobs), "scanning", enabled=show_progress
            )
        )


def _copy_findings(
    jobs: list[_Job], results: list[tuple[str | None, str | None]], digests: dict[str, str]
) -> list[Finding]:
    """Unreadable files, then leaks, conflicting labels and duplicates among identical bytes.

    Fills ``digests`` (path -> SHA-256) with every readable file's hash.
    """
    found: list[Finding] = []
    by_hash: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for (split, path, label, _), (digest, problem) in zip(jobs, results, strict=True):
        if problem is not None:
            found.append(Finding("unreadable", "error", path, problem, skippable=True))
        elif digest is not None:
            digests[path] = digest
            by_hash[digest].append((split, path, label))
    for copies in by_hash.values():
        if len(copies) < 2:
            continue
        copies.sort(key=lambda c: (SPLIT_ORDER.get(c[0], 9), c[1]))
        keep_split, keep_path, keep_label = copies[0]
        same = f"same bytes as {keep_path}"
        for split, path, label in copies[1:]:
            if split != keep_split:
                # The copy in the later split is the one to drop: train keeps its image.
                found.append(Finding("leak", "error", path, same, skippable=True))
            elif label != keep_label:
                found.append(Finding("conflicting_labels", "warning", path, same))
            else:
                found.append(Finding("duplicate", "warning", path, same))
    return found


def _file_findings(listing: _Listing) -> list[Finding]:
    """Files training would not read: non-images, unsupported or hidden images, stray files."""
    found: list[Finding] = []
    for p in listing.others:
        fmt = _sniff_image(p)
        if fmt is not None:
            detail = f"a {fmt} image; would be left out"
            found.append(Finding("unsupported_image", "error", str(p), detail, skippable=True))
        else:
            found.append(Finding("not_image", "warning", str(p)))
    for path in listing.hidden:
        found.append(Finding("hidden_image", "warning", path))
    for p in listing.stray:
        if is_image_file(p) or _sniff_image(p) is not None:
            detail = "not in a class folder; would be left out"
            found.append(Finding("stray_image", "error", str(p), detail, skippable=True))
        else:
            found.append(Finding("not_image", "warning", str(p)))
    return found


def _class_findings(root: Path, splits: Sequence[str], listing: _Listing) -> list[Finding]:
    """Empty class folders, and classes of val/test missing from or extra to train/."""
    found: list[Finding] = []
    train_classes = set(listing.classes.get("train", []))
    for split in splits:
        have = {label for _, label in listing.images[split]}
        for c in listing.classes[split]:
            if c not in have:
                severity: Severity = "error" if split == "train" else "warning"
                found.append(Finding("empty_class", severity, str(root / split / c)))
        if split != "train" and "train" in listing.classes:
            classes = set(listing.classes[split])
            for c in sorted(train_classes - classes):
                where = str(root / split / c)
                found.append(Finding("missing_class", "warning", where, "no folder; not evaluated"))
            for c in sorted(classes - train_classes):
                where = str(root / split / c)
                found.append(Finding("extra_class", "error", where, "the model cannot predict it"))
    return found


def format_skipped(paths: Iterable[str], limit: int = 5) -> str:
    """``N file(s): a, b, ... and K more`` for log lines."""
    paths = list(paths)
    more = f" ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"{len(paths)} file(s): {', '.join(paths[:limit])}{more}"


def accepted_extensions() -> str:
    """The image extensions the DataModule reads, for messages."""
    return " ".join(sorted(IMAGE_EXTENSIONS))
