"""Work done once for all processes of a run (DDP, torchrun, SLURM) and shared with the others."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lit_vision.errors import DataError, LitVisionError

T = TypeVar("T")


def world_size(trainer: Any) -> int:
    """The number of processes of ``trainer``'s run (1 without a trainer)."""
    return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1


def on_rank_zero(trainer: Any, work: Callable[[], T]) -> T:
    """Run ``work`` in global rank 0 only and hand its result to every process.

    Used for the data scan, which reads and hashes every file: one process does it, the
    others wait in the broadcast and receive the same findings (so every rank trains on the
    same files). A user error in rank 0 is raised in every process with the same one-line
    message (any other failure as a RuntimeError), so no rank is left waiting in a collective.
    Every process must call this.

    Args:
        trainer: The Lightning trainer (``None`` or one process: ``work`` simply runs).
        work: What to run; its result must be picklable (it crosses processes, never disk).

    Returns:
        ``work``'s result, in every process.

    Raises:
        DataError: ``work`` raised a user error in rank 0.
        RuntimeError: ``work`` failed otherwise in rank 0 (rank 0 re-raises its own error).
    """
    if world_size(trainer) < 2:
        return work()
    result: Any = None
    error: tuple[bool, str] | None = None  # (a user error?, message)
    failure: BaseException | None = None
    if trainer.global_rank == 0:
        try:
            result = work()
        except Exception as err:  # noqa: BLE001 - re-raised below, after the others hear of it
            failure, error = err, (isinstance(err, LitVisionError), str(err))
    result, error = trainer.strategy.broadcast((result, error), src=0)
    if failure is not None:
        raise failure
    if error is not None:
        user_error, message = error
        if user_error:
            raise DataError(message)
        raise RuntimeError(f"rank 0 failed while preparing the data: {message}")
    return result
