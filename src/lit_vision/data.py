"""ImageFolderDataModule: split image folders (train/ val/ [test/]) decoded, cached and augmented.

Its parts: :mod:`~lit_vision.folders` (classes, files, scans), :mod:`~lit_vision.datasets`,
:mod:`~lit_vision.cache`, :mod:`~lit_vision.sampling` (resumable order), :mod:`~lit_vision.augment`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lit_vision.augment import (
    AugmentSettings,
    BatchAugment,
    check_pipeline,
    custom_pipeline,
    eval_transforms,
)
from lit_vision.balance import Balance, balanced, per_class
from lit_vision.cache import cache_folder, cached_decode, decode_all
from lit_vision.check import ScanReport
from lit_vision.datasets import BatchedImages, ImageDataset
from lit_vision.errors import DataError
from lit_vision.features import FeatureBatches, FeatureSet
from lit_vision.folders import (
    FolderScreen,
    auto_image_size,
    discover_classes,
    list_samples,
    list_unlabelled,
    split_classes,
)
from lit_vision.images import DEFAULT_MAX_MEGAPIXELS, ImageDecodeError
from lit_vision.loaders import batch_loader, eval_sampler, loader_workers
from lit_vision.mirror import hflip_verdict
from lit_vision.sampling import EpochSampler, TrainOrder

# Names other modules and scripts import from here (bench/, report.py, tests).
__all__ = [
    "DataError",
    "EpochSampler",
    "ImageDataset",
    "ImageFolderDataModule",
    "decode_all",
    "discover_classes",
    "list_samples",
]

_AUGMENT = AugmentSettings()  # the defaults of the augmentation arguments below: one declaration
_ALBUMENTATIONS_KEY = "data.albumentations"


class ImageFolderDataModule(L.LightningDataModule):
    """Split image folders: ``ROOT/train/CLASS/*``, ``ROOT/val/CLASS/*``, optional ``ROOT/test/CLASS/*``.

    Classes are discovered from ``train/`` when the module is built, so the CLI can pass
    ``num_classes`` and the class names to the model. Images of any mode (grayscale, RGBA,
    palette, CMYK, 16-bit) and size are decoded to RGB at ``image_size``; batches are uint8
    and the model normalises them.

    Args:
        root: Folder holding ``train/``, ``val/`` and optionally ``test/``.
        image_size: Square input side; ``None`` takes the model's preferred size (a
            pretrained backbone's) or 64.
        batch_size: Images per batch (per device).
        num_workers: Loader processes; ``None`` picks 0 when a split is cached and augmented
            per batch (a batch is one array gather, and workers would only compete with the
            model for the CPU), else ``min(4, cpu count)`` to decode and augment in parallel.
        cache: Decode every image once into memory (``"auto"``: when the decoded arrays fit
            ``cache_budget_gb``) instead of decoding on every epoch.
        cache_budget_gb: Memory the ``"auto"`` cache may use for all splits together.
        disk_cache: Also keep the decoded arrays on disk (memory-mapped on later runs, keyed
            by the files' contents and ``image_size``), so a second run skips decoding.
        cache_dir: Folder for the disk cache; defaults to ``ROOT/.lit_vision_cache``.
        augment: ``"batch"``: the augmentations below, with their own random parameters per
            image and epoch, vectorised over each batch after it reaches the device (fast, and
            on the GPU when there is one). ``"sample"``: an albumentations pipeline run per
            image in the loader: the same augmentations, or ``albumentations`` when given.
        hflip: Random horizontal flips in training; ``auto``: unless mirroring changes the
            classes of the training images (signs, digits, text; :mod:`lit_vision.mirror`).
        vflip: Random vertical flips in training.
        rotate: Maximum training rotation in degrees.
        scale: Training zoom range (the same zoom on both axes).
        translate: Maximum training shift on each axis, as a fraction of the side.
        shear: Maximum horizontal training shear in degrees.
        color_jitter: Training brightness/contrast/saturation jitter strength.
        predict_root: Folder of images (any depth) used by ``predict``; defaults to ``test/``
            or ``val/``.
        scan: Scan the folders before fit/validate/test (``lit_vision.check``): unreadable or
            truncated images, images outside class folders, empty classes, the same image in
            two splits (leakage). Splits that are cached are checked while decoding.
        on_bad: What a bad image file does: ``error`` stops with a list of the files; ``skip``
            leaves them out, logs them and counts them (``skipped``).
        max_megapixels: Largest image decoded, in millions of pixels; larger files are bad
            files (a decode holds the whole image in memory).
        albumentations: Any albumentations pipeline for training, run per image with
            ``augment: sample`` instead of the settings above: what ``A.to_dict`` returns (or
            its ``transform``) or a file ``A.save`` wrote; uint8 out at ``image_size``.
        balance: Draw the training classes equally often (``on``; ``auto``: over 3:1), each epoch
            resampled, resumable; not with the model's ``class_weights`` (:mod:`~lit_vision.balance`).
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int | Literal["auto"] | None = None,
        batch_size: int = 64,
        num_workers: int | None = None,
        cache: bool | Literal["auto"] = "auto",
        cache_budget_gb: float = 4.0,
        disk_cache: bool = True,
        cache_dir: str | Path | None = None,
        augment: Literal["batch", "sample"] = "batch",
        hflip: bool | Literal["auto"] = _AUGMENT.hflip,
        vflip: bool = _AUGMENT.vflip,
        rotate: float = _AUGMENT.rotate,
        scale: tuple[float, float] = _AUGMENT.scale,
        translate: float = _AUGMENT.translate,
        shear: float = _AUGMENT.shear,
        color_jitter: float = _AUGMENT.color_jitter,
        predict_root: str | Path | None = None,
        scan: bool = True,
        on_bad: Literal["error", "skip"] = "error",
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        albumentations: dict[str, Any] | str | None = None,
        balance: Balance = "off",
    ) -> None:
        super().__init__()
        # Plain strings in the checkpoint's hyperparameters: a Path is a pickled object, which
        # checkpoint readers (weights_only=True) refuse.
        root = str(root)
        cache_dir = None if cache_dir is None else str(cache_dir)
        predict_root = None if predict_root is None else str(predict_root)
        self.save_hyperparameters()
        self.classes: list[str] = split_classes(self.root)
        if augment not in ("batch", "sample"):
            raise DataError(f"data.augment must be 'batch' or 'sample', not {augment!r}")
        try:
            # hflip auto starts off; setup("fit") decides it from the training images.
            flips = {"hflip": bool(hflip) and hflip != "auto"}
            self.augment_settings = AugmentSettings.from_mapping({**self.hparams, **flips})
        except ValueError as err:
            raise DataError(f"data.{err}") from None
        self.custom_pipeline: A.Compose | None = custom_pipeline(
            albumentations, augment, image_size, _ALBUMENTATIONS_KEY
        )
        self.batch_augment: BatchAugment | None = (
            self.augment_settings.batch_augment() if augment == "batch" else None
        )
        # data.image_size, or the model's preferred size (auto: sized to the data) once resolved.
        self.resolved_image_size: int | None = image_size if isinstance(image_size, int) else None
        self.datasets: dict[str, ImageDataset] = {}
        # The scans' findings, the files left out and their SHA-256 (the cache's key).
        self.screen = FolderScreen(
            self.root, self.classes, on_bad=on_bad, max_megapixels=max_megapixels
        )
        self.train_order = TrainOrder()  # seed and resume point of the training sampler

    @property
    def root(self) -> Path:
        """The data folder (``data.root``, with ``~`` expanded)."""
        return Path(self.hparams.root).expanduser()

    @property
    def image_size(self) -> int | None:
        """The input side in use: ``data.image_size``, or the size setup resolved."""
        return self.resolved_image_size

    @property
    def batch_size(self) -> int:
        """Images per batch (``data.batch_size``; Lightning's batch-size finder may set it)."""
        return self.hparams.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.hparams.batch_size = value

    @property
    def scan_report(self) -> ScanReport | None:
        """The first scan's report (``None`` before a scan, or with ``scan: false``)."""
        return self.screen.report

    @property
    def skipped(self) -> list[str]:
        """Image files left out by ``on_bad: skip``."""
        return self.screen.skipped

    @property
    def class_counts(self) -> list[int]:
        """Training images per class, in label order (less the files ``on_bad`` left out)."""
        train = self.datasets.get("train")
        return per_class(train.samples if train else self.screen.samples("train"), self.num_classes)

    @property
    def num_classes(self) -> int:
        """Number of classes found in ``train/``."""
        return len(self.classes)

    def _cache_dir(self) -> Path | None:
        """Folder of the disk cache, or ``None`` without one."""
        return cache_folder(self.root, self.hparams.cache_dir, self.hparams.disk_cache)

    def _resolve_image_size(self) -> int:
        """The input side: ``image_size``, else the attached model's preferred size (or 64).

        ``auto`` sizes it to the data too: twice the median short side of the training
        images, rounded up to a multiple of 32, at least 64 and at most the model's preferred
        size, so 32 px signs run at 64 px instead of being blown up to a backbone's 224.
        """
        if self.resolved_image_size is None:
            model = self.trainer.lightning_module if self.trainer is not None else None
            preferred = int(getattr(model, "default_image_size", None) or 64)
            if self.hparams.image_size == "auto":
                files = [p for p, _ in list_samples(self.root / "train", self.classes)]
                preferred = auto_image_size(files, preferred)
                rank_zero_info(f"lit_vision data: image_size auto -> {preferred}px")
            self.resolved_image_size = preferred
        return self.resolved_image_size

    def _use_cache(self, n_images: int) -> bool:
        """Whether a split of ``n_images`` is decoded once into memory."""
        if self.hparams.cache == "auto":
            need = n_images * self._resolve_image_size() ** 2 * 3
            # The disk cache is one memory-mapped file per node, shared by its processes' page
            # cache; without it every process (DDP rank) decodes its own copy.
            if self._cache_dir() is None and self.trainer is not None:
                need *= self.trainer.num_devices
            return need <= self.hparams.cache_budget_gb * 1024**3
        return bool(self.hparams.cache)

    def _train_transform(self, size: int) -> A.Compose:
        """The per-sample training pipeline (empty when batches are augmented on the device)."""
        if self.hparams.augment == "batch":  # plain images; on_after_batch_transfer augments
            return eval_transforms()
        if self.custom_pipeline is not None:
            check_pipeline(self.custom_pipeline, size, _ALBUMENTATIONS_KEY)
            return self.custom_pipeline
        return self.augment_settings.albumentations()

    def _build(self, split: str, train: bool) -> ImageDataset | None:
        """The dataset of ``split`` (built once; decoded into the cache when it fits)."""
        if split in self.datasets:
            return self.datasets[split]
        samples = self.screen.samples(split)
        if not samples:
            return None
        size = self._resolve_image_size()
        cached = None
        if self._use_cache(len(samples)):
            cached = cached_decode(
                samples,
                size,
                self._cache_dir(),
                name=split,
                digests=self.screen.digests,
                max_megapixels=self.hparams.max_megapixels,
            )
        transform = self._train_transform(size) if train else eval_transforms()
        self.datasets[split] = ImageDataset(
            samples, size, transform, cached, self.hparams.max_megapixels
        )
        return self.datasets[split]

    def _predict_dataset(self) -> ImageDataset | None:
        """``predict_root``'s images (any depth, unlabelled), else the test or val dataset."""
        if self.hparams.predict_root is None:
            return self._build("test", train=False) or self._build("val", train=False)
        samples = list_unlabelled(Path(self.hparams.predict_root))
        return ImageDataset(
            samples,
            self._resolve_image_size(),
            eval_transforms(),
            max_megapixels=self.hparams.max_megapixels,
        )

    def setup(self, stage: str) -> None:
        """Build the datasets the stage needs (decoding into the cache when enabled).

        Args:
            stage: ``fit``, ``validate``, ``test`` or ``predict``.

        Raises:
            DataError: A split the stage needs has no images, or the scan found problems.
        """
        if self.hparams.scan and stage in ("fit", "validate", "test") and self.scan_report is None:
            self._scan(stage)
        if stage == "fit":
            self._build_checked("train", train=True)
            self._decide_hflip()
            self._build_checked("val", train=False)
            if "val" not in self.datasets:
                raise DataError(f"no images in {self.root / 'val'}")
        elif stage == "validate":
            self._build_checked("val", train=False)
        elif stage == "test":
            if self._build_checked("test", train=False) is None:
                raise DataError(f"no images in {self.root / 'test'} (needed by `test`)")
        elif stage == "predict":
            self.datasets["predict"] = self._predict_dataset()
        rank_zero_info(
            "lit_vision data: "
            + ", ".join(f"{k} {len(v)} images" for k, v in self.datasets.items())
            + f", {self.num_classes} classes, {self.image_size}px"
        )

    def _decide_hflip(self) -> None:
        """``hflip: auto``: random flips unless mirroring changes the training images' classes."""
        if self.hparams.hflip == "auto" and "train" in self.datasets:
            verdict = hflip_verdict(self.datasets["train"], self.classes)
            self.augment_settings = replace(self.augment_settings, hflip=verdict.hflip)
            self.batch_augment = self.batch_augment and self.augment_settings.batch_augment()
            if self.hparams.augment == "sample":
                self.datasets["train"].transform = self._train_transform(self.image_size)
            rank_zero_info(f"lit_vision data: hflip auto -> {verdict.hflip} ({verdict.reason})")

    def _scan(self, stage: str) -> None:
        """Scan all splits once per run; the splits this stage reads are decoded unless cached."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}[stage]
        size = self._resolve_image_size()
        self._forget(self.screen.scan_shared(self.trainer, needed, size, self._use_cache))

    def _forget(self, skipped: list[str]) -> None:
        """Drop the datasets holding newly skipped files, so they are rebuilt without them."""
        for split in [
            s for s in self.datasets if any(p.startswith(str(self.root / s)) for p in skipped)
        ]:
            del self.datasets[split]

    def _build_checked(self, split: str, train: bool) -> ImageDataset | None:
        """``_build``, turning a decode failure of the cache into a full scan of that split."""
        try:
            return self._build(split, train)
        except ImageDecodeError:
            if not self.hparams.scan:
                raise
        self._forget(self.screen.rescan(split, self._resolve_image_size()))
        return self._build(split, train)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """The DataLoader of ``split``: whole batches at a time, shuffled by the resumable sampler."""
        dataset = self.datasets[split]
        workers = loader_workers(self.hparams.num_workers, dataset)
        features = self._cached_features(split)
        batches: Dataset = BatchedImages(dataset)
        if features is not None:  # the model serves cached backbone features: no image work
            batches, workers = FeatureBatches(features), 0
        if shuffle:  # the seeded, resumable order (class-balanced with `balance`)
            shard = getattr(self.trainer, "distributed_sampler_kwargs", None)  # DDP: rank's share
            order: dict[str, Any] = self.train_order.loader_kwargs(
                len(dataset), balanced(self), shard
            )
        else:
            order = {"shuffle": False, "sampler": eval_sampler(self.trainer, dataset)}
        drop_last = shuffle and len(dataset) > self.batch_size
        # Training: the loader's position is part of the checkpoint (Lightning's protocol).
        stateful = {"position": self.state_dict, "restore": self.train_order.restore}
        return batch_loader(
            batches, self.batch_size, order, workers, drop_last, stateful if shuffle else None
        )

    def _cached_features(self, split: str) -> FeatureSet | None:
        """Features the model caches for ``split``, to serve instead of images, or ``None``.

        A model offers them with a ``cached_features(split, dataset, augment)`` method, as
        TransferClassifier does while its backbone is frozen.
        """
        model = self.trainer.lightning_module if self.trainer is not None else None
        provide = getattr(model, "cached_features", None)
        if provide is None or split not in self.datasets:
            return None
        return provide(
            split, self.datasets[split], self.batch_augment if split == "train" else None
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on the device when ``augment="batch"``.

        Args:
            batch: ``(images, targets)`` on the device.
            dataloader_idx: Unused.
        """
        trainer = self.trainer
        if self.batch_augment is not None and trainer is not None and trainer.training:
            images, targets = batch
            if images.dtype != torch.uint8:  # cached features: augmented when computed
                return batch
            return self.batch_augment(images), targets
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where training stands in the epoch's order (also the training loader's state)."""
        return self.train_order.state_dict(self.trainer, self.batch_size)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Remember the checkpoint's resume point (:meth:`state_dict`) for the training loader."""
        self.train_order.load_state_dict(state_dict)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches of ``predict_root`` (or test/val) in file order."""
        return self._loader("predict", shuffle=False)
