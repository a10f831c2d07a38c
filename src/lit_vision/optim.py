"""Optimizer and LR schedule from the config's factories: the factory's lr, scaling, interval."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch

from lit_vision.distributed import ScaleLR, lr_scale_factor, scale_learning_rates


def optimizer_lr(factory: Callable[..., torch.optim.Optimizer]) -> float:
    """The learning rate an optimizer factory will use, read without building an optimizer.

    Args:
        factory: An optimizer class, or a ``functools.partial`` of one (how ``partial`` and
            LightningCLI's ``OptimizerCallable`` hold ``lr`` and the class).

    Returns:
        The ``lr`` keyword of the (innermost) partial, else the class's default ``lr``.

    Raises:
        ValueError: The factory names no ``lr`` and its class has no default one.
    """
    target: Any = factory
    while isinstance(target, functools.partial):
        if "lr" in target.keywords:
            return float(target.keywords["lr"])
        classes = [
            a for a in target.args if isinstance(a, type)
        ]  # jsonargparse: (instantiator, cls)
        target = classes[0] if classes else target.func
    param = inspect.signature(target).parameters.get("lr")
    if param is None or param.default is inspect.Parameter.empty:
        raise ValueError(f"optimizer {target!r} has no default lr: set optimizer.init_args.lr")
    return float(param.default)


def build_optimization(
    optimizer_factory: Callable[[Iterable[Any]], torch.optim.Optimizer],
    scheduler_factory: Callable[..., Any] | None,
    param_groups: list[dict[str, Any]],
    trainer: L.Trainer | None,
    scale_lr: ScaleLR = "none",
) -> Any:
    """What ``configure_optimizers`` returns: the optimizer and, if any, the scheduler config.

    Args:
        optimizer_factory: Builds the optimizer from the parameter groups.
        scheduler_factory: Builds the scheduler from the optimizer, or ``None``. One with a
            ``total_steps`` keyword left unset (``OneCycleLR``, ``WarmupCosineLR``) gets the
            run's optimizer steps and steps per batch; others step per epoch.
        param_groups: The model's parameter groups.
        trainer: The attached trainer (world size, accumulation, total steps), or ``None``.
        scale_lr: Scale every group's lr with the effective batch (see ``lr_scale_factor``).

    Returns:
        The optimizer alone, or Lightning's ``{"optimizer", "lr_scheduler"}`` dict.
    """
    optimizer = optimizer_factory(param_groups)
    if scale_lr != "none" and trainer is not None:
        # Before the scheduler is built, so its base LRs are the scaled ones.
        factor = lr_scale_factor(scale_lr, trainer.world_size, trainer.accumulate_grad_batches)
        scale_learning_rates(optimizer, factor)
    if scheduler_factory is None:
        return optimizer
    kwargs = getattr(scheduler_factory, "keywords", {})
    if "total_steps" in kwargs and kwargs["total_steps"] is None and not kwargs.get("epochs"):
        total = int(trainer.estimated_stepping_batches)
        scheduler = scheduler_factory(optimizer, total_steps=total)
        interval = "step"
    else:
        scheduler = scheduler_factory(optimizer)
        interval = "epoch"
    config = {"scheduler": scheduler, "interval": interval}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = "val/loss"
    return {"optimizer": optimizer, "lr_scheduler": config}
