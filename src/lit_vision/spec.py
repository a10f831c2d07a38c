"""InferenceSpec: what a checkpoint or an export needs to run on its own, in one shape.

One dataclass holds the inference contract: class names, input size, normalisation, the eval
transform and the training flips. It is built from a model (and, when training, the
DataModule's public settings) as a checkpoint is saved, read back from the checkpoint's
``lit_vision`` entry when it is loaded, and written out as the JSON contract beside an export.
The model and the DataModule are read duck-typed, so this module imports neither ``models``
nor ``data`` (``models`` imports it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import albumentations as A
import torch

from lit_vision.augment import eval_transforms
from lit_vision.errors import CheckpointError

# The checkpoint entry that holds ``InferenceSpec.to_checkpoint()``.
CHECKPOINT_KEY = "lit_vision"
# The exported graph's input name (ONNX), recorded in the export contract.
INPUT_NAME = "images"
# How the checkpoint entry's ``input`` is sized (the model normalises inside forward: feed
# decoded, resized RGB pixels as they are).
RESIZE = "bilinear to image_size x image_size, aspect ratio not kept"


class SpecModel(Protocol):
    """What ``inference_spec`` reads from a model (an ``ImageClassifier``)."""

    class_names: Sequence[str]
    mean: torch.Tensor
    std: torch.Tensor
    default_image_size: int | None


@dataclass
class InferenceSpec:
    """What inference needs besides the weights: the checkpoint's ``lit_vision`` entry.

    Args:
        class_names: Class names in label order.
        image_size: Square input side the images are resized to (``None`` only when neither
            the DataModule nor the model gave one; ``load_classifier`` refuses that).
        mean: Normalisation mean (applied inside the model; recorded for exports).
        std: Normalisation std (applied inside the model; recorded for exports).
        transform: Eval pipeline applied after decoding and resizing (uint8 HWC).
        model_class: Import path of the LightningModule class.
        train_flips: Flips used in training (``hflip``/``vflip``), which decide ``tta="auto"``.
        temperature: Softmax temperature fitted on validation (``lit_vision.calibration``):
            calibrated ``probs = softmax(logits / temperature)``; 1.0 when never calibrated.
        calibration: How the temperature was fitted (split, images, ECE before/after), or empty.
    """

    class_names: list[str]
    image_size: int | None
    mean: list[float]
    std: list[float]
    transform: A.Compose
    model_class: str
    train_flips: dict[str, bool] = field(default_factory=dict)
    temperature: float = 1.0
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's ``lit_vision`` entry (format 1): plain JSON-able data only."""
        return {
            "format": 1,
            "model_class": self.model_class,
            "class_names": list(self.class_names),
            "image_size": int(self.image_size) if self.image_size else None,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "eval_transform": A.to_dict(self.transform),
            "input": {
                "dtype": "uint8",
                "range": [0, 255],
                "layout": "NCHW",
                "channels": "RGB",
                "resize": RESIZE,
            },
            "train_flips": {
                "hflip": bool(self.train_flips.get("hflip", False)),
                "vflip": bool(self.train_flips.get("vflip", False)),
            },
            # Additive to format 1: readers that ignore it get the uncalibrated softmax.
            "temperature": float(self.temperature),
            "calibration": dict(self.calibration),
        }

    @classmethod
    def from_checkpoint(
        cls,
        meta: Mapping[str, Any],
        model: SpecModel,
        model_class: str,
        image_size: int | None = None,
    ) -> InferenceSpec:
        """Read a checkpoint's ``lit_vision`` entry back, filling gaps from the model.

        Args:
            meta: The checkpoint's ``lit_vision`` entry (empty for checkpoints without one).
            model: The rebuilt model: class names, mean/std and ``default_image_size``.
            model_class: Import path of the model's class.
            image_size: Input side that overrides the recorded one.

        Returns:
            The spec; ``image_size`` is ``None`` when nothing records one.
        """
        size = image_size or meta.get("image_size") or model.default_image_size
        transform = (
            A.from_dict(meta["eval_transform"]) if meta.get("eval_transform") else eval_transforms()
        )
        return cls(
            class_names=list(meta.get("class_names") or model.class_names),
            image_size=int(size) if size else None,
            mean=[float(v) for v in model.mean.flatten()],
            std=[float(v) for v in model.std.flatten()],
            transform=transform,
            model_class=model_class,
            train_flips=dict(meta.get("train_flips") or {}),
            temperature=read_temperature(meta),
            calibration=dict(meta.get("calibration") or {}),
        )


def read_temperature(meta: Mapping[str, Any]) -> float:
    """The checkpoint entry's ``temperature`` (1.0 when absent).

    Raises:
        CheckpointError: Not a finite positive number.
    """
    t = meta.get("temperature", 1.0)
    if t is None:
        return 1.0
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < float("inf"):
        raise CheckpointError(f"checkpoint lit_vision.temperature = {t!r} is not a positive number")
    return float(t)


def inference_spec(model: SpecModel, datamodule: Any = None) -> InferenceSpec:
    """The inference contract of a model, with the settings of the DataModule it trained on.

    Args:
        model: The classifier: class names, mean/std buffers, ``default_image_size``.
        datamodule: The DataModule the model was trained and validated on, or ``None``. Only
            public attributes are read: ``image_size``, ``eval_transform`` (identity when it
            has none) and the flips it trained with (``augment_settings``, else ``hparams``).

    Returns:
        The spec; the input size is the DataModule's, else the model's ``default_image_size``.
    """
    image_size = getattr(datamodule, "image_size", None) or model.default_image_size
    transform = getattr(datamodule, "eval_transform", None)
    hparams = dict(getattr(datamodule, "hparams", None) or {})
    settings = getattr(datamodule, "augment_settings", None)  # hflip auto, as decided
    if settings is not None:
        hparams.update(hflip=settings.hflip, vflip=settings.vflip)
    return InferenceSpec(
        class_names=list(model.class_names),
        image_size=int(image_size) if image_size else None,
        mean=[float(v) for v in model.mean.flatten()],
        std=[float(v) for v in model.std.flatten()],
        transform=transform if transform is not None else eval_transforms(),
        model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        train_flips={
            "hflip": bool(hparams.get("hflip", False)),
            "vflip": bool(hparams.get("vflip", False)),
        },
        temperature=float(getattr(model, "temperature", 1.0)),
        calibration=dict(getattr(model, "calibration", None) or {}),
    )


def preprocessing_contract(spec: InferenceSpec) -> dict[str, Any]:
    """The JSON written beside an export: what the caller must feed and what comes out.

    Args:
        spec: The exported model's spec (with an ``image_size``).

    Returns:
        The contract (format ``lit_vision-export/1``); the export adds its files and checks.
    """
    s = spec.image_size
    return {
        "format": "lit_vision-export/1",
        "model_class": spec.model_class,
        "class_names": spec.class_names,
        "num_classes": len(spec.class_names),
        "image_size": s,
        "mean": spec.mean,
        "std": spec.std,
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "range": [0, 255],
            "layout": "NCHW",
            "channels": "RGB",
            "shape": ["batch", 3, s, s],
        },
        "preprocessing": {
            "decode": "8-bit RGB; EXIF orientation applied; alpha composited on white; "
            "16-bit scaled to 8-bit (lit_vision.images.load_image)",
            "resize": f"bilinear (PIL) to {s}x{s}, aspect ratio not kept, no crop",
            "normalisation": "inside the model: (x / 255 - mean) / std; do NOT normalise outside",
            "eval_transform": A.to_dict(spec.transform),
        },
        "outputs": {
            "probs": "softmax class probabilities, (batch, num_classes), float32",
            "logits": "raw class scores, (batch, num_classes), float32",
        },
        # The graph is not calibrated; callers apply the temperature, as predict does.
        "temperature": float(spec.temperature),
        "calibrated_probs": "softmax(logits / temperature): the confidences predict reports "
        "(temperature fitted on the validation split; 1.0 = not calibrated)",
    }
