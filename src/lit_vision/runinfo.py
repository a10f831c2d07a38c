"""What the run report records besides metrics: machine, dataset, run layout, model, checkpoints."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.model_summary import ModelSummary
from PIL import Image

from lit_vision.folders import list_samples

try:
    import psutil
except ImportError:  # psutil is a dependency, but the report must never fail a run
    psutil = None

PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "albumentations",
    "numpy",
    "timm",
    "scikit-learn",
    "tensorboard",
    "matplotlib",
    "pillow",
    "jsonargparse",
    "lit_vision",
)


def now() -> str:
    """The local time with its UTC offset, to the second (ISO 8601)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# The pinned environment (scripts/lock.sh) beside the package's source tree.
LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"


def lock_info(path: Path = LOCK_FILE) -> dict[str, Any] | None:
    """The lock file's SHA-256 and whether the running environment matches its pins.

    ``None`` when the package runs without its source tree (no lock file to compare with).
    """
    if not path.is_file():
        return None
    text = path.read_bytes()
    pins = {}
    for line in text.decode().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name.strip()] = version.strip()
    differ = sorted(
        f"{n} {v} (locked) vs {_version(n)}" for n, v in pins.items() if _version(n) != v
    )
    return {
        "file": path.name,
        "sha256": hashlib.sha256(text).hexdigest(),
        "matches": not differ,
        "differences": differ[:10],
    }


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info() -> dict[str, Any]:
    """Python, package versions, CUDA and devices, CPU and memory of this machine."""
    physical = psutil.cpu_count(logical=False) if psutil else None
    memory_gb = round(psutil.virtual_memory().total / 1024**3, 1) if psutil else None
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "cpu": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": physical,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": memory_gb,
        "lock": lock_info(),
    }


def image_size_stats(paths: Sequence[str], max_files: int = 300) -> dict[str, Any] | None:
    """Width/height range and most common size of up to ``max_files`` evenly spaced images.

    Args:
        paths: Image files.
        max_files: At most this many are opened (headers only).

    Returns:
        ``None`` when no file could be read.
    """
    if not paths or max_files <= 0:
        return None
    step = max(1, len(paths) // max_files)
    sizes = []
    for p in paths[::step][:max_files]:
        try:
            with Image.open(p) as im:  # reads the header only
                sizes.append(im.size)
        except OSError:
            continue
    if not sizes:
        return None
    w = np.array([s[0] for s in sizes])
    h = np.array([s[1] for s in sizes])
    values, counts = np.unique(np.stack([w, h], 1), axis=0, return_counts=True)
    common = values[counts.argmax()]
    return {
        "sampled": len(sizes),
        "width": [int(w.min()), int(np.median(w)), int(w.max())],
        "height": [int(h.min()), int(np.median(h)), int(h.max())],
        "most_common": f"{int(common[0])}x{int(common[1])}",
        "most_common_share": round(float(counts.max() / len(sizes)), 3),
    }


def dataset_summary(datamodule: Any, max_size_files: int = 300) -> dict[str, Any]:
    """Classes, images per split and class, raw image sizes and input size of a DataModule.

    Works on any DataModule with ``root`` and ``classes`` laid out as ``ROOT/SPLIT/CLASS/*``;
    others get what can be read from their attributes.

    Args:
        datamodule: The run's DataModule.
        max_size_files: Images per split whose size is read.
    """
    classes = list(getattr(datamodule, "classes", []) or [])
    out: dict[str, Any] = {
        "type": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
        "root": str(getattr(datamodule, "root", "")) or None,
        "num_classes": len(classes) or None,
        "classes": classes,
        "input_size": getattr(datamodule, "image_size", None),
        "batch_size": getattr(datamodule, "batch_size", None),
        "splits": {},
    }
    root = getattr(datamodule, "root", None)
    if root is None or not classes:
        return out
    for split in ("train", "val", "test"):
        split_dir = Path(root) / split
        if not split_dir.is_dir():
            continue
        samples = list_samples(split_dir, classes)
        counts = np.bincount([t for _, t in samples], minlength=len(classes))
        out["splits"][split] = {
            "images": len(samples),
            "per_class": {c: int(n) for c, n in zip(classes, counts, strict=True)},
            "min_per_class": int(counts.min()),
            "max_per_class": int(counts.max()),
            "sizes": image_size_stats([p for p, _ in samples], max_size_files),
        }
    return out


def count_params(module: torch.nn.Module, trainable: bool = False) -> int:
    """Parameters of ``module`` (only those with ``requires_grad`` when ``trainable``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def global_seed() -> int | None:
    """The run's ``seed_everything`` seed (``PL_GLOBAL_SEED``), or ``None``."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None


def version_name(version: int | str | None) -> str:
    """The log folder name of a logger version: ``3`` -> ``version_3``; a string stays as it is.

    A resumed run's logger gets the folder name itself (``version_0``), as Lightning's
    ``TensorBoardLogger.log_dir`` does.
    """
    if version is None:
        return ""
    return version if isinstance(version, str) else f"version_{version}"


def run_info(trainer: L.Trainer, logger: Logger | None, log_dir: str | Path) -> dict[str, Any]:
    """The run's layout: log folder, command, precision, devices, strategy, seed, epochs."""
    return {
        "log_dir": str(log_dir),
        "command": " ".join(sys.argv),
        "name": getattr(logger, "name", None),
        "version": version_name(getattr(logger, "version", None)),
        "precision": str(trainer.precision),
        "accelerator": type(trainer.accelerator).__name__,
        "devices": trainer.num_devices,
        "strategy": type(trainer.strategy).__name__,
        "seed": global_seed(),
        "max_epochs": trainer.max_epochs,
        "epochs_run": trainer.current_epoch,
    }


def model_info(pl_module: L.LightningModule) -> dict[str, Any]:
    """Class, parameter counts, fp32 size, hyperparameters and layer summary of the module."""
    return {
        "class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
        "total_params": count_params(pl_module),
        "trainable_params": count_params(pl_module, trainable=True),
        "size_mb": sum(p.numel() * p.element_size() for p in pl_module.parameters()) / 1024**2,
        "hparams": {k: v for k, v in dict(pl_module.hparams).items() if k != "class_names"},
        "summary": str(ModelSummary(pl_module, max_depth=1)),
    }


def checkpoint_info(ck: ModelCheckpoint, known: dict[str, Any]) -> dict[str, Any]:
    """Monitor, best/last paths and best score of the checkpoint callback.

    Loading a checkpoint for test restores the callback's state as it was when that file was
    written (no last.ckpt yet), so paths already in ``known`` are kept, not blanked.
    """
    score = float(ck.best_model_score) if ck.best_model_score is not None else None
    current = {
        "monitor": ck.monitor,
        "best": ck.best_model_path or None,
        "best_score": score,
        "last": ck.last_model_path or None,
    }
    return {k: v if v is not None else known.get(k) for k, v in current.items()}


def track_setup_time(datamodule: L.LightningDataModule) -> None:
    """Time every ``datamodule.setup(stage)`` call into ``datamodule.setup_seconds[stage]``.

    Lightning calls ``DataModule.setup`` before any callback hook, so the timing has to wrap
    the method itself; the CLI does this for every DataModule it builds. Idempotent.

    Args:
        datamodule: The DataModule whose ``setup`` gets wrapped.
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
