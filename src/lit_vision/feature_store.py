"""Frozen features on disk: written as they are computed, memory-mapped, reused while valid.

The feature cache (:mod:`lit_vision.features`) of a large folder outgrows memory: a frozen
prefix's activations take ``112 x 14 x 14`` numbers per image and view for EfficientNet-Lite0
at 224 px. With the DataModule's disk cache on (the default), every output is written straight
into a memory-mapped ``.npy`` file as batches are computed, so nothing is held twice and the
operating system pages the features in and out as memory allows. The files live beside the
decoded-image cache (``ROOT/.lit_vision_cache/features``) under a key of everything that decides
them, and a later run with the same key loads them instead of running the backbone again:

* the images: the decoded-image cache's key (the files' SHA-256 in dataset order, the decoder
  and the image size);
* the frozen network: a SHA-256 of the backbone's weights and buffers and of the model's
  normalisation, and where the frozen prefix ends;
* the views: their number, seed, batch size (the draws are seeded per batch) and the
  augmentation's settings; the autocast dtype, the device type, torch and lit_vision versions.

A file is used only when its SHA-256 matches its sidecar (written last, after an atomic rename),
so a crash or a corrupted file means computing again, never stale or torn features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_vision.cache import cache_folder, cache_key
from lit_vision.images import file_sha256

STORE_VERSION = 1
# numpy has no bfloat16: such outputs are stored as their int16 bit patterns.
_STORED = {torch.bfloat16: np.int16}


def weights_fingerprint(*modules: nn.Module, extra: torch.Tensor | None = None) -> str:
    """SHA-256 of the modules' parameters and buffers (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    tensors = [(f"{i}.{k}", v) for i, m in enumerate(modules) for k, v in m.state_dict().items()]
    if extra is not None:
        tensors.append(("extra", extra))
    for name, value in tensors:
        value = value.detach().cpu().contiguous()
        h.update(f"{name}:{value.dtype}:{tuple(value.shape)}\n".encode())
        if value.dtype == torch.bfloat16:
            value = value.view(torch.int16)
        h.update(value.numpy().tobytes())
    return h.hexdigest()


def augment_description(augment: Any) -> dict[str, Any] | None:
    """The settings of a batch augmentation (``BatchAugment``), or ``None`` for none.

    Raises:
        ValueError: An augmentation whose settings cannot be described (not cacheable).
    """
    if augment is None:
        return None
    settings = getattr(augment, "settings", None)
    if settings is None or not dataclasses.is_dataclass(settings):
        raise ValueError(f"cannot describe augmentation {type(augment).__name__}")
    return {"class": type(augment).__qualname__, **dataclasses.asdict(settings)}


class FeatureStore:
    """The feature files of one split under one key, in ``folder``.

    Args:
        folder: Where the files live (created on demand).
        name: The split and backbone (the file names' prefix; other keys of it are replaced).
        description: Everything that decides the features (JSON-serialisable); its hash and
            the decoder's settings form the key.
    """

    def __init__(self, folder: Path, name: str, description: dict[str, Any]) -> None:
        self.folder = Path(folder)
        full = {"store": STORE_VERSION, "torch": torch.__version__, **description}
        self.key = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:20]
        self.stem = f"{name}-{self.key}"
        self.token = uuid.uuid4().hex[:8]
        self._pending: list[tuple[Path, Path, np.memmap, torch.dtype]] = []

    def _path(self, k: int) -> Path:
        return self.folder / f"{self.stem}-{k}.npy"

    @property
    def sidecar(self) -> Path:
        """The JSON holding each file's SHA-256, dtype and shape (written last)."""
        return self.folder / f"{self.stem}.json"

    def load(self) -> list[torch.Tensor] | None:
        """The stored outputs, memory-mapped, when every file matches its checksum; else None."""
        try:
            meta = json.loads(self.sidecar.read_text())
            outputs = []
            for k, entry in enumerate(meta["outputs"]):
                path = self._path(k)
                if file_sha256(str(path)) != entry["sha256"]:
                    rank_zero_warn(f"lit_vision: feature file {path} fails its checksum")
                    return None
                arr = np.load(path, mmap_mode="c")  # copy-on-write: writable, never written
                tensor = torch.from_numpy(arr)
                if entry["dtype"] == "torch.bfloat16":
                    tensor = tensor.view(torch.bfloat16)
                if list(tensor.shape) != entry["shape"]:
                    return None
                outputs.append(tensor)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return outputs

    def allocate(self, k: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A writable tensor backed by a new file for output ``k`` (``compute_features``)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        np_dtype = _STORED.get(dtype) or torch.empty(0, dtype=dtype).numpy().dtype
        tmp = self.folder / f".{self.stem}-{k}.{self.token}.tmp.npy"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=shape)
        self._pending.append((tmp, self._path(k), arr, dtype))
        tensor = torch.from_numpy(arr)
        return tensor.view(dtype) if dtype in _STORED else tensor

    def commit(self) -> None:
        """Flush the files, move them into place and write the sidecar with their checksums.

        Files of older keys of the same split are removed. Safe when several processes
        commit the same key: each writes its own temporary files and renames them.
        """
        entries = []
        for tmp, final, arr, dtype in self._pending:
            arr.flush()
            os.replace(tmp, final)
            entries.append(
                {"sha256": file_sha256(str(final)), "dtype": str(dtype), "shape": list(arr.shape)}
            )
        tmp_meta = self.sidecar.with_suffix(f".{self.token}.tmp")
        tmp_meta.write_text(json.dumps({"outputs": entries}))
        os.replace(tmp_meta, self.sidecar)
        self._pending.clear()
        name = self.stem.rsplit("-", 1)[0]
        for old in self.folder.glob(f"{name}-*"):
            if not old.name.startswith(self.stem):
                old.unlink(missing_ok=True)

    def save(self, outputs: list[torch.Tensor]) -> None:
        """Write finished outputs (e.g. gathered from all ranks) and commit them."""
        for k, tensor in enumerate(outputs):
            self.allocate(k, tuple(tensor.shape), tensor.dtype).copy_(tensor)
        self.commit()

    def discard(self) -> None:
        """Remove the temporary files of an interrupted computation."""
        for tmp, _, _, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending.clear()


def feature_folder(datamodule: Any) -> Path | None:
    """The DataModule's disk-cache folder for features, or ``None`` (no disk cache)."""
    hparams = getattr(datamodule, "hparams", None)
    if hparams is None or not hparams.get("disk_cache") or not hasattr(datamodule, "screen"):
        return None
    base = cache_folder(hparams["root"], hparams.get("cache_dir"), True)
    return base / "features" if base is not None else None


def store_for(
    model: Any,
    split: str,
    dataset: Any,
    views: int,
    seed: int,
    augment: Any,
    batch_size: int,
) -> FeatureStore | None:
    """The store of a TransferClassifier's features of ``split``, or ``None`` (memory only).

    ``None`` without the DataModule's disk cache, or when something that decides the features
    cannot be described (then nothing is reused).

    Args:
        model: The TransferClassifier (attached to a trainer with its DataModule).
        split: ``train`` or ``val``.
        dataset: The split's ImageDataset.
        views: Views per image.
        seed: Base seed of the views' draws.
        augment: The batch augmentation drawing the views, or ``None``.
        batch_size: Images per forward pass (the draws are seeded per batch).
    """
    dm = model.trainer.datamodule
    folder = feature_folder(dm)
    if folder is None or not hasattr(dataset, "samples"):
        return None
    try:
        augment_desc = augment_description(augment)
    except ValueError:
        return None
    norm = torch.cat([model.mean.flatten(), model.std.flatten()]).float().cpu()
    description = {
        "images": cache_key(
            dataset.samples,
            dataset.image_size,
            digests=dm.screen.digests,
            max_megapixels=dataset.max_megapixels,
        ),
        "weights": weights_fingerprint(model.net.features, extra=norm),
        "input_norm": model.hparams.input_norm,
        "channels_last": model.hparams.channels_last,
        "prefix_blocks": model.unfreeze_blocks if model.__dict__.get("_split") else None,
        "views": views,
        "seed": seed if views > 1 else None,  # the clean view needs no draws
        "batch": batch_size if views > 1 else None,
        # Under DDP each rank draws its strided shard's views: other draws than one process.
        "world": model.trainer.world_size if views > 1 else None,
        "augment": augment_desc,
        "precision": str(model.trainer.precision),
        "feature_autocast": str(getattr(model.feature_autocast(), "fast_dtype", None)),
        "device": model.device.type,
    }
    return FeatureStore(folder, f"{split}-{model.hparams.backbone}", description)
