"""Whether mirroring an image can change its class: the data decides ``hflip: auto``.

Horizontal flips are a free doubling of a photo dataset, and they ruin a dataset whose classes
are told apart by orientation: a mirrored "keep right" sign is "keep left", a mirrored 2 is no
digit at all. The training images say which case a folder is. Each image is reduced to a 16x16
grey thumbnail standardised to zero mean and unit variance (so lighting does not count), and
each class's mean thumbnail is compared with its own mirror image. In photos of cats, dogs or
cracks, poses and orientations vary, so the class mean is left-right symmetric up to sampling
noise; in signs, digits and text it is not. Flips stay off when

* mirroring turns one class into another: the mirrored mean of a clearly asymmetric class is
  nearer another class's mean than its own (GTSRB: "go straight or left" <-> "... or right"), or
* the classes are oriented as a rule: the median class's asymmetry is large (digits, letters).

The asymmetry is the root-mean-square difference between a class mean and its mirror, with the
sampling noise of the mean (``2 sigma^2 / n``) subtracted, in units of the within-class standard
deviation: 0.0 for both classes of cats/dogs and of cracks; a median of 0.32 (max 0.73) on
GTSRB's 43 classes; 1.17 on digits. The threshold, 0.25, sits between them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lit_vision.augment import eval_transforms
from lit_vision.datasets import BatchedImages, ImageDataset

THUMBNAIL = 16
ASYMMETRY_THRESHOLD = 0.25
PER_CLASS = 200  # images per class looked at (evenly spaced)


@dataclass(frozen=True)
class MirrorVerdict:
    """Whether horizontal flips keep the classes, and why.

    Args:
        hflip: Whether random horizontal flips are safe for these classes.
        reason: One line a user can check (which class mirrors into which).
        asymmetry: Each class's debiased left-right asymmetry (see the module docstring).
    """

    hflip: bool
    reason: str
    asymmetry: list[float]


def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """``(N, 16, 16)`` grey thumbnails of ``(N, 3, H, W)`` images, each standardised.

    Args:
        images: uint8 or float images, channels first.
    """
    grey = images.float().mean(dim=1, keepdim=True)
    small = F.adaptive_avg_pool2d(grey, THUMBNAIL).squeeze(1)
    mean = small.mean(dim=(1, 2), keepdim=True)
    std = small.std(dim=(1, 2), keepdim=True)
    return (small - mean) / (std + 1e-3)


def mirror_verdict(
    thumbs_by_class: Sequence[torch.Tensor], class_names: Sequence[str]
) -> MirrorVerdict:
    """Decide whether mirroring keeps the classes, from each class's thumbnails.

    Args:
        thumbs_by_class: Per class, ``(n_c, 16, 16)`` standardised thumbnails (``n_c >= 2``).
        class_names: The class names, for the reason.
    """
    used = [i for i, t in enumerate(thumbs_by_class) if len(t) >= 2]
    if len(used) < 1:
        return MirrorVerdict(True, "too few images to tell; flips kept", [])
    means = torch.stack([thumbs_by_class[i].mean(0) for i in used])
    var = torch.stack([thumbs_by_class[i].var(0) for i in used]).mean()
    counts = torch.tensor([len(thumbs_by_class[i]) for i in used], dtype=torch.float32)
    mirrored = means.flip(-1)
    rms2 = ((means - mirrored) ** 2).mean(dim=(1, 2))
    asym = ((rms2 - 2 * var / counts).clamp(min=0) / var).sqrt()
    # Squared distance of each class's mirrored mean to every class mean.
    dist = ((mirrored[:, None] - means[None]) ** 2).mean(dim=(2, 3))
    for k in sorted(range(len(used)), key=lambda k: -float(asym[k])):
        if asym[k] < ASYMMETRY_THRESHOLD:
            break
        others = dist[k].clone()
        others[k] = float("inf")
        j = int(others.argmin())
        if others[j] < dist[k, k]:
            a, b = class_names[used[k]], class_names[used[j]]
            return MirrorVerdict(
                False, f"a mirrored {a!r} looks like {b!r}", [float(v) for v in asym]
            )
    median = float(asym.median())
    if median >= ASYMMETRY_THRESHOLD:
        return MirrorVerdict(
            False,
            f"the classes are oriented (median left-right asymmetry {median:.2f})",
            [float(v) for v in asym],
        )
    return MirrorVerdict(
        True,
        f"the classes look left-right symmetric (median asymmetry {median:.2f})",
        [float(v) for v in asym],
    )


def decide_hflip(
    images: Callable[[Sequence[int]], torch.Tensor],
    targets: Sequence[int],
    class_names: Sequence[str],
    per_class: int = PER_CLASS,
    batch_size: int = 256,
) -> MirrorVerdict:
    """Whether random horizontal flips keep these training images' classes.

    Args:
        images: Gathers ``(N, 3, H, W)`` images by dataset index.
        targets: Every training image's class index.
        class_names: The class names (index order).
        per_class: Images looked at per class, evenly spaced through the class.
        batch_size: Images gathered at once.
    """
    by_class: list[list[int]] = [[] for _ in class_names]
    for i, t in enumerate(targets):
        by_class[t].append(i)
    thumbs = []
    for idx in by_class:
        step = max(1, len(idx) // per_class)
        chosen = idx[::step][:per_class]
        parts = [
            thumbnails(images(chosen[s : s + batch_size]))
            for s in range(0, len(chosen), batch_size)
        ]
        thumbs.append(torch.cat(parts) if parts else torch.empty(0, THUMBNAIL, THUMBNAIL))
    return mirror_verdict(thumbs, class_names)


def hflip_verdict(train: ImageDataset, class_names: Sequence[str]) -> MirrorVerdict:
    """:func:`decide_hflip` on a training dataset's images as decoded, without augmentation.

    Args:
        train: The training dataset (its decoded cache is used when it has one).
        class_names: The class names (index order).
    """
    plain = ImageDataset(
        train.samples, train.image_size, eval_transforms(), train.cache, train.max_megapixels
    )
    batches = BatchedImages(plain)
    return decide_hflip(lambda idx: batches.__getitems__(idx)[0], plain.targets, class_names)
