"""hflip auto: the training images decide whether mirroring keeps their classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_vision.data import ImageFolderDataModule
from lit_vision.mirror import decide_hflip, mirror_verdict, thumbnails
from lit_vision.spec import inference_spec


def arrow(direction: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A noisy arrow pointing left or right, jittered by a pixel or two, as HWC uint8."""
    img = rng.normal(60, 20, (size, size)).clip(0, 255)
    mid, dy = size // 2 + int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
    img[mid - 2 + dy : mid + 2 + dy, 6:26] = 230  # the shaft
    for k in range(8):  # the head at the right end
        img[mid - k + dy : mid + k + 1 + dy, 25 - k] = 230
    if direction == "left":
        img = img[:, ::-1]
    return np.repeat(img[..., None], 3, axis=2).astype(np.uint8)


def blob(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A bright disc or a bright bar anywhere in the image: no left/right preference."""
    img = rng.normal(60, 20, (size, size)).clip(0, 255)
    y, x = np.mgrid[:size, :size]
    cy, cx = rng.integers(6, size - 6, 2)
    if kind == "disc":
        img[(y - cy) ** 2 + (x - cx) ** 2 < 25] = 230
    else:
        img[abs(y - cy) < 2] = 230
    return np.repeat(img[..., None], 3, axis=2).astype(np.uint8)


def glyph(name: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Oriented letter-like shapes (L, F, 7, J): none is the mirror of another."""
    img = rng.normal(60, 20, (size, size)).clip(0, 255)
    strokes = {
        "L": [(4, 28, 6, 10), (24, 28, 6, 26)],
        "F": [(4, 28, 6, 10), (4, 8, 6, 26), (14, 18, 6, 20)],
        "7": [(4, 8, 6, 26), (4, 28, 22, 26)],
        "J": [(4, 28, 22, 26), (24, 28, 6, 26), (18, 28, 6, 10)],
    }[name]
    for y0, y1, x0, x1 in strokes:
        img[y0:y1, x0:x1] = 230
    return np.repeat(img[..., None], 3, axis=2).astype(np.uint8)


def batch(draw, kind: str, n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([draw(kind, rng) for _ in range(n)])).permute(0, 3, 1, 2)


def test_mirror_pair_classes_turn_flips_off() -> None:
    thumbs = [thumbnails(batch(arrow, d, 60, s)) for s, d in enumerate(("left", "right"))]
    verdict = mirror_verdict(thumbs, ["keep_left", "keep_right"])
    assert not verdict.hflip
    assert "looks like" in verdict.reason
    assert min(verdict.asymmetry) > 0.5


def test_oriented_classes_turn_flips_off() -> None:
    names = ["L", "F", "7", "J"]
    thumbs = [thumbnails(batch(glyph, g, 40, s)) for s, g in enumerate(names)]
    assert not mirror_verdict(thumbs, names).hflip


def test_symmetric_classes_keep_flips() -> None:
    thumbs = [thumbnails(batch(blob, k, 80, s)) for s, k in enumerate(("disc", "bar"))]
    verdict = mirror_verdict(thumbs, ["disc", "bar"])
    assert verdict.hflip, verdict
    assert max(verdict.asymmetry) < 0.25


def test_decide_hflip_samples_every_class() -> None:
    images = torch.cat([batch(arrow, "left", 30, 0), batch(arrow, "right", 30, 1)])
    seen: list[int] = []

    def gather(idx: list[int]) -> torch.Tensor:
        seen.extend(idx)
        return images[idx]

    verdict = decide_hflip(gather, [0] * 30 + [1] * 30, ["l", "r"], per_class=10)
    assert not verdict.hflip
    assert len(seen) == 20 and {i // 30 for i in seen} == {0, 1}


def write(root: Path, draw, kinds: list[str], n: int) -> None:
    for split, count in (("train", n), ("val", 4)):
        for s, kind in enumerate(kinds):
            folder = root / split / kind
            folder.mkdir(parents=True)
            rng = np.random.default_rng(s + (100 if split == "val" else 0))
            for i in range(count):
                Image.fromarray(draw(kind, rng)).save(folder / f"{i}.png")


@pytest.mark.parametrize(
    ("draw", "kinds", "expected"),
    [(arrow, ["left", "right"], False), (blob, ["disc", "bar"], True)],
)
@pytest.mark.parametrize("augment", ["batch", "sample"])
def test_datamodule_decides_hflip(
    tmp_path: Path, draw, kinds: list[str], expected: bool, augment: str
) -> None:
    write(tmp_path, draw, kinds, 40)
    dm = ImageFolderDataModule(tmp_path, image_size=32, hflip="auto", augment=augment)
    assert dm.augment_settings.hflip is False  # undecided until setup
    dm.setup("fit")
    assert dm.augment_settings.hflip is expected
    if augment == "batch":
        assert dm.batch_augment.settings.hflip is expected
    else:
        names = [type(t).__name__ for t in dm.datasets["train"].transform.transforms]
        assert ("HorizontalFlip" in names) is expected

    class Model:
        class_names = kinds
        mean = std = torch.zeros(3)
        default_image_size = 32

    assert inference_spec(Model(), dm).train_flips["hflip"] is expected


def test_explicit_hflip_is_not_second_guessed(tmp_path: Path) -> None:
    write(tmp_path, arrow, ["left", "right"], 10)
    dm = ImageFolderDataModule(tmp_path, image_size=32, hflip=True)
    dm.setup("fit")
    assert dm.augment_settings.hflip is True


@pytest.mark.slow
@pytest.mark.parametrize(("name", "expected"), [("catsdogs", True), ("crack", True)])
def test_real_photos_keep_flips(shared_data: Path, name: str, expected: bool) -> None:
    root = shared_data / name
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    thumbs = []
    for c in classes:
        files = sorted((root / c).iterdir())[::4][:150]
        arrays = [np.asarray(Image.open(f).convert("RGB").resize((64, 64))) for f in files]
        thumbs.append(thumbnails(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)))
    assert mirror_verdict(thumbs, classes).hflip is expected


@pytest.mark.slow
def test_real_signs_and_digits_turn_flips_off(shared_data: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images * 16).float()[:, None].repeat(1, 3, 1, 1)
    by_digit = [thumbnails(images[digits.target == d][:150]) for d in range(10)]
    assert not mirror_verdict(by_digit, [str(d) for d in range(10)]).hflip
    root = shared_data / "gtsrb"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    thumbs = []
    for c in classes:
        files = sorted((root / c).glob("*.ppm"))[::10][:60]
        arrays = [np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in files]
        thumbs.append(thumbnails(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)))
    verdict = mirror_verdict(thumbs, classes)
    assert not verdict.hflip, verdict
