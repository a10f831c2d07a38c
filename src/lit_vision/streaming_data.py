"""StreamingImageDataModule: splits written by ``lit_vision optimize``, streamed with litdata.

For datasets larger than memory, or on object storage: every process streams its own share of
the chunks (litdata splits them across ranks, nodes and loader workers, shuffles chunks and
samples, and keeps a resumable position), the images are already decoded at their training
size, and batches are augmented on the device by the same :class:`BatchAugment` as the folder
DataModule. Models, configs, checkpoints, ``predict`` and export work unchanged.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_vision.augment import AugmentSettings, BatchAugment, eval_transforms
from lit_vision.errors import DataError
from lit_vision.stream import (
    SAFE_FORMATS,
    join,
    local_cache_dir,
    read_meta,
    require_litdata,
)

_AUGMENT = AugmentSettings()


def collate_images(items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 3, H, W)`` uint8 images and ``(N,)`` int64 labels from litdata's samples.

    Args:
        items: ``{"image": (H, W, 3) uint8, "label": int}`` samples.
    """
    images = torch.from_numpy(np.stack([it["image"] for it in items]))
    labels = torch.tensor([int(it["label"]) for it in items], dtype=torch.long)
    return images.permute(0, 3, 1, 2), labels


def _refusing_serializers() -> dict[str, Any]:
    """Litdata serializers for every format but lit_vision's, each refusing to read anything.

    :func:`~lit_vision.stream.read_meta` already rejects such an index; this also covers a
    chunk whose index changed between that check and the read (no unpickling, ever).
    """
    from litdata.streaming.serializers import _SERIALIZERS, Serializer

    class Refuse(Serializer):
        def serialize(self, item: Any) -> tuple[bytes, str | None]:
            raise DataError("lit_vision streams hold only uint8 images and int labels")

        def deserialize(self, data: bytes) -> Any:
            raise DataError("refusing a stream format lit_vision did not write")

        def can_serialize(self, item: Any) -> bool:
            return False

    return {name: Refuse() for name in _SERIALIZERS if name not in SAFE_FORMATS}


class StreamingImageDataModule(L.LightningDataModule):
    """Splits written by ``python -m lit_vision optimize``, streamed with litdata.

    Args:
        root: The ``--output`` of ``optimize``: a local folder or an ``s3://``, ``gs://`` or
            ``azure://`` URL holding ``train/``, ``val/`` and optionally ``test/``.
        image_size: The stored size (``optimize --image_size``); ``None`` takes it. Another
            size is an error, since the images were resized when written.
        batch_size: Images per batch (per device).
        num_workers: Loader processes per device (litdata splits the chunks among them). The
            images are stored decoded, so reading is a copy: 0 is fastest on a local disk
            (workers only add inter-process copies); litdata downloads remote chunks in
            background threads either way.
        seed: Shuffle seed (chunks and samples, a new order each epoch).
        cache_dir: Local folder for downloaded chunks (URLs); ``None``: a temporary folder.
        max_cache_size: Disk the downloaded chunks may use, e.g. ``"50GB"``.
        hflip: Random horizontal flips in training.
        vflip: Random vertical flips in training.
        rotate: Random rotation range in degrees.
        scale: Random zoom range.
        translate: Random shift, as a fraction of the side.
        shear: Random shear range in degrees.
        color_jitter: Brightness/contrast/saturation jitter strength.
    """

    def __init__(
        self,
        root: str,
        image_size: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        max_cache_size: str = "50GB",
        hflip: bool = _AUGMENT.hflip,
        vflip: bool = _AUGMENT.vflip,
        rotate: float = _AUGMENT.rotate,
        scale: tuple[float, float] = _AUGMENT.scale,
        translate: float = _AUGMENT.translate,
        shear: float = _AUGMENT.shear,
        color_jitter: float = _AUGMENT.color_jitter,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        require_litdata()
        self.meta = read_meta(join(str(root), "train"))
        self.classes: list[str] = list(self.meta["classes"])
        self.image_size: int = int(self.meta["image_size"])
        if image_size is not None and int(image_size) != self.image_size:
            raise DataError(
                f"data.image_size {image_size}: the stream {root} holds {self.image_size}px "
                f"images (write it again with optimize --image_size {image_size})"
            )
        self.batch_augment: BatchAugment = AugmentSettings.from_mapping(
            self.hparams
        ).batch_augment()
        self.eval_transform = eval_transforms()
        self.datasets: dict[str, Any] = {}
        self._cache_dir = local_cache_dir(str(root), cache_dir)
        self._loader_state: dict[str, Any] = {}
        self._train_loader: Any = None

    @property
    def num_classes(self) -> int:
        """Number of classes (from the train split's index)."""
        return len(self.classes)

    @property
    def class_counts(self) -> list[int]:
        """Training images per class, in label order (from the index)."""
        return list(self.meta.get("class_counts") or [])

    @property
    def batch_size(self) -> int:
        """Images per batch (``data.batch_size``)."""
        return self.hparams.batch_size

    def _dataset(self, split: str, shuffle: bool) -> Any:
        """The litdata ``StreamingDataset`` of ``split`` (its index checked first)."""
        from litdata import StreamingDataset

        location = join(str(self.hparams.root), split)
        meta = read_meta(location)
        if meta["classes"] != self.classes or int(meta["image_size"]) != self.image_size:
            raise DataError(f"{location}: classes or image size differ from the train split's")
        cache_dir = None if self._cache_dir is None else join(self._cache_dir, split)
        return StreamingDataset(
            location,
            cache_dir=cache_dir,
            shuffle=shuffle,
            # Evaluation sees every image exactly once across ranks; training drops the
            # ragged tail so every rank runs the same number of steps.
            drop_last=shuffle,
            seed=int(self.hparams.seed),
            max_cache_size=self.hparams.max_cache_size,
            serializers=_refusing_serializers(),
        )

    def setup(self, stage: str) -> None:
        """Open the streams the stage reads (``fit``: train and val).

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.
        """
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}
        for split in splits.get(stage, ["val"]):
            if split not in self.datasets:
                self.datasets[split] = self._dataset(split, shuffle=split == "train")
        rank_zero_info(
            "lit_vision data (streamed): "
            + ", ".join(f"{k} {len(v)} images" for k, v in self.datasets.items())
            + f", {self.num_classes} classes, {self.image_size}px"
        )

    def _loader(self, split: str) -> Any:
        from litdata import StreamingDataLoader

        return StreamingDataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            num_workers=int(self.hparams.num_workers),
            collate_fn=collate_images,
            persistent_workers=int(self.hparams.num_workers) > 0,
        )

    def train_dataloader(self) -> Any:
        """Shuffled training batches; litdata's loader is stateful (its position is saved)."""
        loader = self._loader("train")
        if self._loader_state:  # a checkpoint's position, loaded before this loader existed
            loader.load_state_dict(self._loader_state)
            self._loader_state = {}
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> Any:
        """Validation batches, every image once across ranks."""
        return self._loader("val")

    def test_dataloader(self) -> Any:
        """Test batches."""
        return self._loader("test")

    def predict_dataloader(self) -> Any:
        """Batches of the test split (else val); ``lit_vision predict`` reads image folders."""
        return self._loader("test" if "test" in self.datasets else "val")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on the device.

        Args:
            batch: ``(images, targets)`` on the device.
            dataloader_idx: Unused.
        """
        if self.trainer is not None and self.trainer.training:
            images, targets = batch
            return self.batch_augment(images), targets
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (also saved by Lightning's stateful-loader protocol).

        Kept here too: Lightning 2.6 builds the training loader before it restores a
        checkpoint when the LR schedule asks for ``estimated_stepping_batches``, and then does
        not restore loader states; the DataModule's state arrives before that.
        """
        if self._train_loader is None or self.trainer is None or not self.trainer.training:
            return {}
        return {"loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training stream where the checkpoint left it.

        Args:
            state_dict: What :meth:`state_dict` returned.
        """
        self._loader_state = dict(state_dict.get("loader") or {})
