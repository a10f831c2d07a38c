"""lit_vision: folders of labelled images in, trained, measured, exportable classifiers out.

The public classes are imported on first use (PEP 562), so ``lit-vision split --help`` and
other light commands do not pay for torch and Lightning; ``class_path: lit_vision.X`` in a
config resolves them as usual.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# albumentations otherwise asks PyPI for a newer version on import: a stall offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# litdata.optimize otherwise asks PyPI for a newer litdata (30 s timeout): a network call per run.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

__version__ = "0.1.0"

_EXPORTS = {
    "CNNClassifier": "lit_vision.models",
    "DigitsDataModule": "lit_vision.digits",
    "ImageClassifier": "lit_vision.models",
    "ImageDataset": "lit_vision.data",
    "ImageFolderDataModule": "lit_vision.data",
    "SimpleCNN": "lit_vision.networks",
    "StreamingImageDataModule": "lit_vision.streaming_data",
    "TransferClassifier": "lit_vision.transfer",
    "TransferNet": "lit_vision.networks",
    "WarmupCosineLR": "lit_vision.schedulers",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    """Import a public class from its module on first access."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lit_vision' has no attribute {name!r}")
