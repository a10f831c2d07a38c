"""Fine-tuning a pretrained backbone: head only first, then the backbone too, with one optimizer.

**Schedule.** Epochs ``< freeze_epochs`` train only the head, at the optimizer's ``lr``; later
epochs also train the backbone (or only its last ``unfreeze_blocks`` blocks) at ``backbone_lr``
(default ``lr * backbone_lr_scale``). The phase is a pure function of ``current_epoch``,
applied in ``on_train_epoch_start``, so a run resumed from any checkpoint continues in the
right phase. Frozen parameters get ``requires_grad=False``: autograd then records nothing
through a frozen backbone (head-only epochs cost a forward pass), their ``.grad`` stays
``None``, and optimizers skip them - weight decay and momentum included, so frozen weights stay
bitwise unchanged. Frozen BatchNorm layers stay in eval mode (running statistics untouched); by
default (``train_bn=False``) all backbone BatchNorm stays in eval mode after unfreezing too
(Keras's fine-tuning advice): with batches of 32, switching to batch statistics cut val acc
from 0.97 to 0.93 on cats/dogs and 0.95 to 0.81 on cracks.

**Deciding when (``freeze_epochs: auto``).** The head trains until the monitored validation
metric has not improved for ``head_patience`` epochs (or ``max_head_epochs``, or its
``head_share`` of ``budget_minutes``); then, unless ``unfreeze_blocks`` is 0 (head only: the run
stops there), the best head is restored and the backbone's last blocks train at the low
learning rate until the metric has not improved for ``finetune_patience`` epochs or the budget
would be exceeded by one more epoch. When that still leaves the metric below ``deepen_below``
(the pretrained features are far from the data: small images, drawings, scans), the best weights
are restored and the whole backbone (or its last ``deepen_blocks`` blocks) trains on, with the
head, at ``deepen_lr`` annealed on a cosine over ``deepen_minutes``, with BatchNorm statistics adapting (``deepen_train_bn``), for up to
``deepen_minutes``, until the metric
has not improved for ``finetune_patience`` epochs. The checkpoint callback keeps the best model.
The decision (the epoch the backbone was unfrozen, the best score, the patience counter) is
saved in checkpoints, so a resumed run continues the same schedule.

**One optimizer from the start.** ``param_groups()`` returns the head and the *whole* backbone
as two groups (``name`` "head"/"backbone", shown by the LR monitor), so schedulers
(``WarmupCosineLR`` keeps the ratio), checkpoints and DDP never see the optimizer change
(Lightning's ``BackboneFinetuning`` adds groups mid-run, #12141, and re-freezes on resume,
#21901).

**DDP.** DDP registers the parameters that require grad when it wraps the model; ones frozen
before that are never synchronised after unfreezing (Lightning #20340). Here every parameter
requires grad until the first ``on_train_epoch_start``, which runs after wrapping, so all are
registered; and since frozen ones then produce no gradient, ``setup()`` switches the DDP
strategy to ``find_unused_parameters=True`` (globally unused parameters are marked ready and
their ``.grad`` left ``None``). ``static_graph=True`` is refused: the used set changes.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_vision.optim import optimizer_lr


class FreezeSchedule:
    """The schedule above, mixed into a LightningModule whose ``net`` is a ``TransferNet``.

    The class that mixes it in sets ``net`` (``features``, ``head``, ``groups()``),
    ``optimizer_factory`` and the schedule's settings below.
    """

    net: Any
    optimizer_factory: Any
    trainer: Any
    freeze_epochs: int | str
    head_patience: int
    max_head_epochs: int
    finetune_patience: int
    budget_minutes: float | None
    head_share: float
    deepen_below: float | None
    deepen_blocks: int | None
    deepen_minutes: float | None
    deepen_lr: float | None
    deepen_train_bn: bool
    monitor: str
    schedule_state: dict[str, Any]
    unfreeze_blocks: int | None
    backbone_lr: float | None
    backbone_lr_scale: float
    train_bn: bool
    phase: int | None

    # -- schedule ---------------------------------------------------------------------------
    def phase_for(self, epoch: int) -> int:
        """The phase of ``epoch``: fixed, or as decided so far (auto).

        0: head only; 1: the backbone too (its last ``unfreeze_blocks`` blocks); 2: the whole
        backbone (``auto`` only, after deepening).
        """
        if self.freeze_epochs == "auto":
            state = self.schedule_state
            switch, deepen = state["switch_epoch"], state.get("deepen_epoch")
            if deepen is not None and epoch >= deepen:
                return 2
            return 0 if switch is None or epoch < switch else 1
        return 0 if epoch < self.freeze_epochs else 1

    def trainable_backbone(self, phase: int) -> list[nn.Parameter]:
        """Backbone parameters that train in ``phase``."""
        if phase == 0 or self.unfreeze_blocks == 0:
            return []
        deep = getattr(self, "deepen_blocks", None)
        if self.unfreeze_blocks is None or (phase == 2 and deep is None):
            return list(self.net.features.parameters())
        if phase == 2:
            return [p for g in self.net.groups()[-deep:] for p in g]
        return [p for g in self.net.groups()[-self.unfreeze_blocks :] for p in g]

    def apply_phase(self, epoch: int) -> int:
        """Set ``requires_grad`` and BatchNorm modes for ``epoch``; idempotent. Returns the phase."""
        self.phase = self.phase_for(epoch)
        train = {id(p) for p in self.trainable_backbone(self.phase)}
        for p in self.net.features.parameters():
            p.requires_grad_(id(p) in train)
        for p in self.net.head.parameters():
            p.requires_grad_(True)
        self.train(self.training)
        return self.phase

    def train(self, mode: bool = True) -> Any:
        """``nn.Module.train``, keeping frozen parts of the backbone in eval mode."""
        super().train(mode)
        if mode and getattr(self, "phase", None) is not None:
            if self.phase == 0:
                self.net.features.eval()
            else:
                for m in self.net.features.modules():
                    train_bn = self.train_bn or (self.phase == 2 and self.deepen_train_bn)
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
                        not train_bn
                        or not any(p.requires_grad for p in m.parameters(recurse=False))
                    ):
                        m.eval()
        return self

    def num_trainable(self) -> int:
        """Parameters that currently require grad."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def on_train_epoch_start(self) -> None:
        """Apply the epoch's phase and log it with the trainable parameter count."""
        phase = self.apply_phase(self.current_epoch)
        if phase == 0 and self.schedule_state.get("head_start") is None and hasattr(self, "_clock"):
            self.schedule_state["head_start"] = time.monotonic() - self._clock  # features are ready
        # Same on every rank; sync_dist only keeps Lightning's DDP warning quiet.
        self.log("train/phase", float(phase), on_step=False, on_epoch=True, sync_dist=True)
        self.log(
            "train/trainable_params",
            float(self.num_trainable()),
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """After deepening: ``deepen_lr`` annealed on a cosine over the ``deepen_minutes`` budget.

        The budget sizes the schedule (elapsed time, not epochs), so the learning rate is near
        zero when the budget ends instead of being cut in the middle.
        """
        if self.phase != 2 or self.deepen_lr is None or not self.deepen_minutes:
            return
        state = self.schedule_state
        used = time.monotonic() - self._clock - state["deepen_elapsed"]
        frac = min(1.0, max(0.0, used / (self.deepen_minutes * 60)))
        lr = self.deepen_lr * 0.5 * (1 + math.cos(math.pi * frac))
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def setup(self, stage: str) -> None:
        """Before DDP wraps the model: let it tolerate parameters frozen for a while."""
        if stage == "fit":
            self.start_clock()
        strategy = self.trainer.strategy if self._trainer is not None else None
        toggles = (
            self.freeze_epochs == "auto"
            or self.freeze_epochs > 0
            or self.unfreeze_blocks is not None
        )
        if stage == "fit" and toggles and isinstance(strategy, DDPStrategy):
            kwargs = strategy._ddp_kwargs
            if kwargs.get("static_graph"):
                raise ValueError(
                    "TransferClassifier freezes parameters for some epochs: DDP static_graph must be false"
                )
            if not kwargs.get("find_unused_parameters"):
                kwargs["find_unused_parameters"] = True
                rank_zero_info(
                    "lit_vision: DDP find_unused_parameters=True (frozen backbone epochs)"
                )

    # -- deciding (freeze_epochs: auto) ------------------------------------------------------
    def start_clock(self) -> None:
        """Start the budget's clock (a resumed run continues from the saved elapsed time).

        Called from ``setup("fit")``, before the loaders are built, so the feature cache's
        computation counts against the budget too.
        """
        self._clock = time.monotonic() - self.schedule_state["elapsed"]

    def on_train_epoch_end(self) -> None:
        """After validation: track the monitored metric, switch phases or stop when it stalls."""
        if self.freeze_epochs != "auto" or self.trainer.sanity_checking:
            return
        state = self.schedule_state
        state["elapsed"] = time.monotonic() - self._clock
        score = self.trainer.callback_metrics.get(self.monitor)
        # Patience counts against the best of the current phase: fine-tuning often dips for an
        # epoch while the unfrozen blocks adapt, and the head's best stays in the checkpoint.
        key = "best" if self.phase == 0 else "phase_best"
        improved = score is not None and (
            state.get(key) is None or float(score) > state[key] + 1e-9
        )
        if improved:
            state[key], state["bad_epochs"] = float(score), 0
            state["best"] = max(state["best"] or float(score), float(score))
            self._best_weights = self._trainable_state()
        else:
            state["bad_epochs"] += 1
        epoch = self.trainer.current_epoch
        if self.phase == 0:
            self._decide_head_phase(epoch)
            return
        stalled = state["bad_epochs"] >= self.finetune_patience
        if self.phase == 2:
            used = state["elapsed"] - state["deepen_elapsed"]
            left = float("inf") if self.deepen_minutes is None else self.deepen_minutes * 60 - used
            if stalled or left < self._epoch_seconds(epoch):
                self._stop(
                    f"whole-backbone fine-tuning stopped after epoch {epoch} ({self._best()})"
                )
        elif (stalled or self._budget_left() < self._epoch_seconds(epoch)) and not self._deepen(
            epoch
        ):
            self._stop(f"fine-tuning stopped after epoch {epoch} ({self._best()})")

    def _best(self) -> str:
        return f"best {self.monitor} {self.schedule_state['best']}"

    def _trainable_state(self) -> dict[str, Any]:
        """A copy of the weights that train now (the head and the unfrozen blocks)."""
        return {
            name: p.detach().clone() for name, p in self.net.named_parameters() if p.requires_grad
        }

    def _restore_best(self) -> None:
        """Put back the weights of the best epoch so far (where the next phase starts from)."""
        best = getattr(self, "_best_weights", None)
        if best:
            params = dict(self.net.named_parameters())
            with torch.no_grad():
                for name, value in best.items():
                    params[name].copy_(value)

    def _deepen(self, epoch: int) -> bool:
        """Unfreeze the whole backbone from the next epoch if the metric is still low."""
        state = self.schedule_state
        low = self.deepen_below is not None and (state["best"] or 0.0) < self.deepen_below
        deeper = self.unfreeze_blocks is not None and (
            self.deepen_blocks is None or self.deepen_blocks > self.unfreeze_blocks
        )
        if not low or not deeper or state.get("deepen_epoch") is not None:
            return False
        state["deepen_epoch"], state["deepen_elapsed"] = epoch + 1, state["elapsed"]
        state["phase_best"], state["bad_epochs"] = None, 0
        self._restore_best()
        if self.deepen_lr is not None:  # far from the data: the pretrained filters must move
            for opt in self.trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] = self.deepen_lr
        what = "all" if self.deepen_blocks is None else f"the last {self.deepen_blocks}"
        rank_zero_info(
            f"lit_vision: {self._best()} is below deepen_below {self.deepen_below}; "
            f"{what} backbone blocks train from epoch {epoch + 1}"
        )
        return True

    def _decide_head_phase(self, epoch: int) -> None:
        state = self.schedule_state
        # The head gets head_share of the budget left once its features were computed.
        start = state.get("head_start") or 0.0
        budget_over = self.budget_minutes is not None and state["elapsed"] - start > (
            self.head_share * max(0.0, self.budget_minutes * 60 - start)
        )
        if (
            state["bad_epochs"] < self.head_patience
            and epoch + 1 < self.max_head_epochs
            and not budget_over
        ):
            return
        done = f"head-only training done after epoch {epoch} ({self._best()})"
        if self.unfreeze_blocks == 0:
            self._stop(done)
            return
        state["switch_epoch"], state["bad_epochs"] = epoch + 1, 0
        state["switch_elapsed"] = state["elapsed"]
        if self._budget_left() < self._finetune_epoch_estimate():
            if self._deepen(epoch):
                return
            state["switch_epoch"] = None
            self._stop(
                f"{done}: a fine-tuning epoch (~{self._finetune_epoch_estimate():.0f} s) does not "
                f"fit the {max(0.0, self._budget_left()):.0f} s left of the budget"
            )
            return
        self._restore_best()  # fine-tune from the best head
        rank_zero_info(
            f"lit_vision: head plateaued; unfreezing the backbone from epoch {epoch + 1}"
        )

    def _budget_left(self) -> float:
        """Seconds of ``budget_minutes`` left (infinite without a budget)."""
        if self.budget_minutes is None:
            return float("inf")
        return self.budget_minutes * 60 - self.schedule_state["elapsed"]

    def _finetune_epoch_estimate(self) -> float:
        """Seconds one fine-tuning epoch should take, before one was measured.

        Three frozen forward passes per training image (the forward, the backward through the
        unfrozen blocks, the augmentation: a conservative sum), from the feature cache's
        measured forward time, a third of that when the frozen prefix's activations are cached;
        0 when nothing was measured.
        """
        per_image = self.schedule_state.get("forward_seconds") or 0.0
        if self.schedule_state.get("prefix_cached"):
            per_image /= 3  # only the unfrozen blocks run (forward + backward) on cached input
        dm = self.trainer.datamodule
        n_train = (
            len(dm.datasets["train"])
            if dm is not None and "train" in getattr(dm, "datasets", {})
            else 0
        )
        return 3.0 * per_image * n_train

    def _epoch_seconds(self, epoch: int) -> float:
        """How long the next epoch should take: the time per epoch since unfreezing."""
        state = self.schedule_state
        if state["switch_epoch"] is None:
            return 0.0
        start, since = state["switch_epoch"], state["switch_elapsed"]
        if state.get("deepen_epoch") is not None:
            start, since = state["deepen_epoch"], state["deepen_elapsed"]
        return (state["elapsed"] - since) / max(1, epoch + 1 - start)

    def _stop(self, why: str) -> None:
        self.trainer.should_stop = True
        rank_zero_info(f"lit_vision: {why}")

    # -- optimizer --------------------------------------------------------------------------
    def head_lr(self) -> float:
        """The optimizer factory's learning rate, read from its arguments (``optimizer_lr``)."""
        return optimizer_lr(self.optimizer_factory)

    def param_groups(self) -> list[dict[str, Any]]:
        """Head and whole backbone as two groups from the start (frozen ones get no grads)."""
        lr = (
            self.backbone_lr
            if self.backbone_lr is not None
            else self.head_lr() * self.backbone_lr_scale
        )
        return [
            {"params": list(self.net.head.parameters()), "name": "head"},
            {"params": list(self.net.features.parameters()), "lr": lr, "name": "backbone"},
        ]
