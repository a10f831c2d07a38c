"""lit_vision: folders of labelled images in, trained, measured, exportable classifiers out."""

from lit_vision.data import ImageDataset, ImageFolderDataModule
from lit_vision.digits import DigitsDataModule
from lit_vision.models import CNNClassifier, ImageClassifier
from lit_vision.networks import SimpleCNN
from lit_vision.schedulers import WarmupCosineLR

__version__ = "0.1.0"

__all__ = [
    "CNNClassifier",
    "DigitsDataModule",
    "ImageClassifier",
    "ImageDataset",
    "ImageFolderDataModule",
    "SimpleCNN",
    "WarmupCosineLR",
    "__version__",
]
