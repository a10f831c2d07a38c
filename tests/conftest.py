"""Shared fixtures: tiny synthetic image trees in tmp_path, and the real data folder if present."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def write_images(
    folder: Path,
    n: int,
    *,
    size: int = 20,
    seed: int = 0,
    fmt: str = "png",
    prefix: str = "img",
    mode: str = "RGB",
    label: int = 0,
) -> list[Path]:
    """Write ``n`` small random images whose mean colour depends on ``label`` (learnable)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        base = np.zeros((size, size, 3), dtype=np.float64)
        base[..., label % 3] = 160 + 40 * (label // 3)
        arr = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, "RGB")
        if mode != "RGB":
            img = img.convert(mode)
        path = folder / f"{prefix}{i:03d}.{fmt}"
        img.save(path)
        paths.append(path)
    return paths


def quiet_trainer(tmp_path: Path, max_epochs: int, callbacks=(), **kw) -> L.Trainer:
    """A CPU Trainer without logger, progress bar, summary or sanity check, writing to tmp_path."""
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        **kw,
    )


def make_raw_tree(root: Path, classes: int = 3, per_class: int = 12, **kw) -> Path:
    """RAW/CLASS/*.png: unsplit class folders."""
    for c in range(classes):
        write_images(root / f"class_{c}", per_class, seed=c, label=c, **kw)
    return root


def make_split_tree(
    root: Path, classes: int = 3, train: int = 8, val: int = 4, test: int = 4, size: int = 20
) -> Path:
    """ROOT/{train,val,test}/CLASS/*.png: an already split tree."""
    for c in range(classes):
        write_images(root / "train" / f"class_{c}", train, seed=c, label=c, size=size)
        write_images(root / "val" / f"class_{c}", val, seed=100 + c, label=c, size=size)
        if test:
            write_images(root / "test" / f"class_{c}", test, seed=200 + c, label=c, size=size)
    return root


@pytest.fixture
def split_tree(tmp_path: Path) -> Path:
    """A tiny split tree with 3 classes."""
    return make_split_tree(tmp_path / "data")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the repository, or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files the decoded-image cache decodes from now on, one entry per decode."""
    import lit_vision.cache as cache

    seen: list[str] = []
    original = cache.load_image

    def counting(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(cache, "load_image", counting)
    return seen
