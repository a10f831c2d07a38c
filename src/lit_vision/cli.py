"""The command line: LightningCLI's fit/validate/test/predict plus lit_vision's own subcommands."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from jsonargparse import ArgumentError, ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from lit_vision.check import scan_dataset
from lit_vision.checkpoints import CheckpointError, read_checkpoint, sanitize_for_cli
from lit_vision.data import DataError
from lit_vision.export import ExportError
from lit_vision.distributed import RunSummary, ScaleLR
from lit_vision.images import ImageDecodeError
from lit_vision.predict import OutputExistsError
from lit_vision.insight import InsightCallback, track_setup_time
from lit_vision.resume import (
    AtomicCheckpointIO,
    FaultTolerance,
    NonFiniteLossError,
    find_last_checkpoint,
)
from lit_vision.split import SplitError, split_dataset
from lit_vision.weights import WeightsError

class ConfigError(ValueError):
    """A command line or config file jsonargparse cannot parse; the message names the key."""


USER_ERRORS = (
    ConfigError,
    ExportError,
    OutputExistsError,
    DataError, SplitError, ImageDecodeError, FileNotFoundError, CheckpointError, WeightsError, NonFiniteLossError
)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), so bf16 autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def auto_precision(accelerator: object = None, strategy: object = None, cpu_bf16: bool = False) -> str:
    """Mixed precision on a GPU that supports it (bf16, else fp16), full precision elsewhere.

    ``accelerator`` is the trainer's (``auto``, ``gpu``, ``cuda``, ``cpu``, ...): only CUDA
    gets mixed precision by default, so ``cpu`` (or ``auto`` without a GPU) stays ``32-true``
    unless ``cpu_bf16`` (the user's opt-in) is set and the CPU has native bf16. bf16 on a GPU
    needs native support (Ampere or newer; emulated bf16 on older cards is slower than fp16).
    Fork-based strategies (``ddp_fork``, ``ddp_notebook``) must not touch CUDA before
    forking, so they get fp16, which every CUDA GPU runs.
    """
    name = accelerator if isinstance(accelerator, str) or accelerator is None else type(accelerator).__name__
    name = (name or "auto").lower().replace("accelerator", "")
    if name not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        if cpu_bf16 and name in ("auto", "cpu") and cpu_has_native_bf16():
            return "bf16-mixed"
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
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
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
        parser.set_defaults({"lr_monitor.logging_interval": "epoch"})
        parser.add_lightning_class_args(InsightCallback, "insight")
        parser.add_lightning_class_args(RunSummary, "run_summary")
        parser.add_argument(
            "--scale_lr",
            type=ScaleLR,
            default="none",
            help="Scale the configured learning rates with the effective batch: k = world size x "
            "accumulate_grad_batches; linear (x k), sqrt (x sqrt(k)) or none.",
        )
        parser.add_argument(
            "--cpu_bf16",
            type=bool,
            default=False,
            help="When trainer.precision is unset, train in bf16-mixed on CPUs with native bf16 "
            "(AVX-512 BF16/AMX): ~1.8x faster for the CNNs, accuracy within noise on GTSRB.",
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
        if not ckpt_path or ckpt_path in ("best", "last", "hpc", "registry") or str(ckpt_path).startswith("registry:"):
            return
        if not Path(ckpt_path).is_file():
            raise CheckpointError(f"--ckpt_path {ckpt_path}: no such file")
        model = config.get("model")
        trusted = [model.class_path] if isinstance(model, Namespace) and model.get("class_path") else []
        hparams = sanitize_for_cli(
            dict(read_checkpoint(ckpt_path, trusted).get("hyper_parameters") or {}), ckpt_path, trusted
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
            raise DataError("data.root is not set: pass --data.root ROOT (the folder with train/ and val/)")
        resolve_ckpt_last(config, self.subcommand)
        if "weights_only" in config:
            config.weights_only = True  # the trainer reloads --ckpt_path: plain data only
        if config.trainer.precision is None:
            config.trainer.precision = auto_precision(
                config.trainer.accelerator, config.trainer.strategy, config.get("cpu_bf16", False)
            )
        rank_zero_info(f"lit_vision: precision {config.trainer.precision}")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.model.scale_lr = config.get("scale_lr") or "none"  # read in configure_optimizers
        # DataModule.setup runs before any callback hook, so the report's data-preparation
        # time is measured by wrapping it here.
        if self.datamodule is not None:
            track_setup_time(self.datamodule)


    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        # Atomic checkpoint writes unless the user brought their own CheckpointIO.
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        if config.get("logger") in (False, None, []):
            # LearningRateMonitor refuses to run without a logger: nothing to log the LR to.
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        return super()._instantiate_trainer(config, callbacks)


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
        raise FileNotFoundError(f"--ckpt_path last: no last.ckpt under {Path(init.save_dir) / name}/*/checkpoints/")
    config.ckpt_path = str(found)
    if subcommand == "fit" and "version" in init and init.get("version") is None:
        init.version = found.parent.parent.name
    rank_zero_info(f"lit_vision: resuming from {found}")


TRAINER_DEFAULTS = {
    "max_epochs": 10,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "tb_logs", "name": "lit_vision"},
    },
}

HELP_EXTRA = """
lit_vision subcommands besides LightningCLI's fit/validate/test:
  split       raw class folders -> ROOT/train, ROOT/val, ROOT/test (verified; see `split --help`)
  predict     checkpoint + folders/files -> CSV of top-k predictions (replaces LightningCLI's predict)
  export      checkpoint -> ONNX + TorchScript + preprocessing JSON, parity-checked on real images
  lr_find     learning-rate range test for a config: plot + suggestion (see `lr_find --help`)
  compare     train several configs/variants on one split and budget, rank them (`compare --help`)
  check       scan ROOT for unreadable images, stray files, class mismatches, leaks between splits
"""


def split_command(args: list[str]) -> int:
    """``lit-vision split``: parse arguments and split raw class folders."""
    parser = ArgumentParser(exit_on_error=False, prog="lit-vision split", description=split_dataset.__doc__.split("\n")[0])
    parser.add_function_arguments(split_dataset, skip={"quiet"})
    cfg = parser.parse_args(args)
    split_dataset(**vars(cfg) if isinstance(cfg, dict) else cfg.as_dict())
    return 0


def predict_command(args: list[str]) -> int:
    """``lit-vision predict``: classify folders/files with a self-contained checkpoint.

    It replaces LightningCLI's config-driven ``predict``, which needs the training config and
    data and writes nothing; ``validate``/``test`` remain for config-driven evaluation.
    """
    from lit_vision.predict import run_predict

    parser = ArgumentParser(
        exit_on_error=False,
        prog="lit-vision predict",
        description="Predict every file under folders (any depth) or given files with a checkpoint; "
        "write one CSV row per file (unreadable files flagged with the reason). Files under "
        "FOLDER/CLASS/ with the model's class names are labelled and accuracy is printed.",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) written by fit")
    parser.add_argument("--input", required=True, nargs="+", help="folders and/or image files")
    parser.add_argument("--output", default="predictions.csv", help="CSV to write (never a folder)")
    parser.add_argument("--trust_class", nargs="*", default=[],
                        help="import paths of your own model classes the checkpoint may name (you vouch "
                        "for that code); by default only lit_vision's classes are rebuilt")
    parser.add_argument("--overwrite", type=bool, default=False,
                        help="replace an existing --output (refused otherwise, before predicting)")
    parser.add_argument("--topk", type=int, default=3, help="top classes per row")
    parser.add_argument("--tta", default="none", choices=["none", "hflip", "auto"],
                        help="hflip: average with the mirror image; auto: hflip if trained with hflip")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--image_size", type=int, default=None,
                        help="input side, only for checkpoints that do not record one")
    cfg = parser.parse_args(args)
    run_predict(cfg.ckpt, cfg.input, cfg.output, topk=cfg.topk, tta=cfg.tta, batch_size=cfg.batch_size,
                device=cfg.device, image_size=cfg.image_size, overwrite=cfg.overwrite,
                trust_class=cfg.trust_class)
    return 0


def export_command(args: list[str]) -> int:
    """``lit-vision export``: ONNX/TorchScript files and the preprocessing contract."""
    from lit_vision.export import run_export

    parser = ArgumentParser(exit_on_error=False, prog="lit-vision export", description=run_export.__doc__.split("\n")[0])
    parser.add_function_arguments(run_export, skip={"quiet"})
    cfg = parser.parse_args(args)
    report = run_export(**(vars(cfg) if isinstance(cfg, dict) else cfg.as_dict()))
    return 0 if report.get("parity_ok", True) else 1



def lr_find_command(args: list[str]) -> int:
    """``lit-vision lr_find``: learning-rate range test (see lit_vision.lr_find)."""
    from lit_vision.lr_find import lr_find_main

    return lr_find_main(args)


def compare_command(args: list[str]) -> int:
    """``lit-vision compare``: train and rank several experiments (see lit_vision.compare)."""
    from lit_vision.compare import compare_main

    return compare_main(args)


def check_command(args: list[str]) -> int:
    """``lit-vision check``: scan a split folder; exit 1 when it has errors."""
    parser = ArgumentParser(exit_on_error=False, prog="lit-vision check", description=scan_dataset.__doc__.split("\n")[0])
    parser.add_argument("--data.root", required=True, help="The split folder (train/ val/ [test/]).")
    parser.add_argument("--decode", choices=["full", "verify", "none"], default="full",
                        help="full: decode every pixel (finds truncated files); verify: headers only.")
    parser.add_argument("--size", type=int, default=64, help="Side the full decode resizes to.")
    parser.add_argument("--limit", type=int, default=10, help="Files listed per kind of problem.")
    cfg = parser.parse_args(args)
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise DataError(f"--data.root {root} is not a folder")
    report = scan_dataset(root, decode=cfg.decode, size=cfg.size)
    print(report.describe(cfg.limit))
    return 0 if report.ok else 1


EXTRA_COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "split": split_command,
    "check": check_command,
    "predict": predict_command,
    "export": export_command,
    "lr_find": lr_find_command,
    "compare": compare_command,
}


def build_cli(args: ArgsType, **kwargs) -> LitVisionCLI:
    """A ``LitVisionCLI`` with lit_vision's model/data modes and trainer defaults.

    Args:
        args: Command-line arguments (``None`` reads ``sys.argv``).
        **kwargs: Further ``LightningCLI`` arguments (``run=False``, ``save_config_callback``...).
    """
    return LitVisionCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        args=args,
        **kwargs,
    )


def normalize_option_spelling(argv: list[str]) -> list[str]:
    """Accept ``--group-regex`` for ``--group_regex`` in lit_vision's own subcommands.

    Options are spelled with underscores, as in LightningCLI; the hyphen spelling many tools
    use is an alias. Only the option name changes (``--a-b=x-y`` -> ``--a_b=x-y``).
    """
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    return out


def run_command(args: list[str] | None = None) -> LitVisionCLI | int:
    """Run one command in-process and return what it made; errors propagate as exceptions.

    The API for tests and ``compare`` (which read the trainer and model of a ``fit``);
    :func:`main` is the shell's entry point around it.

    Args:
        args: The command line without the program name, e.g. ``["fit", "--config", F]``;
            ``None`` reads ``sys.argv``.

    Returns:
        The exit code of an extra subcommand, or the ``LitVisionCLI`` of fit/validate/test.

    Raises:
        ConfigError: The command line or a config file does not parse (one line, naming the key).
    """
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            return EXTRA_COMMANDS[argv[0]](normalize_option_spelling(argv[1:]))
        if not argv or argv[0] in ("-h", "--help"):
            print(HELP_EXTRA)
        return build_cli(
            None if args is None else argv,  # None: LightningCLI reads sys.argv itself
            save_config_kwargs={"overwrite": True},
            # Parse errors raise instead of printing the whole usage, so the shell gets one line.
            parser_kwargs={"exit_on_error": False},
        )
    except ArgumentError as err:  # a parse error (exit_on_error=False): one line naming the key
        raise ConfigError(config_error_line(str(err))) from None


def main(args: ArgsType = None) -> int:
    """The command line's entry point: run a command and return its exit code.

    0: success; 1: a check found problems (``check``, ``export``'s parity, ``compare``);
    2: a user error (bad option or config, missing or refused file, unreadable data), printed
    as one ``error:`` line on stderr. Anything else is a bug and keeps its traceback.

    Args:
        args: The command line without the program name; ``None`` reads ``sys.argv``.
    """
    try:
        result = run_command(None if args is None else list(args))
    except SystemExit as exit_:  # --help, --print_config, and argparse errors of subcommands
        code = exit_.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        user_error = _find_user_error(err)
        if user_error is None:
            raise
        print(f"error: {_one_line(user_error)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (the first line of a multi-line one)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _find_user_error(err: BaseException | None) -> BaseException | None:
    """The user's mistake behind an exception, even when jsonargparse wrapped it while instantiating."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def config_error_line(message: str) -> str:
    """jsonargparse's multi-line parse error boiled down to one line naming the key."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys = []
    for line in lines:
        m = re.search(r'Parser key "([^"]+)"', line)
        if m and m.group(1) not in keys:
            keys.append(m.group(1))
    noise = ("Parser key", "Does not validate against any of the Union", "Subtypes:", "Errors:",
             "Given value", "Expected a <class 'NoneType'>", "Problem with given class_path")
    lines = [re.sub(r'^Parser key "[^"]+":\s*', "", line) for line in lines]
    reasons = [re.sub(r"^- ", "", line) for line in lines if line and not any(n in line for n in noise)]
    reason = reasons[0] if reasons else lines[-1] if lines else "invalid configuration"
    unknown = re.search(r"Option '([^']+)' is not accepted", reason)
    key = ".".join(keys)
    if unknown and key:
        return f"--{key}.{unknown.group(1)} is not an option (typo? see --help)"
    return f"--{key}: {reason}" if key else reason
