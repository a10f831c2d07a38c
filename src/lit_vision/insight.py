"""InsightCallback: TensorBoard layout, figures and hparams, stage timings and the run report."""

from __future__ import annotations

import functools
import sys
import time
from datetime import datetime
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_summary import ModelSummary

from lit_vision import figures
from lit_vision.report import (
    dataset_summary,
    environment_info,
    per_class_metrics,
    top_confusions,
    write_report,
)

# Train and val curves on shared axes (TensorBoard's CUSTOM SCALARS tab; tags are regexes).
LAYOUT = {
    "lit_vision": {
        "loss: train vs val": ["Multiline", [r"^train/loss_epoch$", r"^val/loss$"]],
        "accuracy: train vs val": ["Multiline", [r"^train/acc$", r"^val/acc$"]],
        "macro F1: train vs val": ["Multiline", [r"^train/f1$", r"^val/f1$"]],
        "learning rate": ["Multiline", [r"^lr-"]],
        "phase (transfer: frozen/unfrozen)": ["Multiline", [r"^train/phase$"]],
    }
}


def track_setup_time(datamodule: L.LightningDataModule) -> None:
    """Time every ``datamodule.setup(stage)`` call into ``datamodule.setup_seconds[stage]``.

    Lightning calls ``DataModule.setup`` before any callback hook, so the timing has to wrap
    the method itself; the CLI does this for every DataModule it builds. Idempotent.
    """
    if getattr(datamodule.setup, "_lv_timed", False):
        return
    original = datamodule.setup
    datamodule.setup_seconds = {}

    @functools.wraps(original)
    def timed(stage: str, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(stage, *args, **kwargs)
        finally:
            seconds = time.perf_counter() - t0
            datamodule.setup_seconds[stage] = datamodule.setup_seconds.get(stage, 0.0) + seconds

    timed._lv_timed = True
    datamodule.setup = timed


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class _Predictions:
    """Probabilities and targets of one evaluation epoch, plus the worst ``k`` mistakes."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.probs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.worst: list[tuple[float, np.ndarray, int, int, float]] = []

    def add(self, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        probs = logits.detach().float().softmax(dim=1).cpu()
        targets = targets.detach().cpu()
        self.probs.append(probs)
        self.targets.append(targets)
        if self.k <= 0:
            return
        conf, pred = probs.max(dim=1)
        wrong = (pred != targets).nonzero().flatten()
        if len(wrong) == 0:
            return
        loss = -probs[wrong, targets[wrong]].clamp_min(1e-12).log()
        for j in loss.argsort(descending=True)[: self.k].tolist():
            i = int(wrong[j])
            self.worst.append((float(loss[j]), images[i].detach().cpu().numpy(), int(targets[i]),
                               int(pred[i]), float(conf[i])))
        self.worst = sorted(self.worst, key=lambda w: -w[0])[: self.k]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.probs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        probs = torch.cat(self.probs)
        return torch.cat(self.targets).numpy(), probs.argmax(dim=1).numpy()


class InsightCallback(Callback):
    """Explains a run: TensorBoard layout and figures, hparams with final metrics, a report.

    Adds to TensorBoard a CUSTOM SCALARS layout (train vs val loss/accuracy/F1 on shared axes,
    learning rate, transfer phase), a confusion matrix and a grid of the worst misclassified
    validation images every ``every_n_epochs`` epochs and at the end (and for test), and the
    hyperparameters with the final metrics in the HPARAMS tab (``hp_metric`` becomes the best
    validation accuracy instead of Lightning's -1 placeholder). At the end of fit, validate and
    test it writes ``report.md`` and ``report.json`` into the run's log directory: environment,
    dataset, time per stage (data preparation, each training phase, validation, test),
    throughput, parameters, metrics per epoch and per class, checkpoints.

    A LightningModule with a ``phase`` attribute (e.g. ``"frozen"``/``"unfrozen"``) gets its
    training time and epochs reported per phase. Predictions are captured from the module's
    forward output during validation/test (no second pass), or from ``outputs["logits"]``
    when the step returns it.

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
        self._hook: Any = None
        self._captured: torch.Tensor | None = None
        self._capturing = False
        self._preds: _Predictions | None = None
        self._t: dict[str, float] = {}
        self._phase_now: str | None = None
        self._images_epoch = 0
        self._val_in_epoch = 0.0
        self._hparams_logged = False

    # ----------------------------------------------------------------- setup / capture
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.report:
            self.report = {"run": {"started": _now(), "stages": []},
                           "timing": {"data_setup": {}, "train_phases": {}, "validation": 0.0},
                           "history": [], "evaluation": {}}
        if stage not in self.report["run"]["stages"]:
            self.report["run"]["stages"].append(stage)
        if self._hook is None:
            self._hook = pl_module.register_forward_hook(self._forward_hook)
        dm = trainer.datamodule
        if dm is not None:
            track_setup_time(dm)  # later stages in this process get timed even outside the CLI

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _forward_hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if self._capturing and isinstance(output, torch.Tensor):
            self._captured = output

    def _start_eval(self, trainer: L.Trainer) -> None:
        self._capturing = not trainer.sanity_checking
        self._preds = _Predictions(self.worst_k) if self._capturing else None

    def _batch_end(self, outputs: Any, batch: Any) -> None:
        if self._preds is None:
            return
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        logits = logits if logits is not None else self._captured
        self._captured = None
        if logits is None or not isinstance(batch, (list, tuple)) or len(batch) < 2:
            return
        self._preds.add(batch[0], logits, batch[1])

    # ----------------------------------------------------------------- fit
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t["fit"] = time.perf_counter()
        for logger in self._tb_loggers(trainer):
            logger.experiment.add_custom_scalars(LAYOUT)
            # Lightning logs hparams right after this hook; without the -1 placeholder the
            # HPARAMS tab gets one entry, written at the end with the real metrics.
            if self.hparams_enabled:
                logger._default_hp_metric = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
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
            phases[phase] = {"epochs": [], "seconds": 0.0, "images": 0,
                             "trainable_params": _count(pl_module, trainable=True)}
            if len(phases) > 1 or phase != "train":
                for logger in self._tb_loggers(trainer):
                    logger.experiment.add_text(
                        "phase", f"epoch {trainer.current_epoch}: phase `{phase}`, "
                        f"{phases[phase]['trainable_params']:,} trainable parameters", trainer.global_step)
        phases[phase]["epochs"].append(trainer.current_epoch)
        self._phase_now = phase
        # The learning rates this epoch starts with, read from the optimizers themselves (the LR
        # monitor's values in callback_metrics are already the next epoch's when read later).
        entry = self._history_entry(trainer.current_epoch)
        for i, opt in enumerate(trainer.optimizers):
            for j, group in enumerate(opt.param_groups):
                name = group.get("name") or (f"{i}.{j}" if len(trainer.optimizers) > 1 else str(j))
                entry[f"lr/{name}"] = float(group["lr"])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._phase_now is None:
            self._enter_phase(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
            self._images_epoch += len(batch[0])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._t.pop("train_epoch", time.perf_counter()) - self._val_in_epoch
        if self._phase_now is None:  # an epoch without batches
            self._enter_phase(trainer, pl_module)
        ph = self.report["timing"]["train_phases"][self._phase_now]
        ph["seconds"] += seconds
        ph["images"] += self._images_epoch
        entry = self._history_entry(trainer.current_epoch)
        entry.update(phase=self._phase_now, train_seconds=round(seconds, 2), train_images=self._images_epoch)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t["val"] = time.perf_counter()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_eval(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end(outputs, batch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._t.pop("val", time.perf_counter())
        self._capturing = False
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
        when = f"epoch {trainer.current_epoch}" if fitting else "validate"
        t0 = time.perf_counter()
        self._evaluate(trainer, pl_module, "val", when, figures_due=due)
        if not fitting:
            self._finish(trainer, pl_module, "validated")
        overhead = time.perf_counter() - t0
        self.report["timing"]["insight_overhead"] = self.report["timing"].get("insight_overhead", 0.0) + overhead
        if "train_epoch" in self._t:  # figures drawn mid-epoch are not training time either
            self._val_in_epoch += overhead

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_train_metrics(trainer)
        self.report["timing"]["fit_wall"] = time.perf_counter() - self._t.pop("fit", time.perf_counter())
        self._finish(trainer, pl_module, "fitted")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.report and not trainer.sanity_checking:
            self._finish(trainer, pl_module, f"stopped by {type(exception).__name__}")

    # ----------------------------------------------------------------- test
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t["test"] = time.perf_counter()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_eval(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end(outputs, batch)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report["timing"]["test"] = (self.report["timing"].get("test") or 0.0) + (
            time.perf_counter() - self._t.pop("test", time.perf_counter()))
        self._capturing = False
        self._evaluate(trainer, pl_module, "test", "test", figures_due=True)
        self._finish(trainer, pl_module, "tested")

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _tb_loggers(trainer: L.Trainer) -> list[TensorBoardLogger]:
        if trainer.fast_dev_run or trainer.global_rank != 0:
            return []
        return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]

    @staticmethod
    def _is_last_epoch(trainer: L.Trainer) -> bool:
        return trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 >= trainer.max_epochs

    @staticmethod
    def _metrics(trainer: L.Trainer, prefix: str = "") -> dict[str, float]:
        out = {}
        for k, v in trainer.callback_metrics.items():
            if k.startswith(prefix) and isinstance(v, torch.Tensor) and v.numel() == 1:
                out[k] = round(float(v), 6)
        return out

    def _history_entry(self, epoch: int) -> dict[str, Any]:
        hist = self.report["history"]
        if not hist or hist[-1]["epoch"] != epoch:
            hist.append({"epoch": epoch})
        return hist[-1]

    def _record_train_metrics(self, trainer: L.Trainer) -> None:
        # Lightning reduces epoch-level train metrics after on_train_epoch_end, so they are
        # read at the next epoch's start (and at fit end) for the epoch just finished.
        if not self.report["history"]:
            return
        entry = self.report["history"][-1]
        entry.update(self._metrics(trainer, "train/"))

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, when: str,
                  figures_due: bool) -> None:
        preds, self._preds = self._preds, None
        if trainer.world_size > 1:
            # Every rank must join the gathers, even one with no predictions. Shards differ in
            # length (each sample is evaluated exactly once), so pad with -1 and drop it after.
            targets, predicted = preds.arrays() if preds is not None else (np.zeros(0, np.int64),) * 2
            counts = pl_module.all_gather(torch.tensor(len(targets), device=pl_module.device))
            padded = np.full((2, int(counts.max())), -1, dtype=np.int64)
            padded[:, : len(targets)] = np.stack([targets, predicted])
            gathered = pl_module.all_gather(torch.from_numpy(padded).to(pl_module.device)).cpu()
            targets, predicted = gathered.permute(1, 0, 2).reshape(2, -1).numpy()
            keep = targets >= 0
            targets, predicted = targets[keep], predicted[keep]
            if not len(targets):
                return
        elif preds is None or not preds.probs:
            return
        else:
            targets, predicted = preds.arrays()
        names = list(getattr(pl_module, "class_names", None) or [])
        n = max(len(names), int(targets.max()) + 1, int(predicted.max()) + 1)
        names = names if len(names) == n else [str(i) for i in range(n)]
        cm = figures.confusion_matrix(targets, predicted, n)
        ev = per_class_metrics(targets, predicted, names)
        ev.update(when=when, top_confusions=top_confusions(cm, names), confusion_matrix=cm.tolist())
        self.report["evaluation"][stage] = ev
        loggers = self._tb_loggers(trainer)
        if not (self.figures and figures_due and loggers):
            return
        step = trainer.current_epoch if stage == "val" else trainer.global_step
        title = f"{stage} {when}"
        figs = {f"{stage}/confusion_matrix": figures.confusion_matrix_figure(cm, names, title)}
        if self.worst_k > 0 and preds is not None:
            w = preds.worst
            figs[f"{stage}/worst_misclassified"] = figures.worst_images_figure(
                [x[1] for x in w], [x[2] for x in w], [x[3] for x in w], [x[4] for x in w], names,
                f"{stage} {when}: {len(w)} worst misclassified (true / predicted, confidence)")
        for tag, fig in figs.items():
            for logger in loggers:
                logger.experiment.add_figure(tag, fig, global_step=step, close=False)
            figures.plt.close(fig)

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str) -> None:
        # trainer.log_dir broadcasts from rank 0: every rank must ask, before the rank check.
        log_dir = trainer.log_dir or trainer.default_root_dir
        if trainer.global_rank != 0:
            return
        r = self.report
        loggers = self._tb_loggers(trainer)
        first = loggers[0] if loggers else None
        r["run"].update(
            status=status, updated=_now(), log_dir=str(log_dir), command=" ".join(sys.argv),
            name=getattr(first, "name", None), version=f"version_{first.version}" if first else "",
            precision=str(trainer.precision), accelerator=type(trainer.accelerator).__name__,
            devices=trainer.num_devices, strategy=type(trainer.strategy).__name__,
            seed=_seed(), max_epochs=trainer.max_epochs, epochs_run=trainer.current_epoch,
        )
        if trainer.ckpt_path:  # the weights a validate/test (or resumed fit) started from
            r["run"].setdefault("loaded_checkpoints", {})[str(getattr(trainer.state.fn, "value", trainer.state.fn))] = str(trainer.ckpt_path)
        r.setdefault("environment", environment_info())
        dm = trainer.datamodule
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
        summary = ModelSummary(pl_module, max_depth=1)
        r["model"] = {
            "class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "total_params": _count(pl_module), "trainable_params": _count(pl_module, trainable=True),
            "size_mb": sum(p.numel() * p.element_size() for p in pl_module.parameters()) / 1024**2,
            "hparams": {k: v for k, v in dict(pl_module.hparams).items() if k != "class_names"},
            "summary": str(summary),
        }
        ck = trainer.checkpoint_callback
        if isinstance(ck, ModelCheckpoint):
            # Loading a checkpoint for test restores the callback's state as it was when that
            # file was written (no last.ckpt yet), so known paths are kept, not blanked.
            known = r.get("checkpoints", {})
            current = {"monitor": ck.monitor, "best": ck.best_model_path or None,
                       "best_score": float(ck.best_model_score) if ck.best_model_score is not None else None,
                       "last": ck.last_model_path or None}
            r["checkpoints"] = {k: v if v is not None else known.get(k) for k, v in current.items()}
        r["final_metrics"] = {**r.get("final_metrics", {}), **self._metrics(trainer)}
        if status == "fitted":
            self._log_hparams(trainer, pl_module)
        if trainer.fast_dev_run or not self.report_enabled:
            return
        json_path, md_path = write_report(r, log_dir)
        rank_zero_info(f"lit_vision: report written to {md_path}")

    def _log_hparams(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.hparams_enabled or self._hparams_logged:
            return
        loggers = self._tb_loggers(trainer)
        if not loggers:
            return
        r = self.report
        final = r["final_metrics"]
        best = r.get("checkpoints", {}).get("best_score")
        metrics = {
            "hp_metric": best if best is not None else final.get("val/acc", float("nan")),
            "hp/best_val_acc": best if best is not None else float("nan"),
            "hp/final_val_acc": final.get("val/acc", float("nan")),
            "hp/final_val_f1": final.get("val/f1", float("nan")),
            "hp/final_val_loss": final.get("val/loss", float("nan")),
            "hp/train_minutes": r["timing"]["train_total"] / 60,
            "hp/train_images_per_s": r["timing"]["train_images_per_s"] or 0.0,
            "hp/params_million": r["model"]["total_params"] / 1e6,
        }
        dm = trainer.datamodule
        extra = {"model_class": type(pl_module).__name__, "data_class": type(dm).__name__ if dm else None,
                 "max_epochs": trainer.max_epochs, "precision": str(trainer.precision)}
        for logger in loggers:
            try:
                logger.log_hyperparams({**dict(logger.hparams), **extra}, metrics)
            except Exception as err:  # odd hparam values must not lose the report
                rank_zero_warn(f"lit_vision: could not log hparams to TensorBoard: {err}")
        self._hparams_logged = True


def _count(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def _seed() -> int | None:
    import os

    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None
