"""ImageFolderDataModule: class discovery, split validation, decoding of any image mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_split_tree, write_images
from PIL import Image

from lit_vision.data import DataError, ImageFolderDataModule
from lit_vision.images import ImageDecodeError, load_image


def test_classes_discovered_in_init(split_tree: Path) -> None:
    dm = ImageFolderDataModule(split_tree, image_size=16, batch_size=4, num_workers=0)
    assert dm.classes == ["class_0", "class_1", "class_2"] and dm.num_classes == 3


@pytest.mark.parametrize("cache", [True, False])
def test_batches_are_uint8_at_size(split_tree: Path, cache: bool) -> None:
    dm = ImageFolderDataModule(split_tree, image_size=16, batch_size=4, num_workers=0, cache=cache)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 16, 16)
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1, 2}
    assert len(dm.datasets["val"]) == 12
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 16, 16)


def test_val_class_not_in_train_is_an_error(tmp_path: Path) -> None:
    root = make_split_tree(tmp_path / "d", classes=2, test=0)
    write_images(root / "val" / "stranger", 2)
    with pytest.raises(DataError, match="stranger"):
        ImageFolderDataModule(root)


def test_val_may_lack_a_train_class(tmp_path: Path) -> None:
    root = make_split_tree(tmp_path / "d", classes=3, test=0)
    for p in (root / "val" / "class_2").iterdir():
        p.unlink()
    (root / "val" / "class_2").rmdir()
    dm = ImageFolderDataModule(root, image_size=8, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 3 and len(dm.datasets["val"]) == 8


@pytest.mark.parametrize(
    ("root_fn", "match"),
    [
        (lambda p: p / "missing", "not a folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "missing folder"),
    ],
)
def test_bad_root(tmp_path: Path, root_fn, match: str) -> None:
    with pytest.raises(DataError, match=match):
        ImageFolderDataModule(root_fn(tmp_path))


def test_empty_train_class_is_an_error(tmp_path: Path) -> None:
    root = make_split_tree(tmp_path / "d", classes=2, test=0)
    (root / "train" / "hollow").mkdir()
    dm = ImageFolderDataModule(root, image_size=8, num_workers=0)
    with pytest.raises(DataError, match="hollow"):
        dm.setup("fit")


def test_test_stage_needs_test_folder(tmp_path: Path) -> None:
    root = make_split_tree(tmp_path / "d", classes=2, test=0)
    dm = ImageFolderDataModule(root, image_size=8, num_workers=0)
    with pytest.raises(DataError, match="test"):
        dm.setup("test")


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_any_mode_decodes_to_rgb(tmp_path: Path) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    gray16 = Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16))
    palette_t = rgb.convert("P")
    palette_t.info["transparency"] = 0
    files = [
        _save(rgb, tmp_path / "a.jpg"),
        _save(rgb.convert("L"), tmp_path / "b.png"),
        _save(rgb.convert("RGBA"), tmp_path / "c.png"),
        _save(rgb.convert("P"), tmp_path / "d.gif"),
        _save(palette_t, tmp_path / "d2.png"),
        _save(rgb.convert("CMYK"), tmp_path / "e.jpg"),
        _save(gray16, tmp_path / "f.png"),
        _save(gray16, tmp_path / "f.tif"),
        _save(rgb.convert("1"), tmp_path / "g.bmp"),
        _save(rgb, tmp_path / "h.ppm"),
        _save(rgb, tmp_path / "i.webp"),
    ]
    for f in files:
        arr = load_image(f, 24)
        assert arr.shape == (24, 24, 3) and arr.dtype == np.uint8, f
    # 16-bit values are scaled onto 0-255, not clipped: 59,950 / 257 -> 233
    assert load_image(tmp_path / "f.png").max() == 233
    assert load_image(tmp_path / "a.jpg").shape == (30, 40, 3)


def test_corrupt_and_missing_images_name_the_file(tmp_path: Path) -> None:
    good = _save(Image.new("RGB", (50, 50), "red"), tmp_path / "ok.png")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:40])
    garbage = tmp_path / "junk.jpg"
    garbage.write_bytes(b"not an image at all")
    for bad in (truncated, garbage, tmp_path / "absent.png"):
        with pytest.raises(ImageDecodeError, match=bad.name):
            load_image(bad, 16)
