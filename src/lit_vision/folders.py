"""What a split image folder holds: its classes, its images, and which of them are data.

:class:`FolderScreen` keeps what the scans found (``lit_vision.check``): the report, the bad
files left out with ``on_bad: skip`` and the files' SHA-256 (the decoded-image cache's key).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image

from lit_vision.cache import Sample
from lit_vision.check import DecodeMode, ScanReport, format_skipped, scan_dataset
from lit_vision.errors import DataError
from lit_vision.images import is_hidden_image, is_image_file
from lit_vision.ranks import on_rank_zero


def discover_classes(split_dir: Path) -> list[str]:
    """Class names of a split folder: its sub-folders not under a hidden name, sorted.

    Args:
        split_dir: The split folder (``ROOT/train``).

    Returns:
        The class names.

    Raises:
        DataError: The folder is missing or holds no class sub-folders.
    """
    if not split_dir.is_dir():
        raise DataError(f"missing folder {split_dir} (expected ROOT/train/CLASS/*.jpg ...)")
    classes = sorted(
        p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not classes:
        raise DataError(f"no class sub-folders in {split_dir}")
    return classes


def list_samples(
    split_dir: Path, classes: Sequence[str], hidden: list[str] | None = None
) -> list[Sample]:
    """All image files under ``split_dir/CLASS/`` (any depth), with class indices, sorted.

    What counts is :func:`~lit_vision.images.is_image_file` below the class folder, the rule
    ``check`` applies too: images under a hidden name (``CLASS/.sub/x.jpg``) are left out.

    Args:
        split_dir: The split folder.
        classes: The class names of train/.
        hidden: When given, the hidden images left out are appended to it (for the log).

    Returns:
        ``(path, class_index)`` pairs.

    Raises:
        DataError: A class folder of ``split_dir`` is not among ``classes``.
    """
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    for class_dir in sorted(
        p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    ):
        if class_dir.name not in index:
            raise DataError(
                f"class '{class_dir.name}' in {split_dir} is not a class of train/ "
                f"(train has {len(classes)}: {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''})"
            )
        files = [p for p in sorted(class_dir.rglob("*")) if p.is_file()]
        samples.extend(
            (str(f), index[class_dir.name]) for f in files if is_image_file(f, root=class_dir)
        )
        if hidden is not None:
            hidden += [str(f) for f in files if is_hidden_image(f, class_dir)]
    if hidden is not None:  # hidden class folders: never classes, their images never data
        for d in sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name.startswith(".")):
            hidden += [
                str(f)
                for f in sorted(d.rglob("*"))
                if f.is_file() and is_hidden_image(f, split_dir)
            ]
    return samples


def split_classes(root: Path) -> list[str]:
    """The classes of ``root/train``, after checking that val/ and test/ fit the split layout.

    Args:
        root: The data folder (``ROOT/train/CLASS/*``, ``ROOT/val/CLASS/*``, ...).

    Returns:
        The class names of train/, sorted.

    Raises:
        DataError: ``root`` or ``root/val`` is missing, or val/test has a class train lacks.
    """
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder")
    classes = discover_classes(root / "train")
    for split in ("val", "test"):
        split_dir = root / split
        if split_dir.is_dir():
            extra = sorted(set(discover_classes(split_dir)) - set(classes))
            if extra:
                raise DataError(
                    f"{split_dir} has classes missing from train/: {', '.join(extra[:10])}"
                )
    if not (root / "val").is_dir():
        raise DataError(f"missing folder {root / 'val'} (run `lit-vision split` first)")
    return classes


def list_unlabelled(folder: Path) -> list[Sample]:
    """The image files under ``folder`` (any depth), sorted, labelled ``-1``; hidden ones are logged.

    Args:
        folder: A folder of images to predict on.

    Returns:
        ``(path, -1)`` pairs.
    """
    found = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    hidden = [str(p) for p in found if is_hidden_image(p, folder)]
    if hidden:
        rank_zero_warn(
            f"lit_vision data: ignored {len(hidden)} image(s) in hidden files/folders "
            f"under {folder}, such as {hidden[0]}"
        )
    return [(str(p), -1) for p in found if is_image_file(p, root=folder)]


class FolderScreen:
    """Which image files of a split tree are data: listings less the bad files, and the scans.

    Args:
        root: The data folder.
        classes: The class names of train/.
        on_bad: ``error``: a bad file stops with the list; ``skip``: it is left out and logged.
        max_megapixels: The decoder's size limit (larger images are bad files).
    """

    def __init__(
        self,
        root: Path,
        classes: Sequence[str],
        *,
        on_bad: Literal["error", "skip"],
        max_megapixels: float,
    ) -> None:
        self.root = root
        self.classes = list(classes)
        self.on_bad = on_bad
        self.max_megapixels = max_megapixels
        self.report: ScanReport | None = None  # the first scan's
        self.skipped: list[str] = []  # image files left out by on_bad="skip"
        self.digests: dict[str, str] = {}  # SHA-256 by path from the scans: the cache's key
        self._hidden_logged: set[str] = set()

    def samples(self, split: str) -> list[Sample]:
        """The images of ``split`` less the skipped ones (``[]`` without the folder).

        Args:
            split: ``train``, ``val`` or ``test``.

        Raises:
            DataError: A class of train/ has no images.
        """
        split_dir = self.root / split
        if not split_dir.is_dir():
            return []
        hidden: list[str] = []
        samples = list_samples(split_dir, self.classes, hidden)
        if hidden and self.report is None and split not in self._hidden_logged:
            # Without a scan nothing else says so (a scan lists them among its warnings).
            self._hidden_logged.add(split)
            rank_zero_warn(
                f"lit_vision data: ignored {len(hidden)} image(s) in hidden files/folders "
                f"under {split_dir}, such as {hidden[0]}"
            )
        if self.skipped:
            skip = set(self.skipped)
            samples = [s for s in samples if s[0] not in skip]
        if split == "train":
            counts = np.bincount([t for _, t in samples], minlength=len(self.classes))
            empty = [c for c, n in zip(self.classes, counts, strict=True) if n == 0]
            if empty:
                raise DataError(
                    f"class folder(s) with no images in {split_dir}: {', '.join(empty)}"
                )
        return samples

    def scan(self, needed: Sequence[str], size: int, cached: Callable[[int], bool]) -> list[str]:
        """Scan all splits once; decode fully the ``needed`` splits that will not be cached.

        Cached splits are only verified here, since filling the cache decodes them fully.

        Args:
            needed: The splits the stage reads.
            size: The side images are decoded at.
            cached: Whether a split of ``n`` images will be decoded into the cache.

        Returns:
            The files newly left out (``on_bad: skip``).

        Raises:
            DataError: The scan found problems that stop the run.
        """

        def mode(split: str, n: int) -> DecodeMode:
            if split not in needed:
                return "none"  # hashed for the leakage check, decoded when its stage runs
            return "verify" if cached(n) else "full"

        limit = self.max_megapixels
        self.report = scan_dataset(self.root, decode=mode, size=size, max_megapixels=limit)
        if self.report.errors and any(
            mode(s, n) == "verify" for s, n in self.report.images.items()
        ):
            # Something is wrong anyway: decode fully now so the list of bad files is complete.
            self.report = scan_dataset(
                self.root,
                decode=lambda s, n: "full" if s in needed else "none",
                size=size,
                max_megapixels=limit,
            )
        self.digests.update(self.report.digests)
        return self.apply(self.report)

    def scan_shared(
        self, trainer: Any, needed: Sequence[str], size: int, cached: Callable[[int], bool]
    ) -> list[str]:
        """:meth:`scan` in global rank 0 only; the other processes receive its findings.

        Under DDP every rank would otherwise read and hash every file; this way one does and
        all train on the same files (the decoded cache is then built once per node too).

        Args:
            trainer: The Lightning trainer (``None``: this process scans).
            needed: The splits the stage reads.
            size: The side images are decoded at.
            cached: Whether a split of ``n`` images will be decoded into the cache.

        Returns:
            The files newly left out (``on_bad: skip``).
        """

        def work() -> tuple[list[str], ScanReport | None, list[str], dict[str, str]]:
            new = self.scan(needed, size, cached)
            return new, self.report, self.skipped, self.digests

        new, self.report, self.skipped, digests = on_rank_zero(trainer, work)
        self.digests.update(digests)
        return new

    def rescan(self, split: str, size: int) -> list[str]:
        """Decode ``split`` fully after a decode failure, and apply what that finds.

        Args:
            split: The split whose decode failed.
            size: The side images are decoded at.

        Returns:
            The files newly left out (none when the split reads now, e.g. written meanwhile).

        Raises:
            DataError: The scan found problems that stop the run.
        """
        report = scan_dataset(
            self.root, [split], decode="full", size=size, max_megapixels=self.max_megapixels
        )
        self.digests.update(report.digests)
        return [] if report.ok else self.apply(report)

    def apply(self, report: ScanReport) -> list[str]:
        """Stop on errors (``on_bad: error``) or leave the bad files out (``skip``), logging them.

        Args:
            report: A scan's report.

        Returns:
            The files newly left out.

        Raises:
            DataError: Errors with ``on_bad: error``, or errors skipping cannot fix.
        """
        if report.warnings:
            rank_zero_warn(
                "lit_vision data scan: " + report.summary("warning").replace("\n", "\n  ")
            )
        if not report.errors:
            return []
        on_error = self.on_bad == "error"
        blocking = report.errors if on_error else report.unskippable()
        if blocking:
            hint = " (or --data.on_bad skip to leave bad files out)" if on_error else ""
            raise DataError(
                f"{len(blocking)} problem(s) in {self.root}{hint}: "
                + " | ".join(ScanReport(report.root, findings=blocking).summary().splitlines())
            )
        new = [p for p in report.skippable_files() if p not in set(self.skipped)]
        self.skipped = sorted(set(self.skipped) | set(new))
        rank_zero_warn(
            f"lit_vision data: skipping {format_skipped(self.skipped)} (on_bad=skip)\n  "
            + report.summary().replace("\n", "\n  ")
        )
        return new


def median_short_side(files: Sequence[str], sample: int = 200) -> int | None:
    """The median short side of some images, from the headers of up to ``sample`` of them.

    Args:
        files: Image files; evenly spaced ones are read.
        sample: Files whose headers are read.

    Returns:
        The median short side in pixels, or ``None`` when no header could be read.
    """
    step = max(1, len(files) // sample)
    sides = []
    for path in files[::step][:sample]:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
        except (OSError, ValueError):
            continue
    return sorted(sides)[len(sides) // 2] if sides else None


def auto_image_size(files: Sequence[str], largest: int, sample: int = 200) -> int:
    """An input side for these images: twice their median short side, in [64, ``largest``].

    Rounded up to a multiple of 32. Reads the headers of up to ``sample`` evenly spaced files.

    Args:
        files: Image files (the training split).
        largest: The model's preferred size, never exceeded.
        sample: Files whose headers are read.
    """
    side = median_short_side(files, sample)
    if side is None:
        return largest
    return int(min(largest, max(64, -(-2 * side // 32) * 32)))
