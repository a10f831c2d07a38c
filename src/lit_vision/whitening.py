"""Patch whitening: a first convolution computed from the training images, not learned.

The CIFAR-10 speedruns (Keller Jordan's airbench, after tysam-code's hlb-CIFAR10) start their
networks with a frozen convolution whose filters are the eigenvectors of the covariance of the
training images' patches, each scaled by the inverse square root of its eigenvalue, used with
both signs so the ReLU after it keeps both halves. The first layer then sees decorrelated,
equal-variance inputs from the first step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_whitening_filters(
    images: torch.Tensor, out_channels: int, kernel: int = 3, eps: float = 5e-4
) -> torch.Tensor:
    """Filters that whiten the ``kernel`` x ``kernel`` patches of ``images``.

    Args:
        images: Normalised float batch (NCHW): what the convolution will see. Patches are
            taken at a stride that keeps about 1,000 of them an image.
        out_channels: Filters wanted, even: the ``out_channels / 2`` patch directions of most
            variance, each with both signs (at most twice the patch size).
        kernel: Filter side.
        eps: Added to the eigenvalues (relative to the largest) so that near-empty directions
            are not blown up.

    Returns:
        ``(out_channels, C, kernel, kernel)`` convolution weights.

    Raises:
        ValueError: ``out_channels`` is odd or above twice the patch size.
    """
    c = images.shape[1]
    size = c * kernel * kernel
    if out_channels % 2 or out_channels > 2 * size:
        raise ValueError(f"out_channels must be even and at most {2 * size}, not {out_channels}")
    stride = max(1, min(images.shape[-2:]) // 32)  # about 1,000 patches an image at most
    patches = F.unfold(images.double(), kernel, stride=stride).transpose(1, 2).reshape(-1, size)
    patches = patches - patches.mean(0)
    cov = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    top = eigenvalues.flip(0)[: out_channels // 2]
    vectors = eigenvectors.flip(1)[:, : out_channels // 2]
    scaled = vectors / (top + eps * eigenvalues[-1]).clamp_min(1e-12).sqrt()
    filters = torch.cat([scaled, -scaled], dim=1).T  # (out_channels, size)
    return filters.reshape(out_channels, c, kernel, kernel).to(images.dtype)
