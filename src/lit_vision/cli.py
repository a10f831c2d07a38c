"""The Lightning layer of the command line: LitVisionCLI, build_cli, automatic precision, ``--ckpt_path last``.

Dispatching and error handling live in ``__main__``; lit_vision's own subcommands in ``commands/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from lit_vision.calibration_callback import TemperatureCalibration
from lit_vision.checkpoints import read_checkpoint, sanitize_for_cli
from lit_vision.distributed import RunSummary, ScaleLR
from lit_vision.errors import CheckpointError, DataError
from lit_vision.insight import InsightCallback, track_setup_time
from lit_vision.precision import cpu_has_native_bf16, enable_tf32
from lit_vision.resume import AtomicCheckpointIO, FaultTolerance, find_last_checkpoint


def auto_precision(
    accelerator: object = None,
    strategy: object = None,
    cpu_bf16: bool = False,
    gpu_mixed: bool = True,
) -> str:
    """Mixed precision on a GPU that supports it (bf16, else fp16), full precision elsewhere.

    ``accelerator`` is the trainer's (``auto``, ``gpu``, ``cuda``, ``cpu``, ...): only CUDA
    gets mixed precision by default, so ``cpu`` (or ``auto`` without a GPU) stays ``32-true``
    unless ``cpu_bf16`` (the user's opt-in) is set and the CPU has native bf16. bf16 on a GPU
    needs native support (Ampere or newer; emulated bf16 on older cards is slower than fp16).
    Fork-based strategies (``ddp_fork``, ``ddp_notebook``) must not touch CUDA before
    forking, so they get fp16, which every CUDA GPU runs. ``gpu_mixed=False`` keeps a GPU in
    ``32-true`` (with TF32 tensor cores, see :func:`enable_tf32`): faster for small CNNs,
    whose time goes to casts and small kernels rather than to matmuls.
    """
    name = (
        accelerator
        if isinstance(accelerator, str) or accelerator is None
        else type(accelerator).__name__
    )
    name = (name or "auto").lower().replace("accelerator", "")
    if name not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        if cpu_bf16 and name in ("auto", "cpu") and cpu_has_native_bf16():
            return "bf16-mixed"
        return "32-true"
    if not gpu_mixed:
        return "32-true"
    if isinstance(strategy, str) and ("fork" in strategy or "notebook" in strategy):
        return "16-mixed"
    try:
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.4 has no including_emulation and reports native support only
        bf16 = torch.cuda.is_bf16_supported()
    return "bf16-mixed" if bf16 else "16-mixed"


class LitVisionCLI(LightningCLI):
    """LightningCLI with linked class counts, checkpoints, LR monitor and automatic precision."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )
        parser.link_arguments("data.classes", "model.init_args.class_names", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:02d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(FaultTolerance, "fault_tolerance")
        # None: at the scheduler's own interval, so a per-step warm-up shows in TensorBoard.
        parser.set_defaults({"lr_monitor.logging_interval": None})
        parser.add_lightning_class_args(InsightCallback, "insight")
        parser.add_lightning_class_args(RunSummary, "run_summary")
        parser.add_lightning_class_args(TemperatureCalibration, "calibration")
        parser.add_argument(
            "--scale_lr",
            type=ScaleLR,
            default="none",
            help="Scale the configured learning rates with the effective batch: k = world size x "
            "accumulate_grad_batches; linear (x k), sqrt (x sqrt(k)) or none.",
        )
        # A model init argument, so the checkpoint records the rule; --scale_lr stays the flag.
        parser.link_arguments("scale_lr", "model.init_args.scale_lr", apply_on="parse")
        parser.add_argument(
            "--cpu_bf16",
            type=bool,
            default=False,
            help="When trainer.precision is unset, train in bf16-mixed on CPUs with native bf16 "
            "(AVX-512 BF16/AMX): faster for the CNNs, accuracy within noise on GTSRB "
            "(docs/results.md).",
        )
        parser.add_argument(
            "--small_images",
            type=str | None,
            default=None,
            help="A config that trains instead when the training images' median short side "
            "is <= 32 px (transfer.yaml: small_cnn.yaml); null keeps this config "
            "(lit_vision.routing).",
        )
        parser.add_argument(
            "--gpu_mixed",
            type=bool,
            default=True,
            help="When trainer.precision is unset, train in bf16/fp16 mixed precision on CUDA "
            "GPUs; false keeps fp32 with TF32 tensor cores (faster for small CNNs).",
        )

    def _parse_ckpt_path(self) -> None:
        """Merge a ``--ckpt_path`` checkpoint's model hyperparameters, treating the file as data.

        LightningCLI's own version loads the file and merges every hyperparameter, class paths
        included, into the config that jsonargparse then instantiates: a shared checkpoint could
        name ``os.system``. Here the file is read by :func:`read_checkpoint` (no unpickling,
        class paths allow-listed, one ``error:`` line otherwise) and the optimizer/scheduler
        stay those of the config, which is the trusted code.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        resolve_ckpt_last(config, subcommand)
        ckpt_path = config.get("ckpt_path")
        if (
            not ckpt_path
            or ckpt_path in ("best", "last", "hpc", "registry")
            or str(ckpt_path).startswith("registry:")
        ):
            return
        if not Path(ckpt_path).is_file():
            raise CheckpointError(f"--ckpt_path {ckpt_path}: no such file")
        model = config.get("model")
        trusted = (
            [model.class_path] if isinstance(model, Namespace) and model.get("class_path") else []
        )
        hparams = sanitize_for_cli(
            dict(read_checkpoint(ckpt_path, trusted).get("hyper_parameters") or {}),
            ckpt_path,
            trusted,
        )
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        data_args = config.get("data") and config.data.get("init_args")
        if data_args is not None and str(data_args.get("root")) == "???":
            raise DataError(
                "data.root is not set: pass --data.root ROOT (the folder with train/ and val/)"
            )
        if "weights_only" in config:
            config.weights_only = True  # the trainer reloads --ckpt_path: plain data only
        if config.trainer.precision is None:
            config.trainer.precision = auto_precision(
                config.trainer.accelerator,
                config.trainer.strategy,
                config.get("cpu_bf16", False),
                config.get("gpu_mixed", True),
            )
        if str(config.trainer.precision) in ("32-true", "32") and torch.cuda.is_available():
            enable_tf32()
        rank_zero_info(f"lit_vision: precision {config.trainer.precision}")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # DataModule.setup runs before any callback hook, so the report's data-preparation
        # time is measured by wrapping it here.
        if self.datamodule is not None:
            track_setup_time(self.datamodule)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with atomic checkpoint writes and no LR monitor when nothing logs.

        Atomic writes (``AtomicCheckpointIO``) unless the user brought their own CheckpointIO;
        ``LearningRateMonitor`` refuses to run without a logger, so ``--trainer.logger false``
        drops it instead of failing.
        """
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        plugins = config["trainer"].get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:
            trainer.callbacks = [
                c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)
            ]
        return trainer


def resolve_ckpt_last(config: Namespace, subcommand: str | None) -> None:
    """``--ckpt_path last``: the newest ``last.ckpt`` of this experiment's ``tb_logs/NAME/``.

    A resumed ``fit`` also logs into that checkpoint's ``version_N`` folder, so the curves of
    both halves of the run sit together in TensorBoard.
    """
    if config.get("ckpt_path") != "last":
        return
    logger = config.trainer.get("logger")
    init = logger.get("init_args") if isinstance(logger, Namespace) else None
    if init is None or init.get("save_dir") is None:
        return  # no TensorBoard folder to search: Lightning's own "last" handling
    name = init.get("name") or "lightning_logs"
    found = find_last_checkpoint(init.save_dir, name)
    if found is None:
        raise FileNotFoundError(
            f"--ckpt_path last: no last.ckpt under {Path(init.save_dir) / name}/*/checkpoints/"
        )
    config.ckpt_path = str(found)
    if subcommand == "fit" and "version" in init and init.get("version") is None:
        init.version = found.parent.parent.name
    rank_zero_info(f"lit_vision: resuming from {found}")


TRAINER_DEFAULTS = {
    "max_epochs": 10,
    # Lightning's 50 hides a per-step warm-up on small datasets (digits: 28 steps an epoch).
    "log_every_n_steps": 10,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "tb_logs", "name": "lit_vision"},
    },
}


class ParseOnlyCLI(LitVisionCLI):
    """Parses and checks a command line like :class:`LitVisionCLI`, then builds nothing."""

    def before_instantiate_classes(self) -> None:
        """Nothing to prepare: nothing is built."""

    def instantiate_classes(self) -> None:
        """Build nothing: the parse (every option and config key checked) is the point."""


def build_cli(
    args: ArgsType, cli_class: type[LitVisionCLI] = LitVisionCLI, **kwargs: Any
) -> LitVisionCLI:
    """A ``LitVisionCLI`` with lit_vision's model/data modes and trainer defaults.

    Args:
        args: Command-line arguments (``None`` reads ``sys.argv``).
        cli_class: The CLI class (:class:`ParseOnlyCLI` checks a command line without running it).
        **kwargs: Further ``LightningCLI`` arguments (``run=False``, ``save_config_callback``...).
    """
    return cli_class(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        args=args,
        **kwargs,
    )
