"""How sure an accuracy is: a binomial interval, or a bootstrap over groups of related images.

Images of one group (the 30 frames of one GTSRB track, the photos of one patient) are not
independent: a model gets most of a group right or most of it wrong. The binomial standard
error then counts each image as fresh evidence and claims far more certainty than the data
holds. :func:`accuracy_interval` resamples whole groups instead (a cluster bootstrap), and
:func:`errors_by_group` shows how few groups the errors come from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.stats

from lit_vision.errors import ConfigError, SplitError
from lit_vision.split_plan import group_key
from lit_vision.split_resume import PLAN, read_plan

# Two-sided 95%: the normal quantile for the binomial interval, the bootstrap's percentiles.
LEVEL = 0.95
_Z = 1.959964


@dataclass(frozen=True)
class AccuracyInterval:
    """An accuracy with its 95% interval and what the interval counts as independent.

    Attributes:
        accuracy: Fraction of hits.
        low: Lower end of the interval.
        high: Upper end of the interval.
        units: Independent units: images (binomial) or groups (bootstrap).
        grouped: Whether the interval resamples groups.
    """

    accuracy: float
    low: float
    high: float
    units: int
    grouped: bool

    def describe(self) -> str:
        """``0.9678 (95% interval 0.9376-0.9907, bootstrap over 86 groups)``."""
        how = f"bootstrap over {self.units} groups" if self.grouped else f"{self.units} images"
        return f"{self.accuracy:.4f} (95% interval {self.low:.4f}-{self.high:.4f}, {how})"


def binomial_interval(accuracy: float, n: int) -> AccuracyInterval:
    """The normal-approximation interval of an accuracy over ``n`` independent images.

    Args:
        accuracy: Fraction of hits.
        n: Images scored (> 0).
    """
    half = _Z * math.sqrt(accuracy * (1 - accuracy) / n)
    return AccuracyInterval(
        accuracy, max(0.0, accuracy - half), min(1.0, accuracy + half), n, False
    )


def accuracy_interval(
    hits: Sequence[bool], groups: Sequence[str] | None = None, resamples: int = 2000, seed: int = 0
) -> AccuracyInterval:
    """The accuracy of ``hits`` with a 95% interval.

    Args:
        hits: One entry per image: whether it was classified correctly.
        groups: Each image's group, or ``None`` for independent images (normal approximation
            to the binomial). With groups, whole groups are drawn with replacement
            ``resamples`` times (scipy's paired ``bootstrap``) and the interval is the
            2.5th-97.5th percentile of the pooled accuracy.
        resamples: Bootstrap draws.
        seed: Seed of the draws, so that the same predictions give the same interval.

    Raises:
        ValueError: No hits, or ``groups`` of another length.
    """
    h = np.asarray(hits, dtype=np.float64)
    if h.size == 0:
        raise ValueError("no labelled images to score")
    acc = float(h.mean())
    if groups is None:
        return binomial_interval(acc, h.size)
    if len(groups) != h.size:
        raise ValueError(f"{len(groups)} groups for {h.size} images")
    _, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    correct = np.bincount(index, weights=h)
    sizes = np.bincount(index).astype(np.float64)
    if sizes.size < 2:  # one group: nothing to resample
        return AccuracyInterval(acc, acc, acc, int(sizes.size), True)
    # scipy's bootstrap, paired: each draw takes whole groups (their hits and sizes together).
    boot = scipy.stats.bootstrap(
        (correct, sizes),
        lambda c, n, axis=-1: c.sum(axis) / n.sum(axis),
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=LEVEL,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return AccuracyInterval(acc, float(boot.low), float(boot.high), int(sizes.size), True)


def errors_by_group(hits: Sequence[bool], groups: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(group, errors, images)`` for each group with an error, most errors first.

    Args:
        hits: One entry per image: whether it was classified correctly.
        groups: Each image's group.
    """
    tally: dict[str, list[int]] = {}
    for hit, group in zip(hits, groups, strict=True):
        t = tally.setdefault(group, [0, 0])
        t[0] += not hit
        t[1] += 1
    worst = [(g, e, n) for g, (e, n) in tally.items() if e]
    return sorted(worst, key=lambda w: (-w[1], w[0]))


def image_groups(paths: Sequence[str], labels: Sequence[str], pattern: str) -> list[str]:
    """Each image's group as ``split`` formed it: ``CLASS/KEY``, KEY from the file name.

    Args:
        paths: The images' paths.
        labels: Their true classes (groups never span classes: split keys them per class).
        pattern: The regex ``split --group_regex`` was given.
    """
    compiled = re.compile(pattern)
    return [
        f"{label}/{group_key(Path(p).name, compiled)}"
        for p, label in zip(paths, labels, strict=True)
    ]


def recorded_group_regex(folders: Sequence[str | Path]) -> str | None:
    """The ``--group_regex`` that ``split`` recorded for the split holding ``folders``.

    A folder given to ``predict`` is usually ``DST/val`` or ``DST/test`` of a split, whose
    ``DST/split_plan.json`` says how images were grouped. Only a plan beside every folder,
    the same for all of them, counts; a plan that is a link, unreadable, or whose regex does
    not compile counts as no grouping.

    Args:
        folders: The input folders.
    """
    found: set[str | None] = set()
    for folder in folders:
        split = Path(folder).parent
        regex = None
        if (split / PLAN).is_file() and not (split / PLAN).is_symlink():
            try:
                regex = read_plan(split).get("group_regex")
                regex = re.compile(regex).pattern if isinstance(regex, str) and regex else None
            except (SplitError, AttributeError, re.error):
                regex = None
        found.add(regex)
    return found.pop() if len(found) == 1 else None


def resolve_group_regex(option: str, inputs: Sequence[str | Path]) -> str | None:
    """``predict --group_regex``: ``auto`` (the split's record), ``none``, or a regex.

    Args:
        option: The option's value.
        inputs: The input paths (the folders among them are looked up for ``auto``).

    Raises:
        ConfigError: The regex does not compile.
    """
    if option == "auto":
        return recorded_group_regex([p for p in inputs if Path(p).is_dir()])
    if option in ("", "none"):
        return None
    try:
        re.compile(option)
    except re.error as err:
        raise ConfigError(f"--group_regex {option!r} is not a valid regex: {err}") from None
    return option


def accuracy_report(
    paths: Sequence[str], labels: Sequence[str], hits: Sequence[bool], group_regex: str | None
) -> list[str]:
    """The summary lines: accuracy with its interval and, for groups, where the errors are.

    Args:
        paths: The labelled images' paths.
        labels: Their true classes.
        hits: Whether each was classified correctly.
        group_regex: How images group (``None``: independent images).
    """
    n = len(hits)
    if not group_regex:
        return [f"accuracy {accuracy_interval(hits).describe()} on {n} labelled images"]
    groups = image_groups(paths, labels, group_regex)
    interval = accuracy_interval(hits, groups)
    lines = [
        f"accuracy {interval.describe()} on {n} labelled images in groups by {group_regex} "
        "(images of one group are not independent evidence)"
    ]
    worst = errors_by_group(hits, groups)
    if worst:
        errors = sum(e for _, e, _ in worst)
        top = worst[: max(1, min(5, len(worst)))]
        share = sum(e for _, e, _ in top)
        shown = ", ".join(f"{g} {e}/{k}" for g, e, k in top)
        lines.append(
            f"errors by group: {len(worst)} of {interval.units} groups hold all {errors} errors; "
            f"the {len(top)} worst hold {share}: {shown}"
        )
    return lines
