"""litdata streaming datasets: a split tree written as chunks (``optimize``), read back safely.

``python -m lit_vision optimize --data.root ROOT --output DIR_OR_URL`` decodes every image once
(the same decoder as training and ``predict``: RGB, resized to ``image_size``) and writes each
split with ``litdata.optimize`` to ``OUTPUT/SPLIT/`` (chunk files and ``index.json``; a local
folder, or ``s3://``, ``gs://``, ``azure://``). The class names, image size and class counts go
into each split's ``index.json`` under ``"lit_vision"``, so a streamed split is self-describing.
litdata is an optional dependency: ``pip install 'lit_vision[stream]'``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from lit_vision.errors import ConfigError, DataError
from lit_vision.folders import list_samples, split_classes
from lit_vision.images import DEFAULT_MAX_MEGAPIXELS, load_image

INDEX = "index.json"
META_KEY = "lit_vision"
# What lit_vision writes (uint8 arrays, int labels): a stream whose index names any other
# format (pickle above all, which runs code when read) is refused before a chunk is read.
SAFE_FORMATS = ("numpy", "int")
URL_SCHEMES = ("s3://", "gs://", "gcs://", "azure://", "az://", "abfs://")


def require_litdata() -> ModuleType:
    """The ``litdata`` module, or a one-line error saying how to install it.

    Raises:
        ConfigError: litdata is not installed.
    """
    try:
        import litdata
    except ImportError:
        raise ConfigError(
            "streaming needs litdata, which is not installed: pip install 'lit_vision[stream]'"
        ) from None
    return litdata


def is_url(location: str) -> bool:
    """Whether ``location`` is an object-store URL rather than a local folder."""
    return location.startswith(URL_SCHEMES)


def join(location: str, *parts: str) -> str:
    """``location/part/...`` for a folder or a URL."""
    return (
        "/".join([location.rstrip("/"), *parts])
        if is_url(location)
        else str(Path(location, *parts))
    )


def _read_text(location: str) -> str:
    """A small file of a folder or object store (the index)."""
    if not is_url(location):
        return Path(location).expanduser().read_text()
    import obstore  # litdata's own object-store client (S3, GCS, Azure)

    parent, name = location.rsplit("/", 1)
    return bytes(obstore.get(obstore.store.from_url(parent), name).bytes()).decode()


def _write_text(location: str, text: str) -> None:
    """Replace a small file of a folder or object store (the index)."""
    if not is_url(location):
        Path(location).write_text(text)
        return
    import obstore

    parent, name = location.rsplit("/", 1)
    obstore.put(obstore.store.from_url(parent), name, text.encode())


def read_meta(split_location: str) -> dict[str, Any]:
    """The ``"lit_vision"`` entry of a streamed split's index, after checking its formats.

    Args:
        split_location: ``OUTPUT/SPLIT`` (folder or URL).

    Returns:
        ``{"classes", "image_size", "class_counts", "images"}``.

    Raises:
        DataError: No index, not written by ``lit_vision optimize``, or unsafe formats.
    """
    index = join(split_location, INDEX)
    try:
        data = json.loads(_read_text(index))
    except (OSError, ValueError) as err:
        raise DataError(
            f"cannot read {index} (write it with `lit_vision optimize`): {err}"
        ) from None
    meta = data.get(META_KEY) if isinstance(data, dict) else None
    formats = (data.get("config") or {}).get("data_format") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or not {"classes", "image_size"} <= meta.keys():
        raise DataError(f"{index} has no class names (not written by `lit_vision optimize`)")
    if not isinstance(formats, list) or any(f not in SAFE_FORMATS for f in formats):
        raise DataError(f"{index}: data formats {formats} are not lit_vision's {SAFE_FORMATS}")
    return meta


def _encode(item: tuple[int, str, int, int, float]) -> dict[str, Any]:
    """One sample for ``litdata.optimize``: the decoded uint8 image, its label and its index.

    The index (the file's position in the split's sorted listing) lets a run check which
    samples each rank saw (bench/scale.py: every sample exactly once per epoch).
    """
    index, path, label, size, max_megapixels = item
    image = load_image(path, size, max_megapixels=max_megapixels)
    return {"image": np.ascontiguousarray(image), "label": int(label), "index": int(index)}


def optimize_tree(
    root: str,
    output: str,
    image_size: int = 64,
    num_workers: int = 2,
    chunk_bytes: str = "64MB",
    compression: str | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    seed: int = 0,
) -> dict[str, int]:
    """Write each split of ``root`` as a litdata stream under ``output/SPLIT``.

    Args:
        root: Split tree (``train/``, ``val/``, optional ``test/``).
        output: Local folder or ``s3://``/``gs://``/``azure://`` URL.
        image_size: Square side every image is decoded and resized to (training's input).
        num_workers: Processes that decode and write chunks.
        chunk_bytes: Size of one chunk file.
        compression: ``None`` (raw pixels: fastest to read) or ``"zstd"`` (needs ``zstd``).
        max_megapixels: The decoder's size limit (larger files are bad files).
        seed: Seed of the order the samples are written in (shuffled; each sample keeps its
            ``index`` in the folder's sorted listing).

    Returns:
        Images written per split.
    """
    litdata = require_litdata()
    root_path = Path(root).expanduser()
    classes = split_classes(root_path)
    written: dict[str, int] = {}
    for split in ("train", "val", "test"):
        if not (root_path / split).is_dir():
            continue
        samples = list_samples(root_path / split, classes)
        target = join(output, split)
        # Written in a seeded random order: litdata shuffles chunks and items within a window,
        # which cannot mix a folder's class-sorted order into useful batches on its own.
        order = np.random.default_rng(seed).permutation(len(samples)).tolist()
        litdata.optimize(
            fn=_encode,
            inputs=[(i, *samples[i], image_size, max_megapixels) for i in order],
            output_dir=target,
            chunk_bytes=chunk_bytes,
            compression=compression,
            num_workers=num_workers,
            mode="overwrite",
            reorder_files=False,  # keep the shuffled order above
            keep_data_ordered=True,
            start_method="fork",
            verbose=False,
        )
        counts = np.bincount([t for _, t in samples], minlength=len(classes)).tolist()
        index = json.loads(_read_text(join(target, INDEX)))
        index[META_KEY] = {
            "classes": classes,
            "image_size": image_size,
            "class_counts": counts,
            "images": len(samples),
        }
        _write_text(join(target, INDEX), json.dumps(index))
        written[split] = len(samples)
    return written


def local_cache_dir(root: str, cache_dir: str | None) -> str | None:
    """Where litdata keeps downloaded chunks: ``cache_dir``, or a temp folder for URLs."""
    if cache_dir is not None:
        return str(Path(cache_dir).expanduser())
    return tempfile.mkdtemp(prefix="lit_vision_stream_") if is_url(root) else None
