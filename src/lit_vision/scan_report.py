"""What a dataset scan found: findings with their severity, and the report that sums them up."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]


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
            shown = "; ".join(
                f"{f.path}" + (f" ({f.detail})" if f.detail else "") for f in items[:limit]
            )
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
