"""Progress bars on stderr for passes over many files, shown only when a pass is long."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

# Below this many files a pass takes seconds at most: a bar would only flicker.
MIN_FILES = 2000


def progress(
    items: Iterable[T], total: int, desc: str, *, enabled: bool = True, unit: str = "img"
) -> Iterator[T]:
    """Iterate over ``items`` behind a tqdm bar on stderr, cleared when done (``leave=False``).

    Args:
        items: What to iterate over.
        total: The number of items (``items`` may be a generator).
        desc: What the pass does, e.g. ``copying``.
        enabled: ``False`` (quiet mode) never shows a bar.
        unit: What one item is.

    Returns:
        An iterator over ``items``; the bar is shown only when ``enabled`` and ``total`` is at
        least ``MIN_FILES``.
    """
    return iter(
        tqdm(
            items,
            total=total,
            desc=desc,
            unit=unit,
            leave=False,
            file=sys.stderr,
            disable=not enabled or total < MIN_FILES,
        )
    )


def progress_bar(total: int, desc: str, *, enabled: bool = True, min_items: int = 256) -> tqdm:
    """A tqdm bar on stderr to ``update(n)`` by hand; shown only on a terminal for long passes.

    Args:
        total: Items the pass will count.
        desc: What the pass does.
        enabled: ``False`` never shows a bar (``--progress false``, quiet mode).
        min_items: Shorter passes get no bar.

    Returns:
        The bar (a no-op when hidden); use it as a context manager.
    """
    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        leave=False,
        file=sys.stderr,
        disable=not enabled or total < min_items or not sys.stderr.isatty(),
    )
