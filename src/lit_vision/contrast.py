"""In-graph contrast normalisation of RGB batches: global equalisation, local contrast, CLAHE.

Each function maps a float RGB batch (NCHW, 0-1) to a batch of the same shape with plain
tensor operations, so a model that runs one inside ``forward`` still exports to ONNX taking raw
pixels (``ImageClassifier``'s ``input_norm``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# sRGB (D65) <-> CIE XYZ, and the D65 white point: the constants of OpenCV's 8-bit Lab conversion.
_RGB2XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_XYZ2RGB = (
    (3.240479, -1.53715, -0.498535),
    (-0.969256, 1.875991, 0.041556),
    (0.055648, -0.204043, 1.057311),
)
_WHITE = (0.950456, 1.0, 1.088754)
_EPS, _KAPPA = 0.008856, 7.787


def _mix(x: torch.Tensor, m: tuple[tuple[float, ...], ...]) -> torch.Tensor:
    """``m @ x`` over the channel axis, as elementwise sums (exact in fp32 under autocast)."""
    return torch.cat([sum(x[:, j : j + 1] * m[i][j] for j in range(3)) for i in range(3)], dim=1)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """Convert sRGB (0-1) to CIE Lab: L in 0-100, a and b around 0 (OpenCV's formulas).

    Args:
        x: Float RGB batch, NCHW, 0-1.
    """
    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055).clamp_min(0).pow(2.4), x / 12.92)
    xyz = _mix(lin, _RGB2XYZ) / torch.tensor(_WHITE, dtype=x.dtype, device=x.device).view(
        1, 3, 1, 1
    )
    f = torch.where(xyz > _EPS, xyz.clamp_min(1e-12).pow(1 / 3), _KAPPA * xyz + 16 / 116)
    lum = 116 * f[:, 1:2] - 16
    return torch.cat([lum, 500 * (f[:, 0:1] - f[:, 1:2]), 200 * (f[:, 1:2] - f[:, 2:3])], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Convert CIE Lab back to sRGB, clamped to 0-1 (the inverse of :func:`rgb_to_lab`).

    Args:
        lab: Lab batch, NCHW (L 0-100).
    """
    fy = (lab[:, 0:1] + 16) / 116
    f = torch.cat([fy + lab[:, 1:2] / 500, fy, fy - lab[:, 2:3] / 200], dim=1)
    xyz = torch.where(f > 6 / 29, f.pow(3), (f - 16 / 116) / _KAPPA)
    xyz = xyz * torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
    lin = _mix(xyz, _XYZ2RGB).clamp(0, 1)
    rgb = torch.where(
        lin > 0.0031308, 1.055 * lin.clamp_min(1e-12).pow(1 / 2.4) - 0.055, 12.92 * lin
    )
    return rgb.clamp(0, 1)


def clahe_luts(levels: torch.Tensor, grid: int, clip: float) -> torch.Tensor:
    """Each tile's contrast-limited equalisation table, continuous in the pixel levels.

    OpenCV's CLAHE tables (histogram per tile, bins clipped at ``clip`` x the mean count, the
    excess spread over all bins, cumulative sum), with three changes that make the table a
    continuous function of the input, so a last-bit difference between two runtimes (PyTorch,
    onnxruntime) moves the output by about as much, never by a whole level: a pixel between two
    levels counts fractionally in both bins; the excess is spread evenly, not in whole counts;
    and the table is not rounded. On integer levels the histogram is OpenCV's exactly.

    Args:
        levels: Float batch, ``(N, H, W)`` in 0-255, ``H`` and ``W`` multiples of ``grid``.
        grid: Tiles per side.
        clip: OpenCV's ``clipLimit``: a bin holds at most ``clip`` x the tile's mean count.

    Returns:
        ``(N, grid * grid, 256)``: the new value of each level in each tile, 0-255.
    """
    n, h, w = levels.shape
    th, tw = h // grid, w // grid
    area = th * tw
    tiles = levels.reshape(n, grid, th, grid, tw).permute(0, 1, 3, 2, 4).reshape(n, -1, area)
    low = tiles.floor().clamp(0, 255)
    frac = tiles - low
    hist = torch.zeros(n, grid * grid, 257, dtype=levels.dtype, device=levels.device)
    hist = hist.scatter_add(2, low.long(), 1 - frac).scatter_add(2, low.long() + 1, frac)
    hist = hist[..., :256]
    limit = float(max(int(clip * area / 256), 1))
    excess = (hist - limit).clamp_min(0).sum(-1, keepdim=True)
    values = torch.arange(1, 257, dtype=levels.dtype, device=levels.device)
    cdf = hist.clamp(max=limit).cumsum(-1) + excess / 256 * values
    return (cdf * (255 / area)).clamp(0, 255)


def clahe_channel(channel: torch.Tensor, grid: int = 4, clip: float = 2.0) -> torch.Tensor:
    """CLAHE of one channel, as ``cv2.createCLAHE(clip, (grid, grid)).apply``, but continuous.

    The image is padded (mirrored) to a multiple of ``grid``; each pixel's new value
    interpolates bilinearly between the tables of the four nearest tile centres, and linearly
    between the two levels around its own (:func:`clahe_luts` says how it departs from OpenCV).

    Args:
        channel: Float batch, ``(N, H, W)`` in 0-255 (levels need not be whole).
        grid: Tiles per side.
        clip: OpenCV's ``clipLimit``.

    Returns:
        The equalised batch, same shape, float in 0-255 (not rounded).
    """
    n, h, w = channel.shape
    th, tw = math.ceil(h / grid), math.ceil(w / grid)
    padded = channel
    if (th * grid, tw * grid) != (h, w):
        pad = (0, tw * grid - w, 0, th * grid - h)
        padded = F.pad(channel.unsqueeze(1), pad, mode="reflect").squeeze(1)
    luts = clahe_luts(padded, grid, clip)  # (N, T, 256)

    def neighbours(size: int, tile: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.arange(size, dtype=channel.dtype, device=channel.device) / tile - 0.5
        first = torch.floor(pos)
        weight = pos - first
        return first.clamp(0, grid - 1).long(), (first + 1).clamp(0, grid - 1).long(), weight

    y1, y2, wy = neighbours(h, th)
    x1, x2, wx = neighbours(w, tw)
    # Each table beside itself shifted by one level: one gather reads both ends of a pixel's
    # level interval, and the value in between is linear (continuous in the pixel's level).
    pairs = torch.stack([luts, torch.cat([luts[..., 1:], luts[..., -1:]], -1)], -1)
    flat = pairs.reshape(n, -1, 2)
    low = channel.reshape(n, h * w).floor().clamp(0, 255)
    frac = channel.reshape(n, h * w) - low

    def lookup(ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
        tile = (ty.view(h, 1) * grid + tx.view(1, w)).reshape(1, h * w)
        ends = flat.gather(1, (tile * 256 + low.long()).unsqueeze(-1).expand(n, h * w, 2))
        return (ends[..., 0] + frac * (ends[..., 1] - ends[..., 0])).reshape(n, h, w)

    top = lookup(y1, x1) * (1 - wx) + lookup(y1, x2) * wx
    bottom = lookup(y2, x1) * (1 - wx) + lookup(y2, x2) * wx
    return top * (1 - wy.view(h, 1)) + bottom * wy.view(h, 1)


def clahe(x: torch.Tensor, grid: int = 4, clip: float = 2.0) -> torch.Tensor:
    """CLAHE of each image's lightness (Lab's L), colour kept: OpenCV's recipe, in the graph.

    As ``cv2.cvtColor`` to Lab, ``cv2.createCLAHE(clip, (grid, grid)).apply`` on the L channel,
    and back; ``tests/test_contrast.py`` checks it against OpenCV. Unlike OpenCV, nothing is
    rounded to 8-bit levels, so the output is continuous in the input (see :func:`clahe_luts`).

    Args:
        x: Float RGB batch, NCHW, 0-1.
        grid: Tiles per side.
        clip: OpenCV's ``clipLimit``.

    Returns:
        The batch with its lightness equalised, same shape, 0-1.
    """
    lab = rgb_to_lab(x)
    lightness = (lab[:, 0] * 2.55).clamp(0, 255)
    equalised = clahe_channel(lightness, grid, clip) / 2.55
    return lab_to_rgb(torch.cat([equalised.unsqueeze(1), lab[:, 1:]], dim=1))


def equalize_luminance(x: torch.Tensor) -> torch.Tensor:
    """Global histogram equalisation of each image's luminance, as a shift of all channels.

    Each pixel's luminance becomes its rank among the image's pixels (0-1); its RGB values move
    by the same amount, clamped to 0-1, so hue survives. Sorting is exportable (ONNX TopK).

    Args:
        x: Float RGB batch, NCHW, 0-1.

    Returns:
        The equalised batch, same shape.
    """
    n, _, h, w = x.shape
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    y = (x * weights.view(1, 3, 1, 1)).sum(1).reshape(n, h * w)
    ranks = y.argsort(dim=1).argsort(dim=1).to(x.dtype) / max(h * w - 1, 1)
    return (x + (ranks - y).view(n, 1, h, w)).clamp(0, 1)


def local_contrast(x: torch.Tensor, sigma_fraction: float = 0.125) -> torch.Tensor:
    """Local contrast normalisation: each pixel against its Gaussian neighbourhood.

    Subtracts the neighbourhood's mean (over the three channels together, so colour differences
    survive) and divides by its standard deviation, floored at the image's mean local standard
    deviation so flat regions are not blown up (Jarrett et al. 2009, as in Sermanet & LeCun's
    GTSRB network). Separable Gaussian convolutions, normalised at the borders: exportable.

    Args:
        x: Float RGB batch, NCHW, 0-1.
        sigma_fraction: The Gaussian's sigma as a fraction of the shorter side.

    Returns:
        The normalised batch, same shape.
    """
    h, w = x.shape[-2:]
    sigma = max(sigma_fraction * min(h, w), 0.5)
    radius = max(1, min(int(2 * sigma), (min(h, w) - 1) // 2))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()

    def blur(z: torch.Tensor) -> torch.Tensor:  # (N, 1, H, W), zero padding renormalised below
        z = F.conv2d(z, k.view(1, 1, 1, -1), padding=(0, radius))
        return F.conv2d(z, k.view(1, 1, -1, 1), padding=(radius, 0))

    coverage = blur(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device))
    centred = x - blur(x.mean(1, keepdim=True)) / coverage
    local_std = (blur(centred.pow(2).mean(1, keepdim=True)) / coverage).clamp_min(1e-8).sqrt()
    floor = local_std.mean(dim=(2, 3), keepdim=True).clamp_min(1.0 / 255)
    return centred / torch.maximum(local_std, floor)


# ``input_norm`` names of the steps above (``ImageClassifier.normalize`` standardises after each).
CONTRAST_STEPS = {"equalize": equalize_luminance, "local": local_contrast, "clahe": clahe}
