"""TemperatureCalibration: fit the softmax temperature on every validation epoch during fit."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_vision import figures
from lit_vision.calibration import calibrate_logits, checkpoint_entry
from lit_vision.evaluation import LogitsTap
from lit_vision.tb_report import tb_loggers

# Beside report.md in the run's log directory.
RELIABILITY_PNG = "reliability.png"


class TemperatureCalibration(Callback):
    """Temperature scaling after each validation epoch of ``fit`` (Guo et al. 2017).

    The validation logits of the epoch fit ``T`` (LBFGS on the NLL of ``softmax(logits / T)``,
    ``lit_vision.calibration``); the module's ``temperature`` and ``calibration`` are set
    before ``ModelCheckpoint`` saves, so every checkpoint (best and last) carries the
    temperature of its own weights, which ``predict`` applies. Logged: ``val/ece`` (before),
    ``val/ece_calibrated`` and ``val/temperature``; the reliability diagram goes to TensorBoard
    (``val/reliability``) and beside ``report.md`` (``reliability.png``).

    Args:
        enabled: Fit the temperature (``false``: checkpoints keep temperature 1).
        figure: Draw the reliability diagram (TensorBoard and ``reliability.png``).
    """

    def __init__(self, enabled: bool = True, figure: bool = True) -> None:
        self.enabled = enabled
        self.figure = figure
        self.summary: dict[str, Any] | None = None
        self._tap = LogitsTap()
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.enabled and stage == "fit":
            self._tap.attach(pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._tap.detach()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logits, self._targets = [], []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        logits = self._tap.take(outputs)
        if logits is None or not isinstance(batch, list | tuple) or len(batch) < 2:
            return
        self._logits.append(logits.detach().float().cpu())
        self._targets.append(batch[1].detach().long().cpu())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fit the temperature on the epoch's logits (all processes) and set it on the module."""
        if not self.enabled or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        z, y = self._gather(pl_module)
        self._logits, self._targets = [], []
        if len(z) == 0:
            return
        summary = calibrate_logits(z, y)
        self.summary = summary
        pl_module.temperature = summary["temperature"]
        pl_module.calibration = checkpoint_entry(summary)
        pl_module.log_dict(
            {
                "val/ece": summary["ece_before"],
                "val/ece_calibrated": summary["ece_after"],
                "val/temperature": summary["temperature"],
            },
            sync_dist=trainer.world_size > 1,  # the same value on every rank
        )
        if self.figure:
            self._draw(trainer, summary)

    def _gather(self, pl_module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        classes = int(getattr(pl_module, "num_classes", 0) or 0)
        if self._logits:
            classes = self._logits[0].shape[1]
        z = torch.cat(self._logits) if self._logits else torch.zeros(0, classes)
        y = torch.cat(self._targets) if self._targets else torch.zeros(0, dtype=torch.long)
        if pl_module.trainer.world_size == 1:
            return z, y
        # Evaluation shards are uneven (no repeated samples): pad to the longest, gather, trim.
        device = pl_module.device
        longest = int(pl_module.all_gather(torch.tensor(len(z), device=device)).max())
        pad = longest - len(z)
        z = torch.cat([z, torch.zeros(pad, z.shape[1])]).to(device)
        y = torch.cat([y, torch.full((pad,), -1, dtype=torch.long)]).to(device)
        z = pl_module.all_gather(z).flatten(0, 1).cpu()
        y = pl_module.all_gather(y).flatten(0, 1).cpu()
        keep = y >= 0
        return z[keep], y[keep]

    def _draw(self, trainer: L.Trainer, summary: dict[str, Any]) -> None:
        # trainer.log_dir broadcasts from rank 0: every rank must ask, before the rank check.
        log_dir = trainer.log_dir
        loggers = tb_loggers(trainer)
        if not loggers or log_dir is None:  # fast_dev_run, other ranks, no TensorBoard
            return
        fig = figures.reliability_figure(summary, f"val epoch {trainer.current_epoch}:")
        for logger in loggers:
            logger.experiment.add_figure(
                "val/reliability", fig, global_step=trainer.current_epoch, close=False
            )
        fig.savefig(f"{log_dir}/{RELIABILITY_PNG}")
        figures.plt.close(fig)
