"""Hostile inputs for the data path: hidden images, decode memory, cache integrity, worker errors.

Each test builds its hostile input in tmp_path. Memory is measured in a subprocess (peak RSS
of a fresh interpreter), so the numbers do not depend on what pytest already holds.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL
import pytest
from conftest import make_split_tree
from PIL import Image
from torch.utils.data import DataLoader

from lit_vision import cache as cache_mod
from lit_vision.cache import cache_key, cached_decode
from lit_vision.check import scan_dataset
from lit_vision.data import DataError, ImageFolderDataModule
from lit_vision.datasets import ImageDataset
from lit_vision.folders import list_samples
from lit_vision.images import ImageDecodeError, load_image

SRC = Path(__file__).resolve().parents[1] / "src"


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter with ``src`` on the path; it prints one JSON line."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- 6: hidden files and folders -------------------------------------------------------------


def _hidden_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = make_split_tree(tmp_path / "d", classes=2, train=4, val=2, test=0, size=12)
    bad = root / "train" / "class_0" / ".sub" / "bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"corrupt" * 20)
    dot_file = root / "val" / "class_1" / ".peek.png"
    Image.new("RGB", (12, 12), "red").save(dot_file, format="PNG")
    return root, bad, dot_file


def test_check_reports_hidden_images_instead_of_no_problems(tmp_path: Path) -> None:
    root, bad, dot_file = _hidden_tree(tmp_path)
    checkpoint = root / "train" / ".ipynb_checkpoints" / "x-checkpoint.png"  # a hidden "class"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(dot_file.read_bytes())
    (root / "train" / "class_1" / "._img000.png").write_bytes(
        b"\0" * 64
    )  # macOS metadata, not an image
    report = scan_dataset(root, size=16)
    hidden = {f.path for f in report.findings if f.kind == "hidden_image"}
    assert hidden == {str(bad), str(dot_file), str(checkpoint)}
    assert report.ok and all(f.severity == "warning" for f in report.findings)
    text = report.describe()
    assert "3 image(s) in hidden files/folders, ignored" in text and "no problems found" not in text
    assert report.images == {"train": 8, "val": 4}  # the hidden ones are not counted as data


@pytest.mark.parametrize(("cache", "scan"), [(True, True), (False, True), (False, False)])
def test_datamodule_never_reads_hidden_images(tmp_path: Path, cache: bool, scan: bool) -> None:
    root, bad, dot_file = _hidden_tree(tmp_path)
    dm = ImageFolderDataModule(root, image_size=8, num_workers=0, cache=cache, scan=scan)
    with pytest.warns(UserWarning, match="hidden files/folders") as record:
        dm.setup("fit")
    # Logged once: by the scan (both files in one line), else once per split listed.
    assert sum("hidden files/folders" in str(w.message) for w in record) == (1 if scan else 2)
    used = {p for split in ("train", "val") for p, _ in dm.datasets[split].samples}
    assert str(bad) not in used and str(dot_file) not in used and len(used) == 12
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 8, 8)


def test_list_samples_and_predict_root_share_the_rule(tmp_path: Path) -> None:
    root, bad, _ = _hidden_tree(tmp_path)
    hidden: list[str] = []
    samples = list_samples(root / "train", ["class_0", "class_1"], hidden)
    assert str(bad) not in {p for p, _ in samples} and hidden == [str(bad)]
    dm = ImageFolderDataModule(root, image_size=8, num_workers=0, predict_root=root / "train")
    with pytest.warns(UserWarning, match="ignored 1 image"):
        dm.setup("predict")
    assert str(bad) not in {p for p, _ in dm.datasets["predict"].samples}


# --- 7: decode memory, megapixel limit, streaming scan ---------------------------------------


def test_giant_16bit_png_decodes_in_bounded_memory(tmp_path: Path) -> None:
    """A 9000x9000 16-bit PNG (~180 KB on disk) used to cost +2.2 GB RSS and seconds of CPU."""
    png = tmp_path / "giant16.png"
    _run(f"""
        from PIL import Image
        Image.new("I;16", (9000, 9000), 51400).save({str(png)!r})
        print("{{}}")
    """)
    assert png.stat().st_size < 2_000_000
    result = _run(f"""
        import json, resource
        from lit_vision.images import load_image
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        arr = load_image({str(png)!r}, 64)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({{"mb": (r1.ru_maxrss - r0.ru_maxrss) / 1024, "shape": list(arr.shape),
                           "values": sorted(set(arr.ravel().tolist())),
                           "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime}}))
    """)
    assert result["shape"] == [64, 64, 3] and result["values"] == [200]  # round(51400 / 257)
    assert result["mb"] < 400, result  # the decoded 16-bit image is 162 MB; was +2,160 MB
    assert result["cpu"] < 3.0, result  # CPU, not wall time: the machine may be shared


def test_megapixel_limit_is_one_line_naming_the_file(tmp_path: Path) -> None:
    png = tmp_path / "wide.png"
    Image.new("RGB", (2000, 1000), "blue").save(png)
    with pytest.raises(ImageDecodeError) as info:
        load_image(png, 32, max_megapixels=1)
    message = str(info.value)
    assert str(png) in message and "max_megapixels" in message and "2000x1000" in message
    assert "\n" not in message
    assert load_image(png, 32, max_megapixels=2).shape == (32, 32, 3)
    # A JPEG decoded at reduced scale (draft) counts the pixels actually decoded.
    jpg = tmp_path / "big.jpg"
    Image.new("RGB", (2400, 2400), "green").save(jpg)
    assert load_image(jpg, 64, max_megapixels=1).shape == (64, 64, 3)
    with pytest.raises(ImageDecodeError, match="max_megapixels"):
        load_image(jpg, None, max_megapixels=1)
    # The scan and the DataModule apply the same limit.
    root = make_split_tree(tmp_path / "d", classes=2, train=3, val=2, test=0, size=12)
    (root / "train" / "class_0" / "wide.png").write_bytes(png.read_bytes())
    report = scan_dataset(root, max_megapixels=1)
    assert [(f.kind, Path(f.path).name) for f in report.errors] == [("unreadable", "wide.png")]
    with pytest.raises(DataError, match="wide.png"):
        ImageFolderDataModule(root, image_size=8, num_workers=0, max_megapixels=1).setup("fit")


def test_scan_streams_files_instead_of_reading_them_whole(tmp_path: Path) -> None:
    """A 1 GB (sparse) file named .png: the old scan read it whole (a 2 GB one took +2.9 GB RSS)."""
    root = make_split_tree(tmp_path / "d", classes=2, train=2, val=1, test=0, size=12)
    huge = root / "train" / "class_0" / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(1024**3)
    result = _run(f"""
        import json, resource
        from lit_vision.check import scan_dataset
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        full = scan_dataset({str(root)!r}, decode="full", workers=2)
        none = scan_dataset({str(root)!r}, decode="none", workers=2)  # hashes all 1 GB
        print(json.dumps({{"mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024,
                           "full": [(f.kind, f.path) for f in full.errors],
                           "hashed": {str(huge)!r} in none.digests}}))
    """)
    assert result["full"] == [["unreadable", str(huge)]]
    assert result["hashed"] and result["mb"] < 200, result


# --- 8: the decoded-image cache --------------------------------------------------------------


def _ppm_tree(tmp_path: Path) -> list[tuple[str, int]]:
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.ppm")
    return list_samples(tmp_path / "imgs", ["a"])


def test_cache_payload_corrupted_in_place_is_not_served(tmp_path: Path, decodes: list[str]) -> None:
    samples = _ppm_tree(tmp_path)
    first = np.array(cached_decode(samples, 8, tmp_path / "c", name="train"))
    (npy,) = (tmp_path / "c").glob("train-8px-*.npy")
    raw = bytearray(npy.read_bytes())
    raw[-5] ^= 0xFF  # one pixel byte; the .npy header stays valid
    npy.write_bytes(bytes(raw))
    assert np.load(npy).shape == first.shape  # shape checks alone would serve it
    with pytest.warns(UserWarning, match="checksum"):
        again = cached_decode(samples, 8, tmp_path / "c", name="train")
    assert len(decodes) == 6  # decoded again
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(cached_decode(samples, 8, tmp_path / "c", name="train"), first)


def test_image_replaced_with_same_size_and_mtime_gets_new_pixels(tmp_path: Path) -> None:
    samples = _ppm_tree(tmp_path)
    first = np.array(cached_decode(samples, 8, tmp_path / "c", name="train"))
    path = Path(samples[0][0])
    st = path.stat()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(path)  # same dimensions: same PPM size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    again = cached_decode(samples, 8, tmp_path / "c", name="train")
    assert (again[0] == (10, 200, 30)).all() and np.array_equal(again[1:], first[1:])


def test_cache_key_covers_decoder_and_reuses_scan_digests(tmp_path: Path, monkeypatch) -> None:
    samples = _ppm_tree(tmp_path)
    key = cache_key(samples, 8)
    assert cache_key(samples, 8, max_megapixels=5) != key
    report = scan_dataset(tmp_path, splits=["imgs"], decode="none")  # imgs/ as a split folder
    assert cache_key(samples, 8, digests=report.digests) == key  # the scan's SHA-256 is the key's

    def no_reading(path: str) -> str:
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(cache_mod, "file_sha256", no_reading)
    cache_key(samples, 8, digests=report.digests)
    monkeypatch.setattr(PIL, "__version__", "0.0.0")
    assert cache_key(samples, 8, digests=report.digests) != key


# --- 13: a decode error inside a loader worker ------------------------------------------------


def test_image_decode_error_survives_worker_reraise_and_pickle(tmp_path: Path) -> None:
    err = ImageDecodeError("/x/y.png", "broken data stream")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageDecodeError) as direct:
        load_image(bad, 8)
    loader = DataLoader(ImageDataset([(str(bad), 0)], 8), batch_size=1, num_workers=1)
    with pytest.raises(ImageDecodeError) as info:
        next(iter(loader))
    # Not a RuntimeError carrying the worker's traceback: the same one line as in-process.
    assert str(info.value) == str(direct.value) and str(direct.value).startswith(
        f"cannot read image {bad}: "
    )
    assert info.value.path == str(bad) and info.value.reason == direct.value.reason


def test_file_turned_bad_after_scan_is_one_line_from_workers(tmp_path: Path) -> None:
    root = make_split_tree(tmp_path / "d", classes=2, train=2, val=1, test=0, size=12)
    dm = ImageFolderDataModule(root, image_size=8, batch_size=8, num_workers=1, cache=False)
    dm.setup("fit")
    victim = Path(dm.datasets["train"].samples[0][0])
    victim.write_bytes(victim.read_bytes()[:30])
    with pytest.raises(ImageDecodeError) as info:
        next(iter(dm.train_dataloader()))
    assert "\n" not in str(info.value) and str(victim) in str(info.value)
