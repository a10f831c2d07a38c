"""Install a checked set of files from a staging folder: each rename atomic, the contract last."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file or folder to disk so a crash right after the rename keeps its content."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # folders cannot be fsync'ed on every platform/filesystem
        pass
    finally:
        os.close(fd)


def install_set(staging: Path, out_dir: Path, contract: str) -> list[str]:
    """Move every file of the checked set from ``staging`` into ``out_dir``, the contract last.

    Args:
        staging: The folder holding the checked set (same filesystem as ``out_dir``).
        out_dir: The destination; other files there are never touched.
        contract: File name of the contract, installed last.

    Returns:
        The installed file names.
    """
    files = sorted((p for p in staging.iterdir() if p.is_file()), key=lambda p: p.name == contract)
    for p in files:
        fsync_path(p)
    # The JSON goes last: once the new contract is visible, every file it names is in place.
    # Between two renames a reader may still see a mix; each rename itself is atomic.
    for p in files:
        os.replace(p, out_dir / p.name)
    fsync_path(out_dir)
    return [p.name for p in files]


def keep_failed(staging: Path, out_dir: Path, name: str) -> Path:
    """Move a failed set to ``OUT_DIR/.failed-NAME/`` (replacing an older one) for inspection.

    Args:
        staging: The folder holding the failed set.
        out_dir: The export's output folder.
        name: The export's NAME.

    Returns:
        The folder the set now lives in.
    """
    failed = out_dir / f".failed-{name}"
    if failed.is_dir() and not failed.is_symlink():
        shutil.rmtree(failed)
    elif failed.is_symlink() or failed.exists():
        failed.unlink()
    os.replace(staging, failed)
    return failed
