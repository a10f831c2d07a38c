"""InsightCallback, the run-report callback: one timer, figures, hparams, report.md/report.json."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from lit_vision.evaluation import EvalCollector, log_figures
from lit_vision.report import evaluation_from_confusion, top_confusions, write_report
from lit_vision.runinfo import (
    checkpoint_info,
    count_params,
    dataset_summary,
    environment_info,
    model_info,
    now,
    run_info,
    track_setup_time,
)
from lit_vision.tb_report import LAYOUT, log_hparams, tb_loggers

__all__ = ["LAYOUT", "InsightCallback", "track_setup_time"]  # track_setup_time: used by the CLI


class InsightCallback(Callback):
    """The run report: TensorBoard layout and figures, hparams with final metrics, timings.

    Adds to TensorBoard a CUSTOM SCALARS layout (train vs val loss/accuracy/F1 on shared axes,
    learning rate, transfer phase), a confusion matrix and a grid of the worst misclassified
    validation images every ``every_n_epochs`` epochs and at the end (and for test), and the
    hyperparameters with the final metrics in the HPARAMS tab (``hp_metric`` becomes the best
    validation accuracy instead of Lightning's -1 placeholder). At the end of fit, validate and
    test it writes ``report.md`` and ``report.json`` into the run's log directory: environment,
    dataset, time per stage (data preparation, each training phase, validation, test),
    throughput, parameters, metrics per epoch and per class, checkpoints.

    It is the run's one timer: each training epoch also logs ``perf/train_images_per_sec``
    over all ranks (validation excluded). A LightningModule with a ``phase`` attribute (e.g.
    ``"frozen"``/``"unfrozen"``) gets its training time and epochs reported per phase.

    The confusion matrix is a torchmetrics ``MulticlassConfusionMatrix`` updated from each
    validation/test step's logits (``outputs["logits"]`` when the step returns it, else the
    module's forward output) and synced over all processes, so under DDP it counts every
    sample once. The worst-misclassified grid is drawn from rank 0's shard only.

    Args:
        every_n_epochs: Log the figures every N validation epochs (and always after the last).
        worst_k: Misclassified images in the grid (0: no grid; under DDP from rank 0's shard).
        figures: Log the confusion-matrix and misclassified-image figures.
        report: Write report.md / report.json.
        hparams: Log hyperparameters with final metrics to the HPARAMS tab.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        worst_k: int = 16,
        figures: bool = True,
        report: bool = True,
        hparams: bool = True,
    ) -> None:
        self.every_n_epochs = max(1, every_n_epochs)
        self.worst_k = worst_k
        self.figures = figures
        self.report_enabled = report
        self.hparams_enabled = hparams
        self.report: dict[str, Any] = {}
        self._eval = EvalCollector(worst_k)
        self._t: dict[str, float] = {}
        self._phase_now: str | None = None
        self._images_epoch = 0
        self._val_in_epoch = 0.0
        self._hparams_logged = False

    # ----------------------------------------------------------------- setup / evaluation
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Start the report (once per callback) and record the stage."""
        if not self.report:
            self.report = {
                "run": {"started": now(), "stages": []},
                "timing": {"data_setup": {}, "train_phases": {}, "validation": 0.0},
                "history": [],
                "evaluation": {},
            }
        if stage not in self.report["run"]["stages"]:
            self.report["run"]["stages"].append(stage)
        self._eval.attach(pl_module)
        if trainer.datamodule is not None:
            track_setup_time(
                trainer.datamodule
            )  # later stages in this process get timed even outside the CLI

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Remove the forward hook."""
        self._eval.detach()

    # ----------------------------------------------------------------- fit
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the fit timer, add the CUSTOM SCALARS layout, drop the -1 hp_metric placeholder."""
        self._t["fit"] = time.perf_counter()
        for logger in tb_loggers(trainer):
            logger.experiment.add_custom_scalars(LAYOUT)
            # Lightning logs hparams right after this hook; without the -1 placeholder the
            # HPARAMS tab gets one entry, written at the end with the real metrics. Private
            # (no public setter after construction): tests/test_lightning_private.py guards it.
            if self.hparams_enabled:
                logger._default_hp_metric = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the last epoch's train metrics and start this epoch's timer."""
        self._record_train_metrics(trainer)
        self._phase_now = None
        self._images_epoch = 0
        self._val_in_epoch = 0.0
        self._t["train_epoch"] = time.perf_counter()

    def _enter_phase(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Read at the first batch, not at epoch start: callbacks' on_train_epoch_start runs
        # before the module's, where a transfer model sets its phase and requires_grad.
        phase = getattr(pl_module, "phase", None)
        phase = str(phase) if phase is not None else "train"
        phases = self.report["timing"]["train_phases"]
        if phase not in phases:
            trainable = count_params(pl_module, trainable=True)
            phases[phase] = {
                "epochs": [],
                "seconds": 0.0,
                "images": 0,
                "trainable_params": trainable,
            }
            if len(phases) > 1 or phase != "train":
                for logger in tb_loggers(trainer):
                    logger.experiment.add_text(
                        "phase",
                        f"epoch {trainer.current_epoch}: phase `{phase}`, "
                        f"{trainable:,} trainable parameters",
                        trainer.global_step,
                    )
        phases[phase]["epochs"].append(trainer.current_epoch)
        self._phase_now = phase
        # The learning rates this epoch starts with, read from the optimizers themselves (the LR
        # monitor's values in callback_metrics are already the next epoch's when read later).
        entry = self._history_entry(trainer.current_epoch)
        for i, opt in enumerate(trainer.optimizers):
            for j, group in enumerate(opt.param_groups):
                name = group.get("name") or (f"{i}.{j}" if len(trainer.optimizers) > 1 else str(j))
                entry[f"lr/{name}"] = float(group["lr"])

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Note the training phase at the epoch's first batch."""
        if self._phase_now is None:
            self._enter_phase(trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count this rank's training images."""
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
            self._images_epoch += len(batch[0])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Book the epoch's training time (validation excluded) and log the throughput."""
        seconds = (
            time.perf_counter()
            - self._t.pop("train_epoch", time.perf_counter())
            - self._val_in_epoch
        )
        if self._phase_now is None:  # an epoch without batches
            self._enter_phase(trainer, pl_module)
        ph = self.report["timing"]["train_phases"][self._phase_now]
        ph["seconds"] += seconds
        ph["images"] += self._images_epoch
        entry = self._history_entry(trainer.current_epoch)
        entry.update(
            phase=self._phase_now, train_seconds=round(seconds, 2), train_images=self._images_epoch
        )
        if self._images_epoch and seconds > 0:
            # Every rank runs the same number of batches, so rank 0's count x world size is the total.
            total = self._images_epoch * trainer.world_size
            rank_zero_info(
                f"lit_vision epoch {trainer.current_epoch}: {total / seconds:.0f} train images/s "
                f"({total} images in {seconds:.1f} s, all ranks)"
            )
            if trainer.global_rank == 0:
                for logger in trainer.loggers:
                    logger.log_metrics(
                        {"perf/train_images_per_sec": total / seconds}, step=trainer.global_step
                    )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the validation timer."""
        self._t["val"] = time.perf_counter()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reset the confusion matrix and the worst mistakes."""
        self._eval.start(trainer, pl_module)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Count the batch's predictions."""
        self._eval.batch_end(outputs, batch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Book validation time, record the epoch's metrics, draw the figures when due."""
        seconds = time.perf_counter() - self._t.pop("val", time.perf_counter())
        if trainer.sanity_checking:
            return
        self.report["timing"]["validation"] += seconds
        if "train_epoch" in self._t:
            self._val_in_epoch += seconds
        fitting = trainer.state.fn == "fit"
        if fitting:
            entry = self._history_entry(trainer.current_epoch)
            entry.update(self._metrics(trainer, "val/"))
            entry["val_seconds"] = round(seconds, 2)
        last = not fitting or self._is_last_epoch(trainer)
        due = (trainer.current_epoch + 1) % self.every_n_epochs == 0 or last
        t0 = time.perf_counter()
        self._evaluate(
            trainer,
            pl_module,
            "val",
            f"epoch {trainer.current_epoch}" if fitting else "validate",
            due,
        )
        if not fitting:
            self._finish(trainer, pl_module, "validated")
        overhead = time.perf_counter() - t0
        self.report["timing"]["insight_overhead"] = (
            self.report["timing"].get("insight_overhead", 0.0) + overhead
        )
        if "train_epoch" in self._t:  # figures drawn mid-epoch are not training time either
            self._val_in_epoch += overhead

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Book the fit's wall time and write the report."""
        self._record_train_metrics(trainer)
        self.report["timing"]["fit_wall"] = time.perf_counter() - self._t.pop(
            "fit", time.perf_counter()
        )
        self._finish(trainer, pl_module, "fitted")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Write the report of a run stopped by an exception."""
        if self.report and not trainer.sanity_checking:
            self._finish(trainer, pl_module, f"stopped by {type(exception).__name__}")

    # ----------------------------------------------------------------- test
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the test timer."""
        self._t["test"] = time.perf_counter()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reset the confusion matrix and the worst mistakes."""
        self._eval.start(trainer, pl_module)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Count the batch's predictions."""
        self._eval.batch_end(outputs, batch)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Book test time, draw the figures, write the report."""
        self.report["timing"]["test"] = (self.report["timing"].get("test") or 0.0) + (
            time.perf_counter() - self._t.pop("test", time.perf_counter())
        )
        self._evaluate(trainer, pl_module, "test", "test", figures_due=True)
        self._finish(trainer, pl_module, "tested")

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _is_last_epoch(trainer: L.Trainer) -> bool:
        return (
            trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1
        )

    @staticmethod
    def _metrics(trainer: L.Trainer, prefix: str = "") -> dict[str, float]:
        return {
            k: round(float(v), 6)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(prefix) and isinstance(v, torch.Tensor) and v.numel() == 1
        }

    def _history_entry(self, epoch: int) -> dict[str, Any]:
        hist = self.report["history"]
        if not hist or hist[-1]["epoch"] != epoch:
            hist.append({"epoch": epoch})
        return hist[-1]

    def _record_train_metrics(self, trainer: L.Trainer) -> None:
        # Lightning reduces epoch-level train metrics after on_train_epoch_end, so they are
        # read at the next epoch's start (and at fit end) for the epoch just finished.
        if self.report["history"]:
            self.report["history"][-1].update(self._metrics(trainer, "train/"))

    def _evaluate(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        stage: str,
        when: str,
        figures_due: bool,
    ) -> None:
        result = self._eval.result(trainer, pl_module)
        if result is None:
            return
        cm, names, worst = result
        ev = evaluation_from_confusion(cm, names)
        ev.update(when=when, top_confusions=top_confusions(cm, names), confusion_matrix=cm.tolist())
        self.report["evaluation"][stage] = ev
        loggers = tb_loggers(trainer)
        if self.figures and figures_due and loggers:
            step = trainer.current_epoch if stage == "val" else trainer.global_step
            log_figures(
                loggers,
                stage,
                f"{stage} {when}",
                step,
                cm,
                names,
                worst if self.worst_k > 0 else None,
                pl_module,
            )

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str) -> None:
        # trainer.log_dir broadcasts from rank 0: every rank must ask, before the rank check.
        log_dir = trainer.log_dir or trainer.default_root_dir
        if trainer.global_rank != 0:
            return
        r = self.report
        loggers = tb_loggers(trainer)
        r["run"].update(
            status=status,
            updated=now(),
            **run_info(trainer, loggers[0] if loggers else None, log_dir),
        )
        if trainer.ckpt_path:  # the weights a validate/test (or resumed fit) started from
            fn = str(getattr(trainer.state.fn, "value", trainer.state.fn))
            r["run"].setdefault("loaded_checkpoints", {})[fn] = str(trainer.ckpt_path)
        r.setdefault("environment", environment_info())
        self._dataset_and_throughput(trainer)
        r["model"] = model_info(pl_module)
        if getattr(pl_module, "calibration", None):  # set by TemperatureCalibration
            r["calibration"] = {"temperature": pl_module.temperature, **pl_module.calibration}
        if isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            r["checkpoints"] = checkpoint_info(
                trainer.checkpoint_callback, r.get("checkpoints", {})
            )
        r["final_metrics"] = {**r.get("final_metrics", {}), **self._metrics(trainer)}
        if status == "fitted" and self.hparams_enabled and not self._hparams_logged:
            self._hparams_logged = log_hparams(trainer, pl_module, r)
        if trainer.fast_dev_run or not self.report_enabled:
            return
        _, md_path = write_report(r, log_dir)
        rank_zero_info(f"lit_vision: report written to {md_path}")

    def _dataset_and_throughput(self, trainer: L.Trainer) -> None:
        r, dm = self.report, trainer.datamodule
        if dm is not None:
            r["timing"]["data_setup"] = dict(getattr(dm, "setup_seconds", {}) or {})
            if "dataset" not in r:
                try:
                    r["dataset"] = dataset_summary(dm)
                except Exception as err:  # a report must never fail the run it describes
                    r["dataset"] = {"error": repr(err)}
        phases = r["timing"]["train_phases"]
        train_s = sum(p["seconds"] for p in phases.values())
        images = sum(p["images"] for p in phases.values())
        r["timing"]["train_total"] = train_s
        r["timing"]["train_images_per_s"] = images / train_s if train_s > 0 else None
