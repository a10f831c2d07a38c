"""DataLoader construction for the DataModule: workers, evaluation sharding, whole-batch loading."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_vision.datasets import ImageDataset, collate_batch


def eval_sampler(trainer: L.Trainer | None, dataset: Dataset) -> Sampler | None:
    """Under several processes, each evaluates a disjoint share, every sample exactly once.

    Lightning's default DistributedSampler pads the last share with repeated samples, which
    would count them twice in val/test metrics. Lightning keeps a DistributedSampler it is
    given, so training still gets its own (shuffled, padded, which is harmless there).
    """
    kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
    if not kwargs or kwargs.get("num_replicas", 1) <= 1:
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False, **kwargs)


def loader_workers(num_workers: int | None, dataset: ImageDataset) -> int:
    """Loader processes: ``num_workers``, or 0 when there is no per-sample work to spread."""
    if num_workers is not None:
        return num_workers
    per_sample_work = dataset.cache is None or bool(
        dataset.transform and dataset.transform.transforms
    )
    return min(4, os.cpu_count() or 1) if per_sample_work else 0


def batch_loader(
    batches: Dataset, batch_size: int, order: dict[str, Any], workers: int, *, drop_last: bool
) -> DataLoader:
    """A DataLoader fetching whole batches (``__getitems__``), already collated.

    Args:
        batches: ``BatchedImages`` or ``FeatureBatches``.
        batch_size: Samples per batch.
        order: ``sampler``/``shuffle``/``generator`` arguments.
        workers: Loader processes.
        drop_last: Drop a last partial batch.
    """
    return DataLoader(
        batches,
        batch_size=batch_size,
        **order,
        num_workers=workers,
        collate_fn=collate_batch,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        prefetch_factor=4 if workers > 0 else None,
    )
