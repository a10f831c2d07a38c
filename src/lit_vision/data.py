"""ImageFolderDataModule: split image folders (train/ val/ [test/]) decoded, cached and augmented."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import lightning as L
import numpy as np
import PIL
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_vision.check import DecodeMode, ScanReport, format_skipped, scan_dataset
from lit_vision.images import (
    DEFAULT_MAX_MEGAPIXELS,
    RESIZE_FILTER,
    ImageDecodeError,
    file_sha256,
    is_hidden_image,
    is_image_file,
    load_image,
)
from lit_vision.transforms import BatchAugment, apply, eval_transforms, train_transforms
from lit_vision.errors import DataError

Stage = Literal["train", "val", "test"]
Sample = tuple[str, int]


def discover_classes(split_dir: Path) -> list[str]:
    """Class names of a split folder: its sub-folders, sorted.

    Raises:
        DataError: The folder is missing or holds no class sub-folders.
    """
    if not split_dir.is_dir():
        raise DataError(f"missing folder {split_dir} (expected ROOT/train/CLASS/*.jpg ...)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"no class sub-folders in {split_dir}")
    return classes


def list_samples(split_dir: Path, classes: Sequence[str], hidden: list[str] | None = None) -> list[Sample]:
    """All image files under ``split_dir/CLASS/`` (any depth), with class indices, sorted.

    What counts is :func:`~lit_vision.images.is_image_file` below the class folder, the rule
    ``check`` applies too: images under a hidden name (``CLASS/.sub/x.jpg``) are left out.

    Args:
        split_dir: The split folder.
        classes: The class names of train/.
        hidden: When given, the hidden images left out are appended to it (for the log).

    Raises:
        DataError: A class folder of ``split_dir`` is not among ``classes``.
    """
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if class_dir.name not in index:
            raise DataError(
                f"class '{class_dir.name}' in {split_dir} is not a class of train/ "
                f"(train has {len(classes)}: {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''})"
            )
        files = [p for p in sorted(class_dir.rglob("*")) if p.is_file()]
        samples.extend((str(f), index[class_dir.name]) for f in files if is_image_file(f, root=class_dir))
        if hidden is not None:
            hidden += [str(f) for f in files if is_hidden_image(f, class_dir)]
    if hidden is not None:  # hidden class folders: never classes, their images never data
        for d in sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name.startswith(".")):
            hidden += [str(f) for f in sorted(d.rglob("*")) if f.is_file() and is_hidden_image(f, split_dir)]
    return samples


def decode_all(
    paths: Sequence[str],
    size: int,
    *,
    workers: int | None = None,
    desc: str = "",
    max_megapixels: float | None = None,
) -> np.ndarray:
    """Decode images in parallel into one ``(N, size, size, 3)`` uint8 array.

    PIL releases the GIL while decoding and resizing, so threads scale without copying the
    result between processes. ``max_megapixels`` is ``load_image``'s limit.
    """
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)

    def _one(i: int) -> None:
        out[i] = load_image(paths[i], size, max_megapixels=max_megapixels)

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(workers) as pool:
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


CACHE_VERSION = 2  # bump when decoding changes, so old cache files are not reused


def _package_version() -> str:
    try:
        return metadata.version("lit_vision")
    except metadata.PackageNotFoundError:  # run from a source tree
        return "source"


def decoder_settings(size: int, max_megapixels: float | None = None) -> dict[str, Any]:
    """Everything besides the files' bytes that decides the decoded pixels (the cache key)."""
    return {
        "cache_version": CACHE_VERSION,
        "lit_vision": _package_version(),
        "pillow": PIL.__version__,
        "numpy": np.__version__.split(".")[0],
        "size": size,
        "filter": RESIZE_FILTER.name,
        "max_megapixels": DEFAULT_MAX_MEGAPIXELS if max_megapixels is None else float(max_megapixels),
    }


def file_digests(
    paths: Sequence[str], known: dict[str, str] | None = None, workers: int | None = None
) -> list[str]:
    """SHA-256 of each file, from ``known`` (the scan's) where there, else read in blocks.

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

    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
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
    still gets a new key. The scan's SHA-256 digests are used when given (``digests``, by
    path), so only files it did not hash are read here.
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
            rank_zero_warn(f"lit_vision: cache file {target} fails its checksum (corrupted); decoding again")
            return None
        arr = np.load(target, mmap_mode="r")
    except (OSError, ValueError):
        return None  # unreadable or truncated by a crash: decode again and replace it
    return arr if arr.shape == shape and arr.dtype == np.uint8 else None


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

    The first run decodes (in parallel) and writes ``NAME-SIZEpx-KEY.npy`` and its SHA-256
    in ``NAME-SIZEpx-KEY.json`` atomically (temporary files, then ``os.replace``), so
    processes starting together (DDP ranks) never read a half-written file; later runs check
    the file against its SHA-256 and memory-map it. The key covers the files' contents and
    the decoder's settings (:func:`cache_key`). Without ``cache_dir``, or when it is not
    writable, the images are decoded in memory only.

    Args:
        samples: ``(path, class_index)`` pairs, in dataset order.
        size: Square side the images are resized to.
        cache_dir: Folder for the cache file, or ``None`` for no disk cache.
        name: Prefix of the file name (the split).
        digests: SHA-256 of the files by path (the scan's), so they are not read again.
        max_megapixels: ``load_image``'s limit.
    """
    paths = [p for p, _ in samples]
    if cache_dir is None:
        return decode_all(paths, size, desc=name, max_megapixels=max_megapixels)
    cache_dir = Path(cache_dir)
    prefix = f"{name or 'images'}-{size}px-"
    key = cache_key(samples, size, digests=digests, max_megapixels=max_megapixels)
    target = cache_dir / f"{prefix}{key}.npy"
    if target.is_file():
        cached = _load_verified(target, (len(samples), size, size, 3))
        if cached is not None:
            return cached
    arr = decode_all(paths, size, desc=name, max_megapixels=max_megapixels)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npy"
        tmp_sum = tmp.with_suffix(".json")
        try:
            np.save(tmp, arr)
            tmp_sum.write_text(json.dumps({"sha256": file_sha256(tmp)}))
            # The array first: a reader seeing it before its checksum decodes again, never
            # trusts it unchecked.
            os.replace(tmp, target)
            os.replace(tmp_sum, target.with_suffix(".json"))
        finally:
            tmp.unlink(missing_ok=True)
            tmp_sum.unlink(missing_ok=True)
        for stale in cache_dir.glob(f"{prefix}*.npy"):
            if stale != target:
                stale.unlink(missing_ok=True)  # an older version of these files
                stale.with_suffix(".json").unlink(missing_ok=True)
    except OSError as err:
        rank_zero_warn(f"lit_vision: not caching decoded images in {cache_dir}: {err}")
    return arr


class ImageDataset(Dataset):
    """Images with integer labels, returned as ``(uint8 CHW tensor, label)``.

    Args:
        samples: ``(path, class_index)`` pairs.
        image_size: Side of the square the images are resized to.
        transform: Albumentations pipeline applied per sample (uint8 HWC in and out).
        cache: Optional pre-decoded ``(N, H, W, 3)`` uint8 array aligned with ``samples``.
        max_megapixels: ``load_image``'s limit when decoding per sample.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        transform: A.Compose | None = None,
        cache: np.ndarray | None = None,
        max_megapixels: float | None = None,
    ) -> None:
        self.samples = list(samples)
        self.max_megapixels = max_megapixels
        self.image_size = image_size
        self.transform = transform
        self.cache = cache
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(i, tuple):  # (index, seed) from EpochSampler: augmentation fixed by seed
            i, seed = i
            if self.transform is not None and self.transform.transforms:
                self.transform.set_random_seed(seed)
        path, target = self.samples[i]
        if self.cache is not None:
            image = self.cache[i]
        else:
            # A file that turned bad after the scan raises ImageDecodeError, which keeps its
            # type and one-line message through a loader worker (see ImageDecodeError).
            image = load_image(path, self.image_size, max_megapixels=self.max_megapixels)
        image = apply(self.transform, image)
        if not image.flags.writeable:  # a row of the read-only memmapped disk cache
            image = image.copy()
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), target


class BatchedImages(Dataset):
    """A view of an :class:`ImageDataset` that the DataLoader fetches a whole batch at a time.

    ``__getitems__`` gathers the batch with one fancy index into the cache (or one loop of
    decode + per-sample transform when streaming) into a single array, instead of building
    and collating one tensor per sample. Use with ``collate_fn=collate_batch``. Images come
    back ``(N, 3, H, W)`` uint8 with channels-last strides (no copy needed for the model).

    Args:
        dataset: The per-sample dataset (its cache, transform and samples are used).
    """

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.dataset[i]

    def __getitems__(self, indices: Sequence[int | tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self.dataset
        identity = ds.transform is None or not ds.transform.transforms
        if ds.cache is None or not identity:
            # Per-sample work (decoding or albumentations): the dataset's own path, which also
            # applies EpochSampler's per-sample augmentation seeds.
            items = [ds[i] for i in indices]
            return torch.stack([x for x, _ in items]), torch.tensor([t for _, t in items], dtype=torch.long)
        # EpochSampler yields (index, seed); with no per-sample augmentation the seed is unused.
        rows = [i[0] if isinstance(i, tuple) else i for i in indices]
        images = ds.cache[np.asarray(rows)]  # one gather (a copy, also from a memmap)
        targets = torch.tensor([ds.targets[i] for i in rows], dtype=torch.long)
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), targets


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for :class:`BatchedImages`: the batch is already assembled."""
    return batch


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
            by the file list and ``image_size``), so a second run skips decoding.
        cache_dir: Folder for the disk cache; defaults to ``ROOT/.lit_vision_cache``.
        augment: ``"batch"``: the augmentations below, with their own random parameters per
            image and epoch, vectorised over each batch after it reaches the device (fast, and
            on the GPU when there is one). ``"sample"``: the same as an albumentations pipeline
            run per image in the loader.
        hflip: Random horizontal flips in training.
        vflip: Random vertical flips in training.
        rotate: Maximum training rotation in degrees.
        scale: Training zoom range.
        translate: Maximum training shift, as a fraction of the side.
        shear: Maximum training shear in degrees.
        color_jitter: Training colour-jitter strength.
        predict_root: Folder of images (any depth) used by ``predict``; defaults to ``test/``
            or ``val/``.
        scan: Scan the folders before fit/validate/test (``lit_vision.check``): unreadable or
            truncated images, images outside class folders, empty classes, the same image in
            two splits (leakage). Splits that are cached are checked while decoding.
        on_bad: What a bad image file does: ``error`` stops with a list of the files; ``skip``
            leaves them out, logs them and counts them (``skipped``).
        max_megapixels: Largest image decoded, in millions of pixels; larger files are bad
            files (a decode holds the whole image in memory).
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int | None = None,
        batch_size: int = 64,
        num_workers: int | None = None,
        cache: bool | Literal["auto"] = "auto",
        cache_budget_gb: float = 4.0,
        disk_cache: bool = True,
        cache_dir: str | Path | None = None,
        augment: Literal["batch", "sample"] = "batch",
        hflip: bool = False,
        vflip: bool = False,
        rotate: float = 10.0,
        scale: tuple[float, float] = (0.9, 1.1),
        translate: float = 0.1,
        shear: float = 0.0,
        color_jitter: float = 0.2,
        predict_root: str | Path | None = None,
        scan: bool = True,
        on_bad: Literal["error", "skip"] = "error",
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    ) -> None:
        super().__init__()
        # Plain strings in the checkpoint's hyperparameters: a Path is a pickled object, which
        # checkpoint readers (weights_only=True) refuse.
        root = str(root)
        cache_dir = None if cache_dir is None else str(cache_dir)
        predict_root = None if predict_root is None else str(predict_root)
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"data.root {self.root} is not a folder")
        self.classes: list[str] = discover_classes(self.root / "train")
        for split in ("val", "test"):
            split_dir = self.root / split
            if split_dir.is_dir():
                extra = sorted(set(discover_classes(split_dir)) - set(self.classes))
                if extra:
                    raise DataError(
                        f"{split_dir} has classes missing from train/: {', '.join(extra[:10])}"
                    )
        if not (self.root / "val").is_dir():
            raise DataError(f"missing folder {self.root / 'val'} (run `lit-vision split` first)")
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache = cache
        self.cache_budget_gb = cache_budget_gb
        self.predict_root = Path(predict_root) if predict_root else None
        self.datasets: dict[str, ImageDataset] = {}
        self.disk_cache = disk_cache
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.root / ".lit_vision_cache"
        if augment not in ("batch", "sample"):
            raise DataError(f"data.augment must be 'batch' or 'sample', not {augment!r}")
        self.augment = augment
        self.batch_augment: BatchAugment | None = None
        self.scan = scan
        self.on_bad = on_bad
        self.scan_report: ScanReport | None = None
        self.skipped: list[str] = []  # image files left out by on_bad="skip"
        self.max_megapixels = max_megapixels
        self.digests: dict[str, str] = {}  # SHA-256 by path from the scans: the cache's key
        self._hidden_logged: set[str] = set()

    @property
    def num_classes(self) -> int:
        """Number of classes found in ``train/``."""
        return len(self.classes)

    def _resolve_image_size(self) -> int:
        if self.image_size is None:
            model = self.trainer.lightning_module if self.trainer is not None else None
            self.image_size = int(getattr(model, "default_image_size", None) or 64)
        return self.image_size

    def _samples(self, split: str) -> list[Sample]:
        split_dir = self.root / split
        if not split_dir.is_dir():
            return []
        hidden: list[str] = []
        samples = list_samples(split_dir, self.classes, hidden)
        if hidden and self.scan_report is None and split not in self._hidden_logged:
            # Without a scan nothing else says so (a scan lists them among its warnings).
            self._hidden_logged.add(split)
            rank_zero_warn(
                f"lit_vision data: ignored {len(hidden)} image(s) in hidden files/folders under {split_dir}, "
                f"such as {hidden[0]}"
            )
        if self.skipped:
            skip = set(self.skipped)
            samples = [s for s in samples if s[0] not in skip]
        if split == "train":
            counts = np.bincount([t for _, t in samples], minlength=self.num_classes)
            empty = [c for c, n in zip(self.classes, counts, strict=True) if n == 0]
            if empty:
                raise DataError(f"class folder(s) with no images in {split_dir}: {', '.join(empty)}")
        return samples

    def _use_cache(self, n_images: int) -> bool:
        if self.cache == "auto":
            need = n_images * self._resolve_image_size() ** 2 * 3
            # Under DDP every process on a node holds its own copy.
            need *= self.trainer.num_devices if self.trainer is not None else 1
            return need <= self.cache_budget_gb * 1024**3
        return bool(self.cache)

    def _build(self, split: str, train: bool) -> ImageDataset | None:
        if split in self.datasets:
            return self.datasets[split]
        samples = self._samples(split)
        if not samples:
            return None
        size = self._resolve_image_size()
        cached = None
        if self._use_cache(len(samples)):
            cached = cached_decode(samples, size, self.cache_dir if self.disk_cache else None, name=split,
                                   digests=self.digests, max_megapixels=self.max_megapixels)
        augment = dict(
            hflip=self.hparams.hflip,
            vflip=self.hparams.vflip,
            rotate=self.hparams.rotate,
            scale=tuple(self.hparams.scale),
            translate=self.hparams.translate,
            shear=self.hparams.shear,
            color_jitter=self.hparams.color_jitter,
        )
        if train and self.augment == "batch":
            self.batch_augment = BatchAugment(**augment)
            train = False  # the loader delivers plain images; on_after_batch_transfer augments
        transform = (
            train_transforms(**augment)
            if train
            else eval_transforms()
        )
        self.datasets[split] = ImageDataset(samples, size, transform, cached, self.max_megapixels)
        return self.datasets[split]

    def setup(self, stage: str) -> None:
        """Build the datasets the stage needs (decoding into the cache when enabled)."""
        if self.scan and stage in ("fit", "validate", "test") and self.scan_report is None:
            self._scan(stage)
        if stage == "fit":
            self._build_checked("train", train=True)
            self._build_checked("val", train=False)
            if "val" not in self.datasets:
                raise DataError(f"no images in {self.root / 'val'}")
        elif stage == "validate":
            self._build_checked("val", train=False)
        elif stage == "test":
            if self._build_checked("test", train=False) is None:
                raise DataError(f"no images in {self.root / 'test'} (needed by `test`)")
        elif stage == "predict":
            if self.predict_root is not None:
                found = [p for p in sorted(self.predict_root.rglob("*")) if p.is_file()]
                files = [str(p) for p in found if is_image_file(p, root=self.predict_root)]
                hidden = [str(p) for p in found if is_hidden_image(p, self.predict_root)]
                if hidden:
                    rank_zero_warn(f"lit_vision data: ignored {len(hidden)} image(s) in hidden files/folders "
                                   f"under {self.predict_root}, such as {hidden[0]}")
                self.datasets["predict"] = ImageDataset(
                    [(f, -1) for f in files], self._resolve_image_size(), eval_transforms(),
                    max_megapixels=self.max_megapixels,
                )
            else:
                ds = self._build("test", train=False) or self._build("val", train=False)
                self.datasets["predict"] = ds
        rank_zero_info(
            "lit_vision data: "
            + ", ".join(f"{k} {len(v)} images" for k, v in self.datasets.items())
            + f", {self.num_classes} classes, {self.image_size}px"
        )

    def _eval_sampler(self, dataset: Dataset) -> Sampler | None:
        """Under several processes, each evaluates a disjoint share, every sample exactly once.

        Lightning's default DistributedSampler pads the last share with repeated samples, which
        would count them twice in val/test metrics. Lightning keeps a DistributedSampler it is
        given, so training still gets its own (shuffled, padded, which is harmless there).
        """
        kwargs = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if not kwargs or kwargs.get("num_replicas", 1) <= 1:
            return None
        return UnrepeatedDistributedSampler(dataset, shuffle=False, **kwargs)

    def _workers(self, dataset: ImageDataset) -> int:
        if self.num_workers is not None:
            return self.num_workers
        per_sample_work = dataset.cache is None or bool(dataset.transform and dataset.transform.transforms)
        return min(4, os.cpu_count() or 1) if per_sample_work else 0
    def _scan(self, stage: str) -> None:
        """Scan all splits once; decode fully the splits this stage reads that are not cached."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}[stage]
        size = self._resolve_image_size()

        def mode(split: str, n: int) -> DecodeMode:
            if split not in needed:
                return "none"  # hashed for the leakage check, decoded when its stage runs
            return "verify" if self._use_cache(n) else "full"  # the cache decodes fully anyway

        limit = self.max_megapixels
        self.scan_report = scan_dataset(self.root, decode=mode, size=size, max_megapixels=limit)
        if self.scan_report.errors and any(mode(s, n) == "verify" for s, n in self.scan_report.images.items()):
            # Something is wrong anyway: decode fully now so the list of bad files is complete.
            self.scan_report = scan_dataset(self.root, decode=lambda s, n: "full" if s in needed else "none",
                                            size=size, max_megapixels=limit)
        self.digests.update(self.scan_report.digests)
        self._apply_scan(self.scan_report)

    def _apply_scan(self, report: ScanReport) -> None:
        """Stop on errors (``on_bad: error``) or leave the bad files out (``skip``), logging them."""
        if report.warnings:
            rank_zero_warn("lit_vision data scan: " + report.summary("warning").replace("\n", "\n  "))
        if not report.errors:
            return
        blocking = report.errors if self.on_bad == "error" else report.unskippable()
        if blocking:
            hint = " (or --data.on_bad skip to leave bad files out)" if self.on_bad == "error" else ""
            raise DataError(
                f"{len(blocking)} problem(s) in {self.root}{hint}: "
                + " | ".join(ScanReport(report.root, findings=blocking).summary().splitlines())
            )
        new = [p for p in report.skippable_files() if p not in set(self.skipped)]
        self.skipped = sorted(set(self.skipped) | set(new))
        for split in [s for s in self.datasets if any(p.startswith(str(self.root / s)) for p in new)]:
            del self.datasets[split]  # rebuilt without the skipped files
        rank_zero_warn(f"lit_vision data: skipping {format_skipped(self.skipped)} (on_bad=skip)\n  "
                       + report.summary().replace("\n", "\n  "))

    def _build_checked(self, split: str, train: bool) -> ImageDataset | None:
        """``_build``, turning a decode failure of the cache into a full scan of that split."""
        try:
            return self._build(split, train)
        except ImageDecodeError:
            if not self.scan:
                raise
        report = scan_dataset(self.root, [split], decode="full", size=self._resolve_image_size(),
                              max_megapixels=self.max_megapixels)
        self.digests.update(report.digests)
        if report.ok:  # a file that failed once but reads now (e.g. written meanwhile): retry
            return self._build(split, train)
        self._apply_scan(report)
        return self._build(split, train)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        workers = self._workers(dataset)
        sampler = None if shuffle else self._eval_sampler(dataset)
        return DataLoader(
            BatchedImages(dataset),
            batch_size=self.batch_size,
            **(self._order(split, shuffle) if shuffle else {"shuffle": False, "sampler": sampler}),
            num_workers=workers,
            collate_fn=collate_batch,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=shuffle and len(dataset) > self.batch_size,
            prefetch_factor=4 if workers > 0 else None,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on the device when ``augment="batch"``."""
        trainer = self.trainer
        if self.batch_augment is not None and trainer is not None and trainer.training:
            images, targets = batch
            return self.batch_augment(images), targets
        return batch
    def _order(self, split: str, shuffle: bool) -> dict:
        """Sampling arguments: shuffled training goes through a seeded, resumable EpochSampler."""
        if not shuffle:
            return {"shuffle": False}
        env = os.environ.get("PL_GLOBAL_SEED")
        if not hasattr(self, "_order_seed"):
            self._order_seed = int(env) if env is not None else int(np.random.SeedSequence().entropy % 2**31)
        # A private generator for the loader's own draw (worker base seed), so creating an
        # iterator (again, after a resume) does not move the global RNG that dropout uses.
        generator = torch.Generator().manual_seed(self._order_seed)
        sampler = EpochSampler(len(self.datasets[split]), self._order_seed)
        resume = getattr(self, "_resume_point", None)
        if resume is not None:
            # Lightning creates the iterator (and workers prefetch) before any epoch hook runs,
            # so the resumed epoch and the samples already trained on are set here.
            sampler.set_epoch(resume["epoch"])
            sampler.skip = resume["skip"]
            self._resume_point = None
        return {"sampler": sampler, "generator": generator}

    def state_dict(self) -> dict:
        """Where training stands in the epoch's sample order, for an exact resume."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        epoch = trainer.current_epoch
        if done >= trainer.num_training_batches:  # an epoch-end checkpoint: the next epoch starts
            return {"epoch": epoch + 1, "skip": 0}
        return {"epoch": epoch, "skip": done * self.batch_size}

    def load_state_dict(self, state_dict: dict) -> None:
        """Remember the resume point until the training loader is built."""
        self._resume_point = dict(state_dict) if state_dict else None

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


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled ``(index, seed)`` pairs that depend only on the base seed and the epoch.

    Lightning calls ``set_epoch`` before each training epoch; the order and each sample's
    augmentation seed are then a pure function of ``(seed, epoch)``, whatever the number of
    workers and whether the run was resumed, so a resumed run repeats an epoch exactly.

    Args:
        n: Dataset length.
        seed: Base seed.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.skip = 0  # samples of this epoch already trained on (a mid-epoch resume sets it)
        self._epoch_given = False

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and seeds ``__iter__`` yields."""
        self.epoch = epoch
        self._epoch_given = True

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        epoch = self.epoch
        if not self._epoch_given:
            # Nobody calls set_epoch (e.g. inside Lightning's DistributedSamplerWrapper):
            # count passes, so each epoch still gets fresh augmentations.
            self.epoch += 1
        self._epoch_given = False
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(2, np.uint32)
        rng = np.random.default_rng(state)
        order = rng.permutation(self.n)
        seeds = rng.integers(0, 2**31 - 1, size=self.n)
        skip, self.skip = self.skip, 0
        return iter(zip(order[skip:].tolist(), seeds[skip:].tolist(), strict=True))
