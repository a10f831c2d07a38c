"""Frozen-feature cache: a frozen backbone's pooled features, computed once per image and view.

While the backbone is frozen (BatchNorm in eval mode), its pooled features depend only on the
input pixels, so a head-only epoch need not run the backbone at all: the features of every
training image are computed once per augmentation *view* (view 0 is the clean image, views
1..K are seeded draws of the training augmentation) and of every validation image once, kept in
memory, and the head trains on them. An epoch then costs the head's forward and backward on
``N x D`` numbers: milliseconds instead of minutes on a CPU.

The views are a pure function of ``(seed, view, image index)``, so training the head on the
cache sees exactly the tensors a live frozen backbone would see on the same draws
(``tests/test_features.py`` checks the loss curves agree). Under DDP each rank computes a
strided shard and the shards are gathered, so every image is computed once in all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

# Draws of view v for the images of one batch: seeded by (seed, v, first index of the batch).
_VIEW_STREAM = 7919


@dataclass
class FeatureSet:
    """Cached features of one split: ``features[view, i]`` is image ``i``'s ``view``.

    Args:
        features: ``(views, N, D)`` float tensor on the CPU.
        targets: ``(N,)`` class indices.
    """

    features: torch.Tensor
    targets: torch.Tensor

    @property
    def views(self) -> int:
        """Number of views per image (1: the clean image only)."""
        return int(self.features.shape[0])

    def nbytes(self) -> int:
        """Memory the features take."""
        return self.features.element_size() * self.features.nelement()


def augmented_view(
    images: torch.Tensor,
    view: int,
    seed: int,
    first_index: int,
    augment: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """View ``view`` of a batch of uint8 images whose first one is image ``first_index``.

    View 0 is the image itself; others are the training augmentation drawn from a generator
    seeded by ``(seed, view, first_index)``, so the same call gives the same pixels anywhere.
    """
    if view == 0 or augment is None:
        return images
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(hash((seed, view, first_index, _VIEW_STREAM)) % 2**63)
        return augment(images)


def _allocate(_: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An output buffer in memory (``compute_features``' default)."""
    return torch.empty(shape, dtype=dtype)


def compute_features(
    embed: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]],
    images: Callable[[Sequence[int]], torch.Tensor],
    indices: Sequence[int],
    *,
    views: int,
    seed: int,
    augment: Callable[[torch.Tensor], torch.Tensor] | None,
    batch_size: int,
    device: torch.device,
    desc: str = "features",
    show_progress: bool = True,
    allocate: Callable[[int, tuple[int, ...], torch.dtype], torch.Tensor] = _allocate,
) -> torch.Tensor | list[torch.Tensor]:
    """What ``embed`` gives for ``images(batch_indices)``, for every index and view.

    Args:
        embed: Images (uint8 NCHW on ``device``) to pooled features ``(n, D)``, or to a tuple
            of outputs (e.g. the pooled features and a frozen prefix's activations).
        images: Fetches the uint8 NCHW images of some indices (a dataset gather).
        indices: The images to compute, in order.
        views: Views per image (1: the clean image only).
        seed: Base seed of the augmentation draws.
        augment: The training augmentation (a batch in, a batch out), or ``None``.
        batch_size: Images per forward pass.
        device: Where the backbone runs.
        desc: Progress bar label.
        show_progress: Show a bar (on stderr) when there are 500 forward passes or more.
        allocate: Makes the buffer of output ``k`` (its shape and dtype), filled as batches
            are computed: memory by default, or a file (``lit_vision.feature_store``).

    Returns:
        ``(views, len(indices), ...)`` tensors on the CPU (float32 features; other outputs in
        the dtype ``embed`` gave them): one, or a list when ``embed`` returns a tuple.
    """
    outputs: list[torch.Tensor] = []
    total = len(indices) * views
    bar = tqdm(
        total=total,
        desc=desc,
        unit="img",
        leave=False,
        file=sys.stderr,
        disable=not show_progress or total < 500,
    )
    single = True
    with torch.inference_mode(), bar:
        for start in range(0, len(indices), batch_size):
            batch_idx = list(indices[start : start + batch_size])
            pixels = images(batch_idx).to(device)
            for v in range(views):
                result = embed(augmented_view(pixels, v, seed, batch_idx[0], augment))
                single = isinstance(result, torch.Tensor)
                parts = [result] if single else list(result)
                parts[0] = parts[0].float()
                if not outputs:  # the first batch tells the shapes: one buffer per output
                    outputs = [
                        allocate(k, (views, len(indices), *t.shape[1:]), t.dtype)
                        for k, t in enumerate(parts)
                    ]
                for buffer, part in zip(outputs, parts, strict=True):
                    buffer[v, start : start + len(batch_idx)] = part.cpu()
                bar.update(len(batch_idx))
    if not indices:
        return torch.empty(views, 0, 0)
    return outputs[0] if single else outputs


class FeatureBatches(Dataset):
    """A Dataset over cached features, fetched a batch at a time like ``BatchedImages``.

    Training indices come from the EpochSampler as ``(index, seed)`` pairs: the sample's view
    is ``seed % views``, so each epoch draws a fresh, reproducible view per image.
    """

    def __init__(self, features: FeatureSet) -> None:
        self.features = features

    def __len__(self) -> int:
        return int(self.features.targets.numel())

    def __getitem__(self, i: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, view = self._locate(i)
        return self.features.features[view, index], int(self.features.targets[index])

    def _locate(self, i: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(i, tuple):
            return i[0], i[1] % self.features.views
        return i, 0

    def __getitems__(
        self, items: Sequence[int | tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._locate(i) for i in items]
        index = torch.tensor([p[0] for p in pairs])
        view = torch.tensor([p[1] for p in pairs])
        return self.features.features[view, index], self.features.targets[index]
