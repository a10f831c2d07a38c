"""Checkpoint files as untrusted data: load without unpickling, allow-listed class paths only.

A ``.ckpt`` someone shares is data, never code. Two ways a checkpoint could run code, both
closed here:

- pickle: ``torch.load(weights_only=False)`` runs whatever ``__reduce__`` a pickled object
  names. Every load here uses ``weights_only=True`` (tensors, containers, plain values).
- class paths in plain data: ``hyper_parameters`` may name classes (``_class_path``,
  ``class_path``, ``_instantiator``, a dotted string for a callable such as ``optimizer``)
  that Lightning's ``load_from_checkpoint`` or LightningCLI's ``--ckpt_path`` merge would
  import and call. Every such name must be on :func:`allowed_classes`' list (this package's
  classes, ``torch.optim.*``, ``torch.optim.lr_scheduler.*``); anything else refuses the whole
  checkpoint with one line naming the key. Models are rebuilt by calling the allow-listed
  class with the checkpoint's plain keyword arguments, never through a path the file names.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.optim import lr_scheduler

import lit_vision
from lit_vision import schedulers
from lit_vision.errors import CheckpointError

# Keys whose string values name something to import: jsonargparse's and Lightning's.
CLASS_KEYS = frozenset({"class_path", "_class_path", "_instantiator"})
# Keyword arguments typed as callables: jsonargparse imports a dotted string given for them,
# and a string may also name a config file to read. The trusted config provides them.
CALLABLE_KEYS = frozenset({"optimizer", "scheduler"})
# Lightning's own instantiator, which LightningCLI records; it only builds allow-listed classes.
LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
# albumentations transforms an eval pipeline in a checkpoint may name: deterministic pixel
# operations that read no files (A.from_dict only builds registered classes, but some of
# those read reference images from paths).
SAFE_EVAL_TRANSFORMS = frozenset(
    {
        "Compose",
        "Resize",
        "CenterCrop",
        "PadIfNeeded",
        "LongestMaxSize",
        "SmallestMaxSize",
        "CLAHE",
        "Equalize",
        "ToGray",
        "Normalize",
    }
)


def _lit_vision_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    objects = [getattr(lit_vision, name) for name in lit_vision.__all__ if name != "__version__"]
    objects += [obj for obj in vars(schedulers).values() if isinstance(obj, type)]
    for obj in objects:
        if isinstance(obj, type) and obj.__module__.startswith("lit_vision"):
            found[f"lit_vision.{obj.__name__}"] = obj
            found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    # Where classes lived before they moved: older checkpoints name these paths.
    found["lit_vision.models.TransferClassifier"] = found["lit_vision.TransferClassifier"]
    return found


def _torch_classes(module: Any, base: tuple[type, ...]) -> dict[str, type]:
    found: dict[str, type] = {}
    for name, obj in vars(module).items():
        if isinstance(obj, type) and issubclass(obj, base) and not name.startswith("_"):
            found[f"{module.__name__}.{name}"] = obj
            found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def trusted_class(path: str) -> type:
    """Import a class the *user* names (``--trust_class``, the model of a config): trusted code.

    Raises:
        CheckpointError: The path does not import or is not a class.
    """
    module, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise CheckpointError(f"--trust_class {path}: cannot import it ({err})") from None
    if not isinstance(obj, type):
        raise CheckpointError(f"--trust_class {path} is not a class")
    return obj


def allowed_classes(trust: Sequence[str] = ()) -> dict[str, type]:
    """Every class path a checkpoint may name, mapped to the class (nothing is imported by name).

    This package's public classes and schedulers, ``torch.optim.*`` optimizers and
    ``torch.optim.lr_scheduler.*`` schedulers, each under its short and its defining path;
    plus the classes the user trusts explicitly (``trust``: import paths from the command
    line or the config, never from the checkpoint).
    """
    schedulers = (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)
    return {
        **_torch_classes(torch.optim, (torch.optim.Optimizer,)),
        **_torch_classes(lr_scheduler, schedulers),
        **_lit_vision_classes(),
        **{path: trusted_class(path) for path in trust},
    }


def _walk(obj: Any, where: str) -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, key, value)`` for every entry of nested dicts and lists."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            path = f"{where}.{key}" if where else str(key)
            yield path, key, value
            yield from _walk(value, path)
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _walk(value, f"{where}[{i}]")


def check_class_paths(data: Any, where: str, source: str | Path, trust: Sequence[str] = ()) -> None:
    """Refuse any class path in ``data`` that is not allow-listed.

    Args:
        data: Plain data from a checkpoint (nested dicts and lists).
        where: Key path of ``data`` in the checkpoint, for the message.
        source: The checkpoint file, for the message.
        trust: Further class paths the user trusts.

    Raises:
        CheckpointError: One line naming the file, the key and the class path.
    """
    allowed = allowed_classes(trust)
    for path, key, value in _walk(data, where):
        if key == "_instantiator":
            ok = value == LIGHTNING_INSTANTIATOR
        elif key in CLASS_KEYS or (key in CALLABLE_KEYS and isinstance(value, str)):
            ok = isinstance(value, str) and value in allowed
        elif key == "__path__":
            ok = False  # jsonargparse would read another config file from it
        else:
            continue
        if not ok:
            raise CheckpointError(
                f"checkpoint {source}: {path} = {value!r} is not an allowed class "
                "(lit_vision classes, torch.optim.*, torch.optim.lr_scheduler.*; "
                "--trust_class adds your own); refusing to load it"
            )


def check_eval_transform(spec: Any, source: str | Path) -> None:
    """Refuse a recorded eval pipeline naming transforms outside :data:`SAFE_EVAL_TRANSFORMS`."""
    for path, key, value in _walk(spec, "lit_vision.eval_transform"):
        if (
            key == "__class_fullname__"
            and str(value).rpartition(".")[2] not in SAFE_EVAL_TRANSFORMS
        ):
            raise CheckpointError(
                f"checkpoint {source}: {path} = {value!r} is not an allowed eval transform; refusing to load it"
            )


def read_checkpoint(path: str | Path, trust: Sequence[str] = ()) -> dict[str, Any]:
    """Load a checkpoint as plain data on the CPU and check every class path it names.

    Args:
        path: The checkpoint file.
        trust: Class paths the user trusts besides the allow-list (``--trust_class``).

    Raises:
        CheckpointError: Missing, truncated, pickled objects, not a Lightning checkpoint, or a
            class path outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), "")
        raise CheckpointError(
            f"checkpoint {path} holds pickled objects, which are never loaded (they can run code)"
            + (f": {detail.strip()}" if detail else "")
        ) from None
    except Exception as err:  # noqa: BLE001 - whatever torch's reader trips on, it is not a checkpoint
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or not a checkpoint): {reason}"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        check_class_paths(ckpt.get(key) or {}, key, path, trust)
    meta = ckpt.get("lit_vision") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the lit_vision entry is not a dict")
    if meta.get("model_class") is not None and meta["model_class"] not in allowed_classes(trust):
        raise CheckpointError(
            f"checkpoint {path}: lit_vision.model_class = {meta['model_class']!r} is not an allowed class "
            "(lit_vision classes; --trust_class adds your own); refusing to load it"
        )
    if meta.get("eval_transform") is not None:
        check_eval_transform(meta["eval_transform"], path)
    return ckpt


def model_class(
    ckpt: dict[str, Any], path: str | Path, base: type, trust: Sequence[str] = ()
) -> type:
    """The allow-listed LightningModule class a checkpoint was saved from.

    Args:
        ckpt: A checkpoint from :func:`read_checkpoint`.
        path: Its file, for messages.
        base: The class it must derive from (``ImageClassifier``).
        trust: Class paths the user trusts besides the allow-list.

    Raises:
        CheckpointError: No class recorded, or not a subclass of ``base``.
    """
    meta = ckpt.get("lit_vision") or {}
    hparams = ckpt.get("hyper_parameters") or {}
    class_path = meta.get("model_class") or hparams.get("_class_path")
    if not class_path:
        raise CheckpointError(f"{path} records no model class (not saved by a lit_vision model?)")
    cls = allowed_classes(trust).get(class_path)
    if cls is None or not issubclass(cls, base):
        raise CheckpointError(
            f"checkpoint {path}: model class {class_path!r} is not a lit_vision classifier"
        )
    return cls


def model_kwargs(cls: type, hparams: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The constructor arguments to rebuild ``cls`` from saved hyperparameters.

    Only plain values of named parameters of ``cls.__init__`` are passed; the callables
    (optimizer, scheduler) are left at their defaults, since inference never uses them.
    """
    params = inspect.signature(cls.__init__).parameters
    kwargs = {
        k: v
        for k, v in hparams.items()
        if k in params and not k.startswith("_") and k not in CALLABLE_KEYS
    }
    kwargs.update({k: v for k, v in overrides.items() if k in params})
    return kwargs


def sanitize_for_cli(
    hparams: dict[str, Any], source: str | Path, trust: Sequence[str] = ()
) -> dict[str, Any]:
    """Model hyperparameters safe for LightningCLI to merge into the config of ``--ckpt_path``.

    The class paths are checked; Lightning's instantiator and the callables (optimizer,
    scheduler) are dropped, so the trusted config decides them. ``trust``: the model class
    path the config names (the config is code the user chose to run).
    """
    check_class_paths(hparams, "hyper_parameters", source, trust)
    return {k: v for k, v in hparams.items() if k != "_instantiator" and k not in CALLABLE_KEYS}
