"""The raw folder ``RAW/CLASS/*`` walked link-safely: the images split takes, and what it leaves out."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lit_vision.errors import SplitError
from lit_vision.images import IMAGE_EXTENSIONS, is_hidden, is_image_file

SKIP_REASONS = {
    "outside": "link(s) leading outside --src",
    "loop": "link(s) looping back to a folder being walked",
    "duplicate": "second path(s) to a file already taken",
    "broken": "broken or circular link(s)",
    "special": "non-regular file(s) (FIFO, socket, device)",
}


@dataclass(frozen=True)
class Skipped:
    """A path below ``--src`` that split left out, and why.

    Attributes:
        path: The path as found below ``--src``.
        reason: A key of ``SKIP_REASONS``.
        detail: Where the link leads, or which path was taken instead.
    """

    path: Path
    reason: str
    detail: str


@dataclass
class SourceScan:
    """What split found below ``--src``: the images it takes and everything it leaves out.

    Attributes:
        images: Per class, ``(path as found, resolved path)`` of each image taken.
        classes: The class folders walked.
        others: Non-image files: reported, never copied.
        hidden: Image files under a hidden name: never data.
        skipped: Links and special files left out.
        stray: Images directly in ``--src``, outside any class folder.
    """

    images: dict[str, list[tuple[Path, Path]]] = field(default_factory=dict)
    classes: list[Path] = field(default_factory=list)
    others: list[Path] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    stray: list[Path] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line per kind of path left out, for the summary (empty when nothing was)."""
        lines = []
        for reason, phrase in SKIP_REASONS.items():
            items = [s for s in self.skipped if s.reason == reason]
            if items:
                shown = ", ".join(f"{s.path} ({s.detail})" for s in items[:5])
                lines.append(
                    f"skipped {len(items)} {phrase}: {shown}"
                    + (", ..." if len(items) > 5 else "")
                    + ("; --follow_symlinks true takes them" if reason == "outside" else "")
                )
        if self.hidden:
            lines.append(
                f"left out {len(self.hidden)} hidden image file(s) (a name or folder starting "
                f"with '.'), e.g. {self.hidden[0]}"
            )
        return lines


def _entries(folder: Path) -> list[Path]:
    """The sorted entries of ``folder``, or one line naming it when it cannot be read."""
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        raise SplitError(f"cannot read folder {folder}: {err}") from None


def _hidden_images(path: Path) -> list[Path]:
    """Image files at or below a hidden ``path``, counted without following links."""
    if path.is_dir() and not path.is_symlink():
        return sorted(
            Path(top, name)
            for top, _, names in os.walk(path)
            for name in names
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS
        )
    return [path] if path.suffix.lower() in IMAGE_EXTENSIONS else []


def _target(
    path: Path, parent_real: Path, src_real: Path, follow: bool, scan: SourceScan
) -> Path | None:
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


def _walk_class(
    folder: Path,
    folder_real: Path,
    chain: tuple[Path, ...],
    class_dir: Path,
    src_real: Path,
    follow: bool,
    scan: SourceScan,
    found: list[tuple[Path, Path]],
) -> None:
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


def _one_path_per_file(
    src: Path, src_real: Path, found: list[tuple[Path, Path]], scan: SourceScan
) -> None:
    """Keep one path per real file, so no image is copied twice (or into two splits).

    Its own path wins over links to it, else the first in sorted order; the others are recorded
    as ``duplicate`` skips.
    """
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
            _walk_class(
                entry, real, (src_real, real), entry, src_real, follow_symlinks, scan, found
            )
        elif real.is_file() and is_image_file(entry, src):
            scan.stray.append(entry)
    _one_path_per_file(src, src_real, found, scan)
    scan.skipped.sort(key=lambda s: s.path)
    return scan
