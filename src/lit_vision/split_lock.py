"""The lock on ``--dst``: one split writes into a folder at a time; ``--verify`` refuses meanwhile."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock, Timeout

from lit_vision.errors import SplitError

LOCK = ".split.lock"


def _busy(dst: Path) -> SplitError:
    """The one-line refusal while another split writes into ``dst``."""
    return SplitError(
        f"--dst {dst} is being written by another split right now ({dst / LOCK} is locked)"
    )


@contextmanager
def locked(dst: Path) -> Iterator[None]:
    """Hold ``dst/.split.lock`` exclusively, or refuse: one split writes into ``dst`` at a time.

    The lock is an OS lock (``flock`` on Unix), released by the kernel when a process dies, so
    a killed run never blocks the next. filelock keeps the file on release; it is removed here
    while still held, and a peer that locks the unlinked file is not given the lock (filelock
    checks that the locked file still has a name).

    Args:
        dst: The destination folder (it exists).

    Raises:
        SplitError: Another split holds the lock, or the lock file cannot be created.
    """
    path = dst / LOCK
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _busy(dst) from None
    except OSError as err:
        raise SplitError(f"--dst {dst}: cannot create lock file {path}: {err}") from None
    try:
        yield
    finally:
        try:
            # OSError: Windows cannot remove an open file; its FileLock removes it on release.
            with suppress(OSError):
                path.unlink()
        finally:
            lock.release()


def refuse_if_locked(dst: Path) -> None:
    """For read-only ``--verify``: refuse while a split writes into ``dst`` (creates no lock file).

    A lock file left by a killed run is locked by nobody, so it does not refuse. The probe
    takes the lock for an instant; a split starting in that instant refuses (rerun it).

    Args:
        dst: The split folder.

    Raises:
        SplitError: A split holds the lock right now.
    """
    path = dst / LOCK
    if path.is_symlink() or not path.is_file():
        return
    probe = FileLock(path, timeout=0)
    try:
        probe.acquire()
    except Timeout:
        raise _busy(dst) from None
    except OSError:
        return  # cannot open it for locking (e.g. a read-only --dst): no split writes there either
    probe.release()
