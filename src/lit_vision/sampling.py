"""The training order: a seeded, resumable sampler and the loader state for an exact resume."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    """Shuffled ``(index, seed)`` pairs that depend only on the base seed and the epoch.

    Lightning calls ``set_epoch`` before each training epoch; the order and each sample's
    augmentation seed are then a pure function of ``(seed, epoch)``, whatever the number of
    workers and whether the run was resumed, so a resumed run repeats an epoch exactly.

    Under several processes it yields its rank's share itself (a ``DistributedSampler``, which
    Lightning keeps instead of wrapping): the epoch's order padded to a multiple of
    ``num_replicas`` and strided ``rank::num_replicas``, the shares Lightning's
    ``DistributedSamplerWrapper`` would give. Sharding here is what makes a mid-epoch resume
    exact under DDP: ``skip`` counts the samples *this rank* trained on and is applied to its
    share; the wrapper would apply it to the whole order and then index past its end.

    Args:
        n: Dataset length.
        seed: Base seed.
        num_replicas: Processes sharing the epoch (the trainer's ``distributed_sampler_kwargs``).
        rank: This process's global rank.
    """

    def __init__(self, n: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        # Sets num_replicas, rank, num_samples (the share: ceil(n / num_replicas)), total_size.
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.skip = 0  # samples of this rank's share already trained on (a mid-epoch resume)
        self._epoch_given = False

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and seeds ``__iter__`` yields.

        Args:
            epoch: The epoch, from 0.
        """
        self.epoch = epoch
        self._epoch_given = True

    def __len__(self) -> int:
        """This rank's share of the epoch (``skip`` shortens only the next pass, not the epoch)."""
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """This rank's ``(index, augmentation seed)`` pairs of the epoch, less the first ``skip``."""
        epoch = self.epoch
        if not self._epoch_given:
            # Nobody calls set_epoch (a loader used outside Lightning's fit loop): count
            # passes, so each epoch still gets fresh augmentations.
            self.epoch += 1
        self._epoch_given = False
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(2, np.uint32)
        rng = np.random.default_rng(state)
        order = self._order(rng)
        seeds = rng.integers(0, 2**31 - 1, size=self.n)
        # DistributedSampler's shares: pad by repeating the order's start, then stride by rank.
        share = (np.arange(self.total_size) % max(self.n, 1))[self.rank :: self.num_replicas]
        skip, self.skip = self.skip, 0
        share = share[skip:]
        return iter(zip(order[share].tolist(), seeds[share].tolist(), strict=True))

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        """The epoch's ``n`` dataset indices: a permutation."""
        return rng.permutation(self.n)


class WeightedEpochSampler(EpochSampler):
    """An :class:`EpochSampler` whose epochs draw every class equally often.

    Each of the epoch's ``n`` indices is drawn with replacement, with probability inverse to
    its class's size, so the classes appear about equally often (rare images repeat, common
    ones are partly left out); the epoch keeps the dataset's length. The draw and the
    augmentation seeds are a pure function of ``(seed, epoch)``, so an exact resume still works.

    Args:
        targets: Class index of every sample, in dataset order.
        seed: Base seed.
        num_replicas: Processes sharing the epoch.
        rank: This process's global rank.
    """

    def __init__(
        self, targets: Sequence[int], seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(len(targets), seed, num_replicas, rank)
        labels = np.asarray(targets, dtype=np.int64)
        weights = 1.0 / np.bincount(labels)[labels] if labels.size else np.ones(0)
        self.probabilities = weights / weights.sum() if labels.size else weights

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        """``n`` indices drawn with replacement, each class with the same total probability."""
        return rng.choice(self.n, size=self.n, replace=True, p=self.probabilities)


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted training run stands in its sample order.

    Args:
        epoch: The epoch to continue.
        skip: Samples of that epoch already trained on.
    """

    epoch: int
    skip: int


def default_seed() -> int:
    """The run's seed (``PL_GLOBAL_SEED``, set by ``seed_everything``), else a fresh random one."""
    env = os.environ.get("PL_GLOBAL_SEED")
    return int(env) if env is not None else int(np.random.SeedSequence().entropy % 2**31)


def resume_point(trainer: Any, batch_size: int) -> ResumePoint | None:
    """Where ``trainer`` stands in the epoch's order, for a checkpoint; ``None`` when not training.

    Args:
        trainer: The Lightning trainer (or ``None``).
        batch_size: Samples per training batch.

    Returns:
        The epoch to continue and the samples of it already trained on.
    """
    if trainer is None or not trainer.training:
        return None
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    epoch = trainer.current_epoch
    if done >= trainer.num_training_batches:  # an epoch-end checkpoint: the next epoch starts
        return ResumePoint(epoch + 1, 0)
    return ResumePoint(epoch, done * batch_size)


class TrainOrder:
    """The training loader's order for a whole run: one base seed and a pending resume point.

    The seed is fixed on the first loader (``seed_everything`` may run after the DataModule
    is built); a resume point loaded from a checkpoint applies to the next loader only.

    The resume point reaches it two ways, both holding the same ``{"epoch", "skip"}``: the
    DataModule's state and the training loader's (Lightning's stateful-loader protocol,
    :class:`~lit_vision.loaders.ResumableLoader`). Both are needed: Lightning 2.6 builds and
    iterates the training loader for ``trainer.estimated_stepping_batches`` (the LR schedules)
    *before* it restores the checkpoint and then never calls the loader's ``load_state_dict``;
    the DataModule's state is restored earlier, so it covers that path, and the loader's covers
    the other one. Applying the same point twice is harmless.

    Args:
        seed: Base seed; ``None`` takes :func:`default_seed` when the first loader is built.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.pending: ResumePoint | None = None
        self.sampler: EpochSampler | None = None  # the latest loader's, which a restore moves

    def loader_kwargs(
        self,
        n: int,
        balance_targets: Sequence[int] | None = None,
        shard: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """``sampler`` and ``generator`` arguments of a shuffled training DataLoader.

        Args:
            n: Dataset length.
            balance_targets: The samples' class indices, to draw the classes equally often
                (:class:`WeightedEpochSampler`); ``None``: a plain shuffle.
            shard: ``{"num_replicas", "rank"}`` under several processes (the trainer's
                ``distributed_sampler_kwargs``): the sampler yields this rank's share.

        Returns:
            An :class:`EpochSampler` (or :class:`WeightedEpochSampler`) and a private
            generator seeded with the base seed.
        """
        if self.seed is None:
            self.seed = default_seed()
        # A private generator for the loader's own draw (worker base seed), so creating an
        # iterator (again, after a resume) does not move the global RNG that dropout uses.
        generator = torch.Generator().manual_seed(self.seed)
        ranks = {k: int(v) for k, v in (shard or {}).items() if k in ("num_replicas", "rank")}
        sampler = (
            EpochSampler(n, self.seed, **ranks)
            if balance_targets is None
            else WeightedEpochSampler(balance_targets, self.seed, **ranks)
        )
        if self.pending is not None:
            # Lightning creates the iterator (and workers prefetch) before any epoch hook runs,
            # so the resumed epoch and the samples already trained on are set here.
            sampler.set_epoch(self.pending.epoch)
            sampler.skip = self.pending.skip
            self.pending = None
        self.sampler = sampler
        return {"sampler": sampler, "generator": generator}

    def state_dict(self, trainer: Any, batch_size: int) -> dict[str, int]:
        """The DataModule's checkpoint state: ``{"epoch", "skip"}``, or ``{}`` when not training.

        Args:
            trainer: The Lightning trainer (or ``None``).
            batch_size: Samples per training batch.
        """
        point = resume_point(trainer, batch_size)
        return {} if point is None else {"epoch": point.epoch, "skip": point.skip}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Remember a checkpoint's resume point until the training loader is built.

        Args:
            state: What :meth:`state_dict` returned (``{}``: nothing to resume).
        """
        self.pending = ResumePoint(int(state["epoch"]), int(state["skip"])) if state else None

    def restore(self, state: dict[str, int]) -> None:
        """Move the built loader's sampler to a checkpoint's resume point (the loader protocol).

        Lightning restores a stateful loader's state after building it and before iterating,
        so the sampler is set here; without a built loader it waits as in :meth:`load_state_dict`.

        Args:
            state: What the loader's ``state_dict`` returned (``{}``: nothing to resume).
        """
        self.load_state_dict(state)
        if self.sampler is not None and self.pending is not None:
            self.sampler.set_epoch(self.pending.epoch)
            self.sampler.skip = self.pending.skip
            self.pending = None
