"""The datasets: decoded images (from the cache or the files) served one or a whole batch at a time."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from lit_vision.augment import apply, seed_pipeline
from lit_vision.cache import Sample
from lit_vision.images import load_image


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
        """Number of images."""
        return len(self.samples)

    def __getitem__(self, i: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Image ``i`` as ``(3, H, W)`` uint8 and its label.

        Args:
            i: An index, or ``(index, seed)`` from :class:`~lit_vision.sampling.EpochSampler`,
                whose seed fixes the sample's augmentation.
        """
        if isinstance(i, tuple):  # (index, seed) from EpochSampler: augmentation fixed by seed
            i, seed = i
            if self.transform is not None and self.transform.transforms:
                seed_pipeline(self.transform, seed)
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
        """Number of images."""
        return len(self.dataset)

    def __getitem__(self, i: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """One image and its label, as the per-sample dataset returns it."""
        return self.dataset[i]

    def __getitems__(
        self, indices: Sequence[int | tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch: ``(N, 3, H, W)`` uint8 images and ``(N,)`` int64 labels.

        Args:
            indices: Indices, or ``(index, seed)`` pairs from the training sampler.
        """
        ds = self.dataset
        identity = ds.transform is None or not ds.transform.transforms
        if ds.cache is None or not identity:
            # Per-sample work (decoding or albumentations): the dataset's own path, which also
            # applies EpochSampler's per-sample augmentation seeds.
            items = [ds[i] for i in indices]
            return torch.stack([x for x, _ in items]), torch.tensor(
                [t for _, t in items], dtype=torch.long
            )
        # EpochSampler yields (index, seed); with no per-sample augmentation the seed is unused.
        rows = [i[0] if isinstance(i, tuple) else i for i in indices]
        images = ds.cache[np.asarray(rows)]  # one gather (a copy, also from a memmap)
        targets = torch.tensor([ds.targets[i] for i in rows], dtype=torch.long)
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), targets


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for :class:`BatchedImages`: the batch is already assembled.

    Args:
        batch: What ``BatchedImages.__getitems__`` returned.
    """
    return batch
