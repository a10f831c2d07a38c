"""Fuzzing the decoder path: corrupted and truncated files of every accepted format are either
decoded or reported, by the scan and by the DataModule, never a crash or a hang.
"""

from __future__ import annotations

import io
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import write_images
from PIL import Image

from lit_vision.check import check_image_bytes, scan_dataset
from lit_vision.data import DataError, ImageFolderDataModule
from lit_vision.images import ImageDecodeError, load_image

N_FUZZ = 420  # inputs per run (seeded)
PER_FILE_TIMEOUT_S = 5


@contextmanager
def deadline(seconds: int, what: str):
    """Fail (instead of hanging the suite) when the body runs longer than ``seconds``."""

    def _timeout(signum, frame):  # noqa: ANN001
        raise TimeoutError(f"{what} took more than {seconds} s (hang)")

    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def seed_files() -> list[tuple[str, bytes]]:
    """Valid files of every accepted format and several modes (CMYK, 16-bit, palette, alpha)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8), "RGB")
    big16 = Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16))
    return [
        ("jpg", _encode(rgb, "JPEG", quality=90)),
        ("jpg", _encode(rgb, "JPEG", progressive=True)),
        ("jpg", _encode(rgb.convert("CMYK"), "JPEG")),
        ("png", _encode(rgb, "PNG")),
        ("png", _encode(rgb.convert("RGBA"), "PNG")),
        ("png", _encode(big16, "PNG")),
        ("png", _encode(rgb.convert("P"), "PNG")),
        ("ppm", _encode(rgb, "PPM")),
        ("ppm", _encode(rgb.convert("L"), "PPM")),
        ("bmp", _encode(rgb, "BMP")),
        ("gif", _encode(rgb.convert("P"), "GIF")),
        ("tiff", _encode(rgb, "TIFF")),
        ("tiff", _encode(rgb, "TIFF", compression="tiff_lzw")),
        ("tiff", _encode(big16, "TIFF")),
        ("webp", _encode(rgb, "WEBP", quality=80)),
        ("webp", _encode(rgb.convert("RGBA"), "WEBP", lossless=True)),
    ]


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random corruption: truncation, bit flips, zeroed or random runs, header damage."""
    n = len(data)
    kind = rng.choice(
        ["truncate", "flip", "zero_run", "random_run", "header", "insert", "empty", "tiny"]
    )
    b = bytearray(data)
    if kind == "truncate":
        return kind, bytes(b[: int(rng.integers(1, n))])
    if kind == "flip":
        for i in rng.integers(0, n, size=int(rng.integers(1, 20))):
            b[i] ^= 1 << int(rng.integers(0, 8))
        return kind, bytes(b)
    if kind in ("zero_run", "random_run"):
        start = int(rng.integers(0, n))
        length = int(rng.integers(1, max(2, n // 4)))
        fill = (
            bytes(length)
            if kind == "zero_run"
            else rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        )
        b[start : start + length] = fill[: max(0, min(length, n - start))]
        return kind, bytes(b)
    if kind == "header":  # damage the first 64 bytes, where sizes and counts live
        for i in rng.integers(0, min(64, n), size=int(rng.integers(1, 6))):
            b[i] = int(rng.integers(0, 256))
        return kind, bytes(b)
    if kind == "insert":
        at = int(rng.integers(0, n))
        return kind, bytes(b[:at]) + rng.integers(
            0, 256, int(rng.integers(1, 64)), dtype=np.uint8
        ).tobytes() + bytes(b[at:])
    if kind == "empty":
        return kind, b""
    return kind, bytes(b[: int(rng.integers(1, 16))])


def fuzz_files(folder: Path, n: int = N_FUZZ, seed: int = 0) -> list[Path]:
    """Write ``n`` mutated files (all formats) into ``folder``."""
    rng = np.random.default_rng(seed)
    seeds = seed_files()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        ext, data = seeds[i % len(seeds)]
        kind, bad = mutate(data, rng)
        path = folder / f"fuzz{i:04d}_{kind}.{ext}"
        path.write_bytes(bad)
        paths.append(path)
    return paths


def test_seed_files_all_decode() -> None:
    for ext, data in seed_files():
        assert check_image_bytes(data) is None, ext


def test_fuzzed_files_decoded_or_reported(tmp_path: Path) -> None:
    paths = fuzz_files(tmp_path / "fuzz")
    start = time.monotonic()
    outcomes = {"decoded": 0, "reported": 0}
    for path in paths:
        data = path.read_bytes()
        with deadline(PER_FILE_TIMEOUT_S, f"checking {path.name}"):
            full = check_image_bytes(data, "full", 32)
            check_image_bytes(data, "verify")  # must not raise either
            try:
                arr = load_image(path, 32)
            except ImageDecodeError:
                arr = None
        if full is None:
            assert arr is not None and arr.shape == (32, 32, 3) and arr.dtype == np.uint8, path.name
            outcomes["decoded"] += 1
        else:
            assert isinstance(full, str) and full, path.name
            assert arr is None, f"{path.name}: the scan reported {full!r} but load_image decoded it"
            outcomes["reported"] += 1
    assert sum(outcomes.values()) == N_FUZZ
    assert outcomes["reported"] > N_FUZZ // 4  # the corruptions do bite
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("cache", [True, False])
def test_fuzzed_tree_through_datamodule(tmp_path: Path, cache: bool) -> None:
    root = tmp_path / "data"
    fuzzed = fuzz_files(root / "train" / "a", n=160, seed=1)
    write_images(root / "train" / "b", 4, seed=2)
    write_images(root / "val" / "a", 2, seed=3, label=0)
    write_images(root / "val" / "b", 2, seed=4, label=1)
    with deadline(60, "scan"):
        report = scan_dataset(root, decode="full", size=16)
    bad = {f.path for f in report.errors}
    assert bad and bad <= {str(p) for p in fuzzed}

    # Default: stop before training, naming the count and the first files.
    dm = ImageFolderDataModule(root, image_size=16, num_workers=0, cache=cache)
    with pytest.raises(DataError, match=rf"{len(bad)} unreadable"):
        dm.setup("fit")

    # on_bad=skip: every image file is either in the dataset (and decodes) or in dm.skipped.
    dm = ImageFolderDataModule(root, image_size=16, num_workers=0, cache=cache, on_bad="skip")
    with deadline(60, "DataModule setup"):
        dm.setup("fit")
    train = dm.datasets["train"]
    used = {p for p, _ in train.samples}
    all_train = {str(p) for p in (root / "train").rglob("*") if p.is_file()}
    assert used | set(dm.skipped) == all_train
    assert not used & set(dm.skipped)
    assert set(dm.skipped) == bad
    for i in range(len(train)):
        with deadline(PER_FILE_TIMEOUT_S, f"item {i}"):
            x, _ = train[i]
        assert x.shape == (3, 16, 16)
