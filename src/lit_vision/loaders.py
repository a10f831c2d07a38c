"""DataLoader construction for the DataModule: workers, evaluation sharding, whole-batch loading."""

from __future__ import annotations

import os
from collections.abc import Callable
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
    batches: Dataset,
    batch_size: int,
    order: dict[str, Any],
    workers: int,
    drop_last: bool,
    stateful: dict[str, Any] | None = None,
) -> DataLoader:
    """A DataLoader fetching whole batches (``__getitems__``), already collated.

    Args:
        batches: ``BatchedImages`` or ``FeatureBatches``.
        batch_size: Samples per batch.
        order: ``sampler``/``shuffle``/``generator`` arguments.
        workers: Loader processes.
        drop_last: Drop a last partial batch.
        stateful: ``position``/``restore`` of a :class:`ResumableLoader` (training).
    """
    loader_class = DataLoader if stateful is None else ResumableLoader
    return loader_class(
        batches,
        batch_size=batch_size,
        **order,
        num_workers=workers,
        collate_fn=collate_batch,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        prefetch_factor=4 if workers > 0 else None,
        **(stateful or {}),
    )


class ResumableLoader(DataLoader):
    """The training DataLoader, stateful in Lightning's sense: its position is in the checkpoint.

    Lightning saves ``state_dict()`` of every training loader that has one (under
    ``loops.fit_loop.state_dict.combined_loader``) and calls ``load_state_dict`` on the rebuilt
    loader before iterating, so a mid-epoch resume continues the epoch's order where it
    stopped. The position is the epoch and the samples already trained on (from the trainer's
    progress, so Lightning's prefetching of the next batch does not count); the
    :class:`~lit_vision.sampling.EpochSampler` skips them.

    Args:
        *args: DataLoader's arguments.
        position: Returns ``{"epoch", "skip"}`` (``{}`` when not training).
        restore: Moves the sampler to a saved position.
        **kwargs: DataLoader's keyword arguments.
    """

    def __init__(
        self,
        *args: Any,
        position: Callable[[], dict[str, int]] | None = None,
        restore: Callable[[dict[str, int]], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.position = position
        self.restore = restore

    def state_dict(self) -> dict[str, int]:
        """Where training stands in the epoch's order: ``{"epoch", "skip"}``."""
        return self.position() if self.position is not None else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue from a checkpoint's position.

        Args:
            state_dict: What :meth:`state_dict` returned.
        """
        if self.restore is not None:
            self.restore(state_dict)
