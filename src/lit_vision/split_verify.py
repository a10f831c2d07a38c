"""The split's manifest and its verification: every accepted source image in exactly one split."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from lit_vision.images import file_sha256
from lit_vision.progress import progress
from lit_vision.source import SourceScan, scan_source
from lit_vision.split_plan import SPLITS

MANIFEST = "split_manifest.csv"
FIELDS = ["relpath", "class", "split", "size", "sha256"]


def write_manifest(dst: Path, rows: list[dict[str, str | int]]) -> None:
    """Write ``dst/split_manifest.csv``: one row per placed image (``FIELDS``)."""
    with open(dst / MANIFEST, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_manifest(dst: Path) -> list[dict[str, str]]:
    """The rows of ``dst/split_manifest.csv``."""
    with open(dst / MANIFEST, newline="") as f:
        return list(csv.DictReader(f))


def entry_key(path: Path, split_dir: Path) -> tuple[str, str]:
    """``(class, relpath)`` of a file below ``dst/SPLIT/``."""
    rel = path.relative_to(split_dir)
    return rel.parts[0], Path(*rel.parts[1:]).as_posix()


def _check_rows(
    rows: list[dict[str, str]],
    src: Path,
    dst: Path,
    accepted: dict[tuple[str, str], Path],
    *,
    check_hash: bool,
    against_source: bool,
    show_progress: bool,
) -> list[str]:
    """Problems with the manifest's rows: listed twice, missing, changed, or no longer a source."""
    problems: list[str] = []
    seen = Counter((r["class"], r["relpath"]) for r in rows)
    problems += [f"{c}/{r} is listed {n} times" for (c, r), n in seen.items() if n > 1]
    for r in progress(rows, len(rows), "verifying", enabled=show_progress):
        target = dst / r["split"] / r["class"] / r["relpath"]
        source = src / r["class"] / r["relpath"]
        real = accepted.get((r["class"], r["relpath"]))
        if target.is_symlink() or not target.is_file():
            problems.append(
                f"missing {target}" if not target.is_symlink() else f"{target} is a symbolic link"
            )
        elif target.stat().st_size != int(r["size"]) or (
            check_hash and file_sha256(target) != r["sha256"]
        ):
            problems.append(f"{target} differs from its source {source}")
        elif against_source and (
            real is None or not real.is_file() or file_sha256(real) != r["sha256"]
        ):
            problems.append(f"source {source} is missing or changed since the split")
        elif real is None:
            problems.append(
                f"{source} is in {MANIFEST} but is not an image split takes from --src {src}"
            )
    return problems


def _check_tree(dst: Path, rows: list[dict[str, str]]) -> list[str]:
    """Problems with the files below ``dst/SPLIT/``: links, leftovers, strangers, leaks."""
    listed = {(r["class"], r["relpath"]) for r in rows}
    placed = {(r["split"], r["class"], r["relpath"]) for r in rows}
    problems: list[str] = []
    for split in SPLITS:
        for p in sorted((dst / split).rglob("*")) if (dst / split).is_dir() else []:
            if p.is_symlink():  # split writes copies or hard links only; a link may lead anywhere
                if (split, *entry_key(p, dst / split)) not in placed:
                    problems.append(f"{p} is a symbolic link")
                continue
            if p.is_file() and p.name.endswith(".part") and p.name.startswith("."):
                problems.append(
                    f"{p} is a temporary file of an interrupted split (rerun with --resume true)"
                )
            if p.is_file() and not p.name.startswith("."):
                key = entry_key(p, dst / split)
                if key not in listed:
                    problems.append(f"{p} is not in the manifest")
                elif (split, *key) not in placed:  # a second copy in another split: leakage
                    problems.append(f"{p} is in {split}/ but the manifest puts it in another split")
    return problems


def verify_split(
    src: Path,
    dst: Path,
    check_hash: bool = True,
    against_source: bool = False,
    follow_symlinks: bool = False,
    *,
    show_progress: bool = False,
) -> list[str]:
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
        show_progress: A progress bar on stderr over the manifest's rows (large splits only).

    Returns:
        Problems found (empty when the split is complete and byte-identical).
    """
    if not (dst / MANIFEST).is_file():
        return [f"no {MANIFEST} in {dst}"]
    rows = read_manifest(dst)
    scan = scan_source(src, follow_symlinks) if src.is_dir() else SourceScan()
    accepted = {
        (label, path.relative_to(src / label).as_posix()): real
        for label, items in scan.images.items()
        for path, real in items
    }
    problems = _check_rows(
        rows,
        src,
        dst,
        accepted,
        check_hash=check_hash,
        against_source=against_source,
        show_progress=show_progress,
    )
    problems += _check_tree(dst, rows)
    lost = set(accepted) - {(r["class"], r["relpath"]) for r in rows}
    problems += [f"source image {src / c / r} is in no split" for c, r in sorted(lost)[:20]]
    if len(lost) > 20:
        problems.append(f"... and {len(lost) - 20} more source images in no split")
    return problems
