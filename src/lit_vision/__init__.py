"""lit_vision: folders of labelled images in, trained, measured, exportable classifiers out."""

import os

# albumentations otherwise asks PyPI for a newer version on import: a stall offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from lit_vision.data import ImageDataset, ImageFolderDataModule  # noqa: E402
from lit_vision.digits import DigitsDataModule  # noqa: E402
from lit_vision.models import CNNClassifier, ImageClassifier, TransferClassifier  # noqa: E402
from lit_vision.networks import SimpleCNN, TransferNet  # noqa: E402
from lit_vision.schedulers import WarmupCosineLR  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CNNClassifier",
    "DigitsDataModule",
    "ImageClassifier",
    "ImageDataset",
    "ImageFolderDataModule",
    "SimpleCNN",
    "TransferClassifier",
    "TransferNet",
    "WarmupCosineLR",
    "__version__",
]
