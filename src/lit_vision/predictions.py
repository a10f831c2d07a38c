"""Prediction results and their CSV: one row per input file, written atomically."""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lit_vision.errors import OutputExistsError
from lit_vision.intervals import accuracy_report, binomial_interval

# The ``pred`` of a row whose top probability is below ``--min_confidence``.
UNKNOWN = "unknown"


@dataclass
class Prediction:
    """One CSV row: the prediction for a file, or why it could not be read."""

    path: str
    label: str | None
    probs: np.ndarray | None = None
    error: str | None = None


@dataclass
class PredictResult:
    """Predictions for every input file, and accuracy over the labelled readable ones.

    Rows whose top probability is below ``min_confidence`` are *unknown*: the CSV says
    ``unknown`` instead of guessing, and ``selective_accuracy`` counts only the others.
    """

    rows: list[Prediction]
    class_names: list[str]
    tta: str
    min_confidence: float = 0.0

    def is_unknown(self, row: Prediction) -> bool:
        """A readable row whose top probability is below ``min_confidence``."""
        return row.probs is not None and float(np.max(row.probs)) < self.min_confidence

    @property
    def n_unknown(self) -> int:
        """Readable files labelled unknown (below ``min_confidence``)."""
        return sum(self.is_unknown(r) for r in self.rows)

    @property
    def selective_accuracy(self) -> tuple[float | None, int]:
        """Top-1 accuracy over labelled readable files that are not unknown, and their count."""
        index = {c: i for i, c in enumerate(self.class_names)}
        hits = [
            int(np.argmax(r.probs)) == index[r.label]
            for r in self.labelled
            if not self.is_unknown(r)
        ]
        return (float(np.mean(hits)) if hits else None), len(hits)

    @property
    def n_unreadable(self) -> int:
        """Files that could not be decoded."""
        return sum(r.error is not None for r in self.rows)

    @property
    def labelled(self) -> list[Prediction]:
        """Readable files with a known true class."""
        return [r for r in self.rows if r.label is not None and r.probs is not None]

    @property
    def hits(self) -> list[bool]:
        """Whether each of :attr:`labelled` is classified correctly (top-1)."""
        index = {c: i for i, c in enumerate(self.class_names)}
        return [int(np.argmax(r.probs)) == index[r.label] for r in self.labelled]

    @property
    def accuracy(self) -> float | None:
        """Top-1 accuracy over labelled readable files (``None`` when there are none)."""
        hits = self.hits
        return float(np.mean(hits)) if hits else None


def check_output(output: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output path that is a folder, sits under a file, or exists (unless ``overwrite``).

    Called before any work so a wrong ``--output`` fails in a second, not after predicting.

    Args:
        output: The CSV path.
        overwrite: Accept an existing file at ``output``.

    Returns:
        ``output`` as a ``Path``.

    Raises:
        OutputExistsError: One line naming the path (and ``--overwrite true`` when it applies).
    """
    output = Path(output)
    if output.is_dir():
        raise OutputExistsError(f"--output {output} is a folder; give the CSV file to write")
    for parent in output.parents:
        if parent.is_symlink() or parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"--output {output}: {parent} is a file, not a folder")
            break
    # lexists: a dangling symlink is taken too (writing through it would create its target).
    if os.path.lexists(output) and not overwrite:
        raise OutputExistsError(
            f"--output {output} already exists; pass --overwrite true to replace it"
        )
    return output


def _new_file_mode() -> int:
    """The mode ``open`` would give a new file (mkstemp's files are 0600 whatever the umask)."""
    # Reading the umask means setting it; briefly, and only after the decode threads are done.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _csv_header(k: int) -> list[str]:
    """The column names for ``k`` top classes."""
    header = ["path", "status", "pred", "prob", "true", "correct"]
    for i in range(1, k + 1):
        header += [f"top{i}", f"top{i}_prob"]
    return [*header, "error"]


def _csv_row(r: Prediction, names: list[str], k: int, unknown: bool = False) -> list[Any]:
    """One file's CSV row: the top ``k`` classes, or the reason it could not be read.

    An ``unknown`` row says ``unknown`` as its ``pred`` (its ``correct`` is empty: no guess was
    made); its top classes are still listed.
    """
    true = r.label or ""
    if r.probs is None:
        return [r.path, "error", "", "", true, ""] + ["", ""] * k + [r.error]
    order = np.argsort(-r.probs, kind="stable")[:k]
    pred = UNKNOWN if unknown else names[order[0]]
    correct = "" if r.label is None or unknown else int(pred == r.label)
    tops: list[Any] = []
    for j in order:
        tops += [names[j], f"{r.probs[j]:.6f}"]
    return [r.path, "ok", pred, f"{r.probs[order[0]]:.6f}", true, correct, *tops, ""]


def write_csv(
    result: PredictResult, output: str | Path, topk: int = 3, *, overwrite: bool = False
) -> Path:
    """Write one row per input file.

    Columns: ``path, status`` (``ok``/``error``), ``pred, prob`` (top class, or ``unknown``
    below ``result.min_confidence``, and the top probability), ``true, correct`` (empty outside labelled folders), ``top1, top1_prob ...
    topK, topK_prob`` and ``error`` (why an unreadable file could not be read).

    The rows go to a uniquely named hidden file in the same folder, renamed onto ``output``
    only when complete: a reader never sees half a CSV and no user file is clobbered.

    Args:
        result: The predictions.
        output: CSV path.
        topk: Number of top classes per row.
        overwrite: Replace an existing ``output``; without it an existing file is an error.

    Returns:
        The written CSV's path.

    Raises:
        OutputExistsError: ``output`` is a folder, or exists and ``overwrite`` is false.
    """
    output = check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    k = max(1, min(topk, len(result.class_names)))
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(_csv_header(k))
            for r in result.rows:
                writer.writerow(_csv_row(r, result.class_names, k, result.is_unknown(r)))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _new_file_mode())
        if overwrite:
            os.replace(tmp, output)
        else:
            _link_new(tmp, output)
    finally:
        # Gone after a successful rename; after any failure this removes the partial file.
        tmp.unlink(missing_ok=True)
    return output


def _link_new(tmp: Path, output: Path) -> None:
    """Put ``tmp`` at ``output`` only if nothing appeared there meanwhile (no overwrite)."""
    try:
        # link() fails when the target exists: no window between the check and the rename.
        os.link(tmp, output)
    except FileExistsError:
        raise OutputExistsError(
            f"--output {output} appeared while predicting; pass --overwrite true to replace it"
        ) from None
    except OSError:
        # Filesystems without hard links: re-check, then rename (a tiny race remains).
        check_output(output, overwrite=False)
        os.replace(tmp, output)


def print_summary(
    result: PredictResult,
    seconds: float,
    path: Path,
    setting: str,
    temperature: float,
    group_regex: str | None,
) -> None:
    """Print the throughput, unreadable and unknown counts, and accuracy with its interval.

    Args:
        result: The predictions.
        seconds: How long they took.
        path: The CSV written.
        setting: How they were made (``tta none, 32px``).
        temperature: The calibration temperature applied (1.0: none).
        group_regex: How labelled images group, for the interval (``None``: independent).
    """
    n = len(result.rows)
    calibrated = f", temperature {temperature:.3f}" if temperature != 1.0 else ""
    print(
        f"predicted {n - result.n_unreadable}/{n} files in {seconds:.1f} s "
        f"({n / max(seconds, 1e-9):.0f} files/s) -> {path} ({setting}{calibrated})"
    )
    if result.n_unreadable:
        print(f"{result.n_unreadable} unreadable file(s), listed with status=error and the reason")
    rows, hits = result.labelled, result.hits
    if hits:
        labels = [str(r.label) for r in rows]
        print(*accuracy_report([r.path for r in rows], labels, hits, group_regex), sep="\n")
    if result.min_confidence > 0:
        readable = n - result.n_unreadable
        print(
            f"{result.n_unknown}/{readable} readable file(s) below --min_confidence "
            f"{result.min_confidence:g} labelled unknown"
        )
        acc, k = result.selective_accuracy
        if acc is not None:
            kept = binomial_interval(acc, k).describe()
            print(f"accuracy {kept} on the {k} labelled images not unknown")
