"""Training augmentation: one settings object, built into albumentations or a batched GPU op.

:class:`AugmentSettings` is the one declaration of the built-in augmentations (flips, a random
affine, colour jitter). It builds both backends: :meth:`AugmentSettings.albumentations`, a
per-sample pipeline run in the loader, and :class:`BatchAugment`, the same draws vectorised
over a batch on the device. ``tests/test_augment.py`` checks that the two agree.
A config may also give any albumentations pipeline instead (:func:`load_pipeline`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

from lit_vision.errors import DataError


@dataclass(frozen=True)
class AugmentSettings:
    """The built-in training augmentations; both backends draw from exactly these ranges.

    Each image gets, in this order: a horizontal and a vertical flip (each with probability
    0.5, when on); with probability 0.9 a random affine about the centre (rotation, isotropic
    zoom, shift on each axis, horizontal shear; black fill); with probability 0.8 brightness,
    contrast and saturation factors drawn from ``1 ± color_jitter``.

    Args:
        hflip: Random horizontal flips. Off by default: they change the meaning of many
            traffic signs (left/right turn) and of text.
        vflip: Random vertical flips (aerial images, micrographs, cracks).
        rotate: Maximum rotation in degrees (0 disables).
        scale: Zoom range ``(low, high)``; the same zoom on both axes.
        translate: Maximum shift on each axis, as a fraction of the image side.
        shear: Maximum horizontal shear in degrees.
        color_jitter: Strength of brightness/contrast/saturation jitter (0 disables).
    """

    FLIP_P: ClassVar[float] = 0.5
    AFFINE_P: ClassVar[float] = 0.9
    JITTER_P: ClassVar[float] = 0.8

    hflip: bool = False
    vflip: bool = False
    rotate: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.1
    shear: float = 0.0
    color_jitter: float = 0.2

    def __post_init__(self) -> None:
        """Normalise ``scale`` to a tuple of floats and refuse settings no backend can draw.

        Raises:
            ValueError: A setting out of range; the message starts with its name.
        """
        scale = tuple(float(s) for s in self.scale)
        object.__setattr__(self, "scale", scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(
                f"scale must be [low, high] with 0 < low <= high, not {list(self.scale)}"
            )
        for name in ("rotate", "translate", "shear", "color_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.color_jitter >= 1:
            raise ValueError(f"color_jitter must be < 1 (factors 1 ± it), not {self.color_jitter}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AugmentSettings:
        """The settings among ``values`` (e.g. a DataModule's hparams); other keys are ignored.

        Args:
            values: A mapping holding some or all of the fields.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def affine(self) -> bool:
        """Whether the random affine does anything."""
        return bool(self.rotate or self.translate or self.shear or self.scale != (1.0, 1.0))

    def albumentations(self) -> A.Compose:
        """The per-sample pipeline: uint8 HWC images in and out, already at the model's size.

        Normalisation happens on the batch inside the model, which keeps per-sample work
        small and the exported model self-contained.
        """
        ops: list[A.BasicTransform] = []
        if self.hflip:
            ops.append(A.HorizontalFlip(p=self.FLIP_P))
        if self.vflip:
            ops.append(A.VerticalFlip(p=self.FLIP_P))
        if self.affine:
            ops.append(
                A.Affine(
                    scale=self.scale,
                    keep_ratio=True,  # one zoom for both axes, as BatchAugment
                    translate_percent=(-self.translate, self.translate),
                    rotate=(-self.rotate, self.rotate),
                    shear={"x": (-self.shear, self.shear), "y": (0.0, 0.0)},
                    border_mode=0,  # cv2.BORDER_CONSTANT: black fill, no mirrored artefacts
                    p=self.AFFINE_P,
                )
            )
        if self.color_jitter:
            cj = self.color_jitter
            ops.append(
                A.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=0.0, p=self.JITTER_P)
            )
        return A.Compose(ops)

    def batch_augment(self) -> BatchAugment:
        """The same augmentations vectorised over a batch (:class:`BatchAugment`)."""
        return BatchAugment(self)


def train_transforms(**settings: Any) -> A.Compose:
    """The albumentations training pipeline of :class:`AugmentSettings` ``(**settings)``.

    Args:
        **settings: Any :class:`AugmentSettings` field.
    """
    return AugmentSettings(**settings).albumentations()


def eval_transforms() -> A.Compose:
    """The evaluation pipeline: the identity, since decoding already resized the image."""
    return A.Compose([])


def apply(transform: A.Compose | None, image: np.ndarray) -> np.ndarray:
    """Run an albumentations pipeline on one uint8 HWC image (a no-op for empty pipelines).

    Args:
        transform: The pipeline, or ``None``.
        image: ``(H, W, 3)`` uint8.
    """
    if transform is None or not transform.transforms:
        return image
    return transform(image=image)["image"]


def seed_pipeline(pipeline: A.BaseCompose, seed: int) -> None:
    """Fix a pipeline's random draws for one sample, each transform from its own stream.

    albumentations' ``set_random_seed`` hands every transform the same seed, so their draws
    coincide: both flips would happen together, and colour jitter only with the affine.

    Args:
        pipeline: A ``Compose`` (or other composition); nested ones are seeded the same way.
        seed: The sample's seed.
    """
    pipeline.set_random_seed(seed)
    streams = np.random.SeedSequence(seed).spawn(len(pipeline.transforms))
    for transform, stream in zip(pipeline.transforms, streams, strict=True):
        sub = int(stream.generate_state(1)[0])
        if isinstance(transform, A.BaseCompose):
            seed_pipeline(transform, sub)
        else:
            transform.set_random_seed(sub)


class BatchAugment:
    """:class:`AugmentSettings`' augmentations, vectorised over a batch of tensors.

    Every image still gets its own random flip, affine and colour jitter on every epoch; only
    the per-sample Python work is gone (one ``grid_sample`` for the whole batch), so it costs
    little next to the model's step and runs on the GPU after the batch is transferred.

    Args:
        settings: What to draw; ``None`` builds :class:`AugmentSettings` from ``**fields``.
        **fields: :class:`AugmentSettings` fields, when ``settings`` is not given.
    """

    def __init__(self, settings: AugmentSettings | None = None, **fields: Any) -> None:
        if settings is not None and fields:
            raise TypeError("BatchAugment takes either settings or its fields, not both")
        self.settings = settings if settings is not None else AugmentSettings(**fields)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Augment ``(N, 3, H, W)`` uint8 (0-255) or float (0-1) images.

        Args:
            images: The batch.

        Returns:
            The augmented batch, float in 0-1.
        """
        # Contiguous NCHW: per-image broadcasts on channels-last strides take a slow
        # non-vectorised path on CPU (measured 10-30x slower).
        images = images.contiguous()
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        s = self.settings
        if s.affine or s.hflip or s.vflip:
            x = self._geometry(x)
        if s.color_jitter:
            x = self._colour(x)
        return x

    def _uniform(self, n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
        return torch.empty(n, device=device).uniform_(lo, hi)

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        """Flips, then the random affine, as one ``grid_sample`` (bilinear, black fill)."""
        s, n, dev = self.settings, x.shape[0], x.device
        # theta maps output to input coordinates in [-1, 1] space (affine_grid convention),
        # so it is the inverse of the forward transform: rotate by -angle, divide by scale.
        if s.affine:
            on = torch.rand(n, device=dev) < s.AFFINE_P
        else:
            on = torch.zeros(n, dtype=torch.bool, device=dev)
        angle = torch.deg2rad(self._uniform(n, -s.rotate, s.rotate, dev)) * on
        zoom = torch.where(on, self._uniform(n, *s.scale, dev), torch.ones(n, device=dev))
        shear = torch.tan(torch.deg2rad(self._uniform(n, -s.shear, s.shear, dev))) * on
        # A shift of t sides is 2t in [-1, 1] coordinates.
        shift = (torch.rand(n, 2, device=dev) * 2 - 1) * (2 * s.translate) * on[:, None]
        cos, sin = torch.cos(angle), torch.sin(angle)
        one, zero = torch.ones_like(shear), torch.zeros_like(shear)
        rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        shear_m = torch.stack([torch.stack([one, shear], 1), torch.stack([zero, one], 1)], 1)
        inv = torch.linalg.inv(rot @ shear_m * zoom[:, None, None])
        flip = torch.ones(n, 2, device=dev)
        for axis, on_axis in ((0, s.hflip), (1, s.vflip)):
            if on_axis:
                flip[:, axis] = torch.where(torch.rand(n, device=dev) < s.FLIP_P, -1.0, 1.0)
        inv = flip[:, :, None] * inv  # mirror the sampled source: a flip, then the affine
        theta = torch.cat([inv, -(inv @ shift[:, :, None])], 2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation factors ``1 ± color_jitter``, clamped to 0-1."""
        s, n, dev = self.settings, x.shape[0], x.device
        cj = s.color_jitter
        on = (torch.rand(n, 1, 1, 1, device=dev) < s.JITTER_P).float()

        def factor() -> torch.Tensor:
            return 1 + torch.empty(n, 1, 1, 1, device=dev).uniform_(-cj, cj) * on

        weights = torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)
        x = (x * factor()).clamp_(0, 1)  # brightness
        mean = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = ((x - mean) * factor() + mean).clamp_(0, 1)  # contrast
        gray = (x * weights).sum(1, keepdim=True)
        return ((x - gray) * factor() + gray).clamp_(0, 1)  # saturation


def _reason(err: Exception) -> str:
    """One line saying why albumentations refused a pipeline (pydantic errors name the argument)."""
    cause = err.__cause__ if callable(getattr(err.__cause__, "errors", None)) else err
    if callable(getattr(cause, "errors", None)):  # pydantic's ValidationError of the arguments
        first = cause.errors()[0]
        where = f"{first['loc'][0]}: " if first.get("loc") else ""
        return f"{where}{first.get('msg', cause)} (got {first.get('input')!r})"
    if isinstance(err, KeyError):
        return f"unknown transform or missing key {err}"
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load_pipeline(spec: Mapping[str, Any] | str | Path, key: str = "albumentations") -> A.Compose:
    """An albumentations pipeline from its serialised form, as ``A.to_dict``/``A.save`` write it.

    Args:
        spec: A mapping (``{"transform": {"__class_fullname__": "Compose", ...}}``, or the
            inner ``transform`` mapping alone), or the path of a YAML/JSON file saved by
            ``A.save``.
        key: The config key ``spec`` came from, named in errors.

    Returns:
        The pipeline as a ``Compose`` (a single transform is wrapped in one).

    Raises:
        DataError: The file is missing or the pipeline does not build; the message names ``key``.
    """
    try:
        if isinstance(spec, str | Path):
            path = Path(spec).expanduser()
            if not path.is_file():
                raise DataError(
                    f"{key}: {path} is not a file (expected an A.save YAML or JSON file)"
                )
            fmt = "json" if path.suffix.lower() == ".json" else "yaml"
            transform = A.load(str(path), data_format=fmt)
        else:
            spec = dict(spec)
            transform = A.from_dict(spec if "transform" in spec else {"transform": spec})
    except DataError:
        raise
    except Exception as err:  # albumentations raises many types for a bad pipeline
        raise DataError(f"{key}: not a valid albumentations pipeline: {_reason(err)}") from None
    return transform if isinstance(transform, A.Compose) else A.Compose([transform])


def check_pipeline(pipeline: A.Compose, size: int, key: str = "albumentations") -> None:
    """Run ``pipeline`` once on a ``size``-px image: it must return uint8 HWC at that size.

    Batches are stacked and fed to a model that normalises itself, so a pipeline must keep
    the decoded size and dtype (no resizing crop to another size, no ``Normalize``).

    Args:
        pipeline: The pipeline.
        size: The side images are decoded at.
        key: The config key the pipeline came from, named in errors.

    Raises:
        DataError: The pipeline fails or changes the shape or dtype.
    """
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    try:
        out = pipeline(image=image)["image"]
    except Exception as err:
        raise DataError(
            f"{key}: the pipeline fails on a {size}px RGB image: {_reason(err)}"
        ) from None
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != image.shape:
        got = f"{getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}"
        raise DataError(
            f"{key}: the pipeline must return uint8 images of the decoded size {image.shape}, "
            f"got {got} (leave out Normalize and resizing; set data.image_size instead)"
        )


def custom_pipeline(
    spec: Mapping[str, Any] | str | Path | None, augment: str, image_size: Any, key: str
) -> A.Compose | None:
    """A config's own albumentations pipeline, built and dry-run (at ``image_size`` if known).

    Args:
        spec: What :func:`load_pipeline` takes, or ``None`` (no pipeline of one's own).
        augment: The DataModule's ``augment`` mode; the pipeline needs ``sample``.
        image_size: The configured image size (dry-run only when it is an int).
        key: The config key, for messages.

    Raises:
        DataError: The pipeline is given with ``augment`` not ``sample``, or it is invalid.
    """
    if spec is None:
        return None
    if augment != "sample":
        raise DataError(
            f"{key} is a per-image pipeline: set data.augment to "
            "'sample' to use it ('batch' runs the built-in settings on the device)"
        )
    pipeline = load_pipeline(spec, key)
    if isinstance(image_size, int):
        check_pipeline(pipeline, image_size, key)
    return pipeline
