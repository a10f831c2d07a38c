"""Several processes (DDP, torchrun, SLURM): a once-per-node file lock, LR scaling, a run summary."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from filelock import FileLock
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

ScaleLR = Literal["none", "linear", "sqrt"]


@contextmanager
def file_lock(target: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.NAME.lock`` beside ``target`` while the block runs.

    Every process that writes ``target`` (one per GPU under DDP, all started together by
    torchrun or srun) takes the lock, so the first one writes and the others wait, then find
    the finished result. ``flock`` is released by the kernel when a process dies, so a crash
    never leaves a stale lock behind (``filelock`` uses ``flock`` on POSIX, ``msvcrt`` on Windows).

    Args:
        target: The file or folder the processes write.
    """
    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f".{target.name}.lock")):
        yield


def lr_scale_factor(rule: ScaleLR, world_size: int, accumulate_grad_batches: int = 1) -> float:
    """How much to multiply the configured learning rates by.

    A config's LR is tuned for one process without gradient accumulation; the effective batch
    is ``k = world_size * accumulate_grad_batches`` times larger. ``linear`` multiplies by ``k``
    (Goyal et al., with a warm-up), ``sqrt`` by ``sqrt(k)`` (gentler, often better for Adam),
    ``none`` keeps the configured LR.
    """
    k = max(1, world_size) * max(1, accumulate_grad_batches)
    if rule == "linear":
        return float(k)
    if rule == "sqrt":
        return math.sqrt(k)
    if rule == "none":
        return 1.0
    raise ValueError(f"scale_lr must be none, linear or sqrt, not {rule!r}")


def scale_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every parameter group's LR by ``factor`` (before a scheduler records them)."""
    if factor == 1.0:
        return
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
        if "initial_lr" in group:
            group["initial_lr"] = group["initial_lr"] * factor


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP re-sends buffers only before training forwards, and each rank then updates its
    BatchNorm statistics with its own batch; validation runs without that sync, so every
    rank would evaluate slightly different statistics from the ones rank 0 checkpoints.
    A no-op in a single process.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_world_size() < 2:
        return
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer.data, src=0)


class RunSummary(L.Callback):
    """States how the run is laid out.

    At fit start (rank 0 only): precision, strategy, nodes x devices = world size, per-device
    batch x world size x accumulation = effective batch, the LR scaling rule and every
    parameter group's LR, printed and written to TensorBoard (Text tab ``run/summary``, and
    ``hparams.yaml``). Throughput (``perf/train_images_per_sec``) is timed by the run-report
    callback, :class:`lit_vision.insight.InsightCallback`, the run's one timer.
    """

    @staticmethod
    def summary(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The run's layout as a flat dict (also used by tests)."""
        batch = (
            getattr(trainer.datamodule, "batch_size", None)
            if trainer.datamodule is not None
            else None
        )
        accumulate = int(trainer.accumulate_grad_batches)
        # The schedule's base (peak) rate: "lr" itself is already the warm-up's first value.
        lrs = [
            float(g.get("initial_lr", g["lr"]))
            for opt in trainer.optimizers
            for g in opt.param_groups
        ]
        rule = getattr(pl_module, "scale_lr", "none")
        return {
            "precision": str(trainer.precision),
            "accelerator": type(trainer.accelerator).__name__.replace("Accelerator", "").lower(),
            "strategy": type(trainer.strategy).__name__,
            "num_nodes": int(trainer.num_nodes),
            "devices_per_node": int(trainer.num_devices),
            "world_size": int(trainer.world_size),
            "batch_size_per_device": batch,
            "accumulate_grad_batches": accumulate,
            "effective_batch_size": batch * trainer.world_size * accumulate if batch else None,
            "scale_lr": rule,
            "lr_scale_factor": lr_scale_factor(rule, trainer.world_size, accumulate),
            "lr_per_group": lrs,
        }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the layout and write it to the loggers."""
        info = self.summary(trainer, pl_module)
        batch = info["batch_size_per_device"]
        lrs = ", ".join(f"{lr:.3g}" for lr in info["lr_per_group"])
        text = (
            f"precision {info['precision']} on {info['accelerator']}, {info['strategy']}, "
            f"{info['num_nodes']} node(s) x {info['devices_per_node']} device(s) = world size {info['world_size']}; "
            f"effective batch {info['effective_batch_size']} = {batch} per device x {info['world_size']} "
            f"x {info['accumulate_grad_batches']} accumulated; "
            f"base lr per group [{lrs}] (scale_lr {info['scale_lr']}, x{info['lr_scale_factor']:.3g})"
        )
        rank_zero_info(f"lit_vision run: {text}")
        self._write(trainer, info, text)

    @staticmethod
    @rank_zero_only
    def _write(trainer: L.Trainer, info: dict[str, Any], text: str) -> None:
        for logger in trainer.loggers:
            if hasattr(logger, "hparams") and isinstance(logger.hparams, dict):
                logger.hparams.update({f"run/{k}": v for k, v in info.items()})  # -> hparams.yaml
            experiment = logger.experiment
            if hasattr(experiment, "add_text"):
                experiment.add_text("run/summary", text, global_step=trainer.global_step)
