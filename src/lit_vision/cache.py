"""Decoded-image cache: images decoded once into one uint8 array, kept on disk under a content key."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from filelock import FileLock
from lightning.pytorch.utilities import rank_zero_warn
from tqdm.auto import tqdm

from lit_vision.images import (
    DEFAULT_MAX_MEGAPIXELS,
    RESIZE_FILTER,
    ImageDecodeError,
    file_sha256,
    load_image,
)

Sample = tuple[str, int]
"""One image of a dataset: ``(path, class_index)``; ``-1`` for unlabelled images."""

CACHE_VERSION = 2  # bump when decoding changes, so old cache files are not reused


def _default_workers() -> int:
    """Threads for decoding and hashing: PIL and hashlib release the GIL."""
    return min(8, os.cpu_count() or 1)


def decode_all(
    paths: Sequence[str],
    size: int,
    *,
    workers: int | None = None,
    desc: str = "",
    max_megapixels: float | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode images in parallel into one ``(N, size, size, 3)`` uint8 array.

    PIL releases the GIL while decoding and resizing, so threads scale without copying the
    result between processes.

    Args:
        paths: Image files, in the order of the result's rows.
        size: Square side the images are resized to.
        workers: Decoding threads; ``None`` picks ``min(8, cpu count)``.
        desc: What is decoded (the split), for the progress bar.
        max_megapixels: ``load_image``'s limit.
        out: The array to fill (e.g. a memory-mapped file); ``None``: a new one in memory.

    Returns:
        The decoded images, one row per path (``out`` when given).

    Raises:
        ImageDecodeError: A file cannot be decoded.
    """
    if out is None:
        out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def _one(i: int) -> None:
        out[i] = load_image(paths[i], size, max_megapixels=max_megapixels)

    with ThreadPoolExecutor(workers or _default_workers()) as pool:
        list(
            tqdm(
                pool.map(_one, range(len(paths)), chunksize=64),
                total=len(paths),
                desc=f"decoding {desc}".strip(),
                unit="img",
                leave=False,
                disable=len(paths) < 2000,
            )
        )
    return out


def cache_folder(root: str | Path, cache_dir: str | Path | None, enabled: bool) -> Path | None:
    """The disk cache's folder: ``cache_dir``, else ``ROOT/.lit_vision_cache``; ``None`` when off.

    Args:
        root: The data folder (``data.root``).
        cache_dir: The configured folder (``data.cache_dir``), or ``None``.
        enabled: ``data.disk_cache``.
    """
    if not enabled:
        return None
    return (
        Path(cache_dir).expanduser() if cache_dir else Path(root).expanduser() / ".lit_vision_cache"
    )


def _package_version() -> str:
    """lit_vision's installed version, or ``"source"`` when run from a source tree."""
    try:
        return metadata.version("lit_vision")
    except metadata.PackageNotFoundError:
        return "source"


def decoder_settings(size: int, max_megapixels: float | None = None) -> dict[str, Any]:
    """Everything besides the files' bytes that decides the decoded pixels (part of the cache key).

    Args:
        size: Square side the images are resized to.
        max_megapixels: ``load_image``'s limit (``None``: the default).

    Returns:
        A JSON-serialisable description of the decoder.
    """
    return {
        "cache_version": CACHE_VERSION,
        "lit_vision": _package_version(),
        "pillow": PIL.__version__,
        "numpy": np.__version__.split(".")[0],
        "size": size,
        "filter": RESIZE_FILTER.name,
        "max_megapixels": DEFAULT_MAX_MEGAPIXELS
        if max_megapixels is None
        else float(max_megapixels),
    }


def file_digests(
    paths: Sequence[str], known: dict[str, str] | None = None, workers: int | None = None
) -> list[str]:
    """SHA-256 of each file, from ``known`` (the scan's) where there, else read in blocks.

    Args:
        paths: The files.
        known: SHA-256 digests already computed, by path.
        workers: Hashing threads; ``None`` picks ``min(8, cpu count)``.

    Returns:
        One hex digest per path, in order.

    Raises:
        ImageDecodeError: A file cannot be read.
    """
    known = known or {}

    def _one(path: str) -> str:
        if path in known:
            return known[path]
        try:
            return file_sha256(path)
        except OSError as err:
            raise ImageDecodeError(path, err.strerror or str(err)) from None

    with ThreadPoolExecutor(workers or _default_workers()) as pool:
        return list(pool.map(_one, paths, chunksize=64))


def cache_key(
    samples: Sequence[Sample],
    size: int,
    *,
    digests: dict[str, str] | None = None,
    max_megapixels: float | None = None,
) -> str:
    """Hash of the files' contents, in dataset order, and the decoder's settings.

    Content, not size and mtime: an image replaced by another with the same size and mtime
    still gets a new key.

    Args:
        samples: ``(path, class_index)`` pairs, in dataset order.
        size: Square side the images are resized to.
        digests: SHA-256 by path (the scan's), so only files it did not hash are read here.
        max_megapixels: ``load_image``'s limit.

    Returns:
        A 20-character hex key.
    """
    h = hashlib.sha256(json.dumps(decoder_settings(size, max_megapixels), sort_keys=True).encode())
    for digest in file_digests([p for p, _ in samples], digests):
        h.update(f"{digest}\n".encode())
    return h.hexdigest()[:20]


def _load_verified(target: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The memory-mapped cache file when its SHA-256 matches its sidecar, else ``None``.

    A file corrupted in place keeps a valid header, so shape checks alone would serve its
    wrong pixels; hashing it is one read pass, which also warms the page cache for training.
    """
    sidecar = target.with_suffix(".json")
    try:
        expected = json.loads(sidecar.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no checksum (a crash between the two writes): decode again
    try:
        if file_sha256(target) != expected:
            rank_zero_warn(
                f"lit_vision: cache file {target} fails its checksum (corrupted); decoding again"
            )
            return None
        arr = np.load(target, mmap_mode="r")
    except (OSError, ValueError):
        return None  # unreadable or truncated by a crash: decode again and replace it
    return arr if arr.shape == shape and arr.dtype == np.uint8 else None


def _decode_to_file(
    paths: Sequence[str],
    size: int,
    target: Path,
    prefix: str,
    max_megapixels: float | None,
    desc: str = "",
) -> np.ndarray:
    """Decode straight into a memory-mapped temporary file, then publish it atomically.

    The pixels never sit in this process's private memory (only in the page cache, which every
    process mapping the file shares), and processes starting together (DDP ranks) never read
    a half-written file: the array and its SHA-256 sidecar are moved into place with
    ``os.replace``, the array first (a reader seeing it before its checksum decodes again,
    never trusts it unchecked). Older files with the same ``prefix`` (another key: changed
    images or decoder) are removed.

    Returns:
        The published file, memory-mapped read-only.

    Raises:
        OSError: The folder is not writable (or the disk is full).
        ImageDecodeError: A file cannot be decoded.
    """
    cache_dir = target.parent
    tmp = cache_dir / f".{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npy"
    tmp_sum = tmp.with_suffix(".json")
    try:
        shape = (len(paths), size, size, 3)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        decode_all(paths, size, desc=desc, max_megapixels=max_megapixels, out=out)
        out.flush()
        del out
        tmp_sum.write_text(json.dumps({"sha256": file_sha256(tmp)}))
        os.replace(tmp, target)
        os.replace(tmp_sum, target.with_suffix(".json"))
    finally:
        tmp.unlink(missing_ok=True)
        tmp_sum.unlink(missing_ok=True)
    for stale in cache_dir.glob(f"{prefix}*.npy"):
        if stale != target:
            stale.unlink(missing_ok=True)
            stale.with_suffix(".json").unlink(missing_ok=True)
    return np.load(target, mmap_mode="r")


def cached_decode(
    samples: Sequence[Sample],
    size: int,
    cache_dir: str | Path | None,
    *,
    name: str = "",
    digests: dict[str, str] | None = None,
    max_megapixels: float | None = None,
) -> np.ndarray:
    """Decoded ``(N, size, size, 3)`` uint8 images, from ``cache_dir`` when a valid file is there.

    The first run decodes (in parallel, straight into the memory-mapped file, under a file
    lock so that processes sharing the folder decode once) and writes ``NAME-SIZEpx-KEY.npy``
    and its SHA-256 in ``NAME-SIZEpx-KEY.json`` atomically; later runs and the other
    processes check the file against its SHA-256 and memory-map it. The key covers the files'
    contents and the decoder's settings (:func:`cache_key`). Without ``cache_dir``, or when it
    is not writable, the images are decoded in memory only.

    Args:
        samples: ``(path, class_index)`` pairs, in dataset order.
        size: Square side the images are resized to.
        cache_dir: Folder for the cache file, or ``None`` for no disk cache.
        name: Prefix of the file name (the split).
        digests: SHA-256 of the files by path (the scan's), so they are not read again.
        max_megapixels: ``load_image``'s limit.

    Returns:
        The decoded images (a read-only memory map when read from the cache).

    Raises:
        ImageDecodeError: A file cannot be read or decoded.
    """
    paths = [p for p, _ in samples]
    if cache_dir is None:
        return decode_all(paths, size, desc=name, max_megapixels=max_megapixels)
    cache_dir = Path(cache_dir)
    prefix = f"{name or 'images'}-{size}px-"
    key = cache_key(samples, size, digests=digests, max_megapixels=max_megapixels)
    target = cache_dir / f"{prefix}{key}.npy"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # One lock per split and size: of the processes sharing this folder (a node's DDP
        # ranks, or every node on shared storage) the first decodes, the others wait and map
        # the same file. flock is released by the kernel if that process dies.
        lock = FileLock(cache_dir / f".{prefix}lock")
        lock.acquire()
    except OSError as err:
        rank_zero_warn(f"lit_vision: not caching decoded images in {cache_dir}: {err}")
        return decode_all(paths, size, desc=name, max_megapixels=max_megapixels)
    try:
        if target.is_file():
            cached = _load_verified(target, (len(samples), size, size, 3))
            if cached is not None:
                return cached
        try:
            return _decode_to_file(paths, size, target, prefix, max_megapixels, desc=name)
        except OSError as err:
            rank_zero_warn(f"lit_vision: not caching decoded images in {cache_dir}: {err}")
    finally:
        lock.release()
    return decode_all(paths, size, desc=name, max_megapixels=max_megapixels)
