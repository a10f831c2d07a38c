"""Grad-CAM heatmaps (captum's ``LayerGradCam``) on the last convolutional stage, and overlays.

Grad-CAM (Selvaraju et al. 2017) weights the last convolutional feature maps by the gradient
of a class score and keeps the positive part: where the evidence for that class is. The layer
is chosen from the network, never configured: for ``SimpleCNN`` the activation of its last
convolution (before the last pooling, twice the resolution of the block's output); for a timm
backbone (``TransferNet``) its final feature map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lit_vision.errors import LitVisionError
from lit_vision.networks import SimpleCNN, TransferNet


class ExplainError(LitVisionError):
    """A model Grad-CAM cannot explain (no convolutional feature map)."""


def target_layer(model: nn.Module) -> nn.Module:
    """The layer whose activations Grad-CAM weighs: the network's last convolutional stage.

    Args:
        model: An ``ImageClassifier`` (its ``net``) or the network itself.

    Raises:
        ExplainError: A network without a convolutional feature map.
    """
    net = getattr(model, "net", model)
    if isinstance(net, SimpleCNN):
        layers = list(net.features)
        convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
        if convs:
            end = convs[-1] + 1
            while end < len(layers) and not isinstance(layers[end], nn.MaxPool2d | nn.Dropout2d):
                end += 1
            return layers[end - 1]  # the last conv's BatchNorm/ReLU output, before pooling
    if isinstance(net, TransferNet) and not hasattr(net.features, "num_prefix_tokens"):
        return net.features  # timm CNN without pooling: forward gives the last feature map
    raise ExplainError(
        f"Grad-CAM needs a convolutional feature map; {type(net).__name__} "
        f"({getattr(net, 'arch', '')}) has none lit_vision can choose"
    )


def heatmaps(
    model: nn.Module, images: torch.Tensor, classes: Sequence[int] | torch.Tensor
) -> np.ndarray:
    """Grad-CAM of ``classes`` for uint8 NCHW ``images``, upsampled to the image, in [0, 1].

    Runs in float32 with gradients (also inside a validation loop's inference mode); the
    model's parameters get no ``.grad`` (captum differentiates with ``torch.autograd.grad``).

    Args:
        model: The classifier, in eval mode.
        images: ``(N, 3, H, W)`` uint8 RGB (what the model takes).
        classes: The class to explain per image (usually the predicted one).

    Returns:
        ``(N, H, W)`` float32, each map scaled so its peak is 1 (all zeros: no evidence).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    layer = target_layer(model)
    target = [int(c) for c in classes]
    with torch.inference_mode(False), torch.enable_grad():
        # The model takes float 0-1 images as well as uint8: a fresh tensor outside inference mode.
        x = images.detach().clone().float().div(255.0)
        cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    cam = cam.detach().float().cpu()[:, 0].clamp_min(0)
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).numpy().astype(np.float32)


def overlay(
    image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, min_side: int = 224
) -> np.ndarray:
    """The image with the heatmap blended on top (jet colormap), enlarged to ``min_side``.

    Args:
        image: ``(H, W, 3)`` or ``(3, H, W)`` uint8 RGB.
        cam: ``(H, W)`` heatmap in [0, 1].
        alpha: Heatmap opacity.
        min_side: Smallest side of the result (small inputs are enlarged, nearest neighbour).

    Returns:
        ``(H', W', 3)`` uint8 RGB.
    """
    from matplotlib import colormaps
    from PIL import Image

    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255.0
    blended = ((1 - alpha) * img.astype(np.float32) + alpha * heat).clip(0, 255).astype(np.uint8)
    h, w = blended.shape[:2]
    scale = max(1, -(-min_side // max(1, min(h, w))))
    if scale > 1:
        blended = np.asarray(
            Image.fromarray(blended).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        )
    return blended
