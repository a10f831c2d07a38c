"""The dataset scan (lit_vision.check) and its use by ImageFolderDataModule and `lit-vision check`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_split_tree, write_images
from PIL import Image

import lit_vision.progress
from lit_vision.__main__ import main, run_command
from lit_vision.check import scan_dataset
from lit_vision.data import DataError, ImageFolderDataModule


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def messy_tree(root: Path) -> dict[str, Path]:
    """A split tree with one of each real-world mess; returns the notable paths."""
    make_split_tree(root, classes=3, train=6, val=3, test=0)
    jpgs = write_images(root / "train" / "class_0", 2, fmt="jpg", prefix="photo", size=64, seed=7)
    _truncate(jpgs[0], 0.6)  # truncated JPEG: only a full decode notices
    png = root / "train" / "class_1" / "img000.png"
    _truncate(png, 0.5)  # truncated PNG: already the header check notices
    (root / "train" / "class_1" / "Thumbs.db").write_bytes(b"\0" * 32)
    (root / "train" / "class_1" / ".DS_Store").write_bytes(b"\0" * 32)
    (root / "train" / "class_2" / "labels.csv").write_text("file,label\n")
    leak = root / "val" / "class_2" / "copied.png"
    shutil.copy(root / "train" / "class_2" / "img003.png", leak)
    dup = root / "train" / "class_2" / "again.png"
    shutil.copy(root / "train" / "class_2" / "img004.png", dup)
    # Odd but valid images: CMYK JPEG, 16-bit PNG, palette GIF.
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(root / "train" / "class_0" / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(
        root / "train" / "class_0" / "deep.png"
    )
    rgb.convert("P").save(root / "train" / "class_0" / "palette.gif")
    jfif = root / "train" / "class_0" / "photo.jfif"  # an image our extensions do not cover
    rgb.save(jfif, "JPEG")
    return {"truncated_jpg": jpgs[0], "truncated_png": png, "leak": leak, "dup": dup, "jfif": jfif}


def test_scan_finds_each_fault(tmp_path: Path) -> None:
    paths = messy_tree(tmp_path / "d")
    (tmp_path / "d" / "val" / "class_1").rename(
        tmp_path / "d" / "val_class_1_moved"
    )  # class missing from val
    (tmp_path / "d" / "val" / "class_9").mkdir()  # class only in val, and empty
    report = scan_dataset(tmp_path / "d", size=32)
    kinds = {(f.kind, Path(f.path).name) for f in report.findings}
    assert ("unreadable", paths["truncated_jpg"].name) in kinds
    assert ("unreadable", paths["truncated_png"].name) in kinds
    assert ("leak", "copied.png") in kinds
    assert ("duplicate", "img004.png") in kinds  # sorted: again.png is kept
    assert ("unsupported_image", "photo.jfif") in kinds
    assert ("not_image", "labels.csv") in kinds
    assert ("missing_class", "class_1") in kinds
    assert ("extra_class", "class_9") in kinds
    assert ("empty_class", "class_9") in kinds
    assert not any(
        Path(f.path).name in ("cmyk.jpg", "deep.png", "palette.gif") for f in report.findings
    )
    assert len(report.ignored) == 2  # Thumbs.db, .DS_Store
    errors = {f.kind for f in report.errors}
    assert errors == {"unreadable", "leak", "unsupported_image", "extra_class"}
    assert {f.kind for f in report.warnings} == {
        "duplicate",
        "not_image",
        "missing_class",
        "empty_class",
    }
    text = report.describe()
    assert "2 unreadable or truncated" in text and "leakage" in text


def test_verify_mode_misses_truncated_jpeg_full_mode_finds_it(tmp_path: Path) -> None:
    paths = messy_tree(tmp_path / "d")
    quick = {
        f.path
        for f in scan_dataset(tmp_path / "d", decode="verify").errors
        if f.kind == "unreadable"
    }
    full = {
        f.path for f in scan_dataset(tmp_path / "d", decode="full").errors if f.kind == "unreadable"
    }
    assert str(paths["truncated_png"]) in quick and str(paths["truncated_jpg"]) not in quick
    assert {str(paths["truncated_png"]), str(paths["truncated_jpg"])} == full


@pytest.mark.parametrize("cache", [True, False])
def test_datamodule_stops_with_list_of_files(tmp_path: Path, cache: bool) -> None:
    paths = messy_tree(tmp_path / "d")
    dm = ImageFolderDataModule(tmp_path / "d", image_size=16, num_workers=0, cache=cache)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message and "--data.on_bad skip" in message
    for key in ("truncated_jpg", "truncated_png", "leak", "jfif"):
        assert str(paths[key]) in message
    assert "2 unreadable" in message


@pytest.mark.parametrize("cache", [True, False])
def test_datamodule_skip_loses_no_image(tmp_path: Path, cache: bool) -> None:
    root = tmp_path / "d"
    paths = messy_tree(root)
    dm = ImageFolderDataModule(root, image_size=16, num_workers=0, cache=cache, on_bad="skip")
    with pytest.warns(UserWarning, match="skipping 4 file"):
        dm.setup("fit")
    skipped = {paths[k] for k in ("truncated_jpg", "truncated_png", "leak", "jfif")}
    assert {Path(p) for p in dm.skipped} == skipped
    images = {
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in {".png", ".jpg", ".gif", ".jfif"}
    }
    used = {Path(p) for split in ("train", "val") for p, _ in dm.datasets[split].samples}
    assert used | skipped == images and not used & skipped  # every image used or reported
    for split in ("train", "val"):
        for i in range(len(dm.datasets[split])):
            assert dm.datasets[split][i][0].shape == (3, 16, 16)


def test_cached_decode_failure_is_caught_after_quick_scan(tmp_path: Path) -> None:
    """The cache path scans headers only; a truncated JPEG then fails decode_all, which turns
    into a full scan of that split instead of a crash.
    """
    root = make_split_tree(tmp_path / "d", classes=2, train=4, val=2, test=0)
    jpg = write_images(root / "train" / "class_0", 1, fmt="jpg", prefix="photo", size=64, seed=3)[0]
    _truncate(jpg, 0.6)
    dm = ImageFolderDataModule(root, image_size=16, num_workers=0, cache=True, on_bad="skip")
    with pytest.warns(UserWarning, match="skipping 1 file"):
        dm.setup("fit")
    assert dm.skipped == [str(jpg)] and len(dm.datasets["train"]) == 8


def test_clean_tree_has_no_findings(split_tree: Path) -> None:
    report = scan_dataset(split_tree)
    assert report.ok and not report.findings
    assert report.images == {"train": 24, "val": 12, "test": 12}


def test_scan_progress_bar_on_large_datasets_only(
    split_tree: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_dataset(split_tree, decode="none")
    assert "scanning" not in capsys.readouterr().err  # 48 files: below the threshold
    monkeypatch.setattr(lit_vision.progress, "MIN_FILES", 48)
    scan_dataset(split_tree, decode="none")
    out, err = capsys.readouterr()
    assert "scanning" in err and not out
    scan_dataset(split_tree, decode="none", show_progress=False)
    assert capsys.readouterr() == ("", "")


def test_check_command(tmp_path: Path, split_tree: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "--data.root", str(split_tree)]) == 0
    assert "no problems found" in capsys.readouterr().out
    messy_tree(tmp_path / "m")
    assert main(["check", "--data.root", str(tmp_path / "m")]) == 1
    out = capsys.readouterr().out
    assert "ERRORS" in out and "copied.png" in out and "labels.csv" in out


def test_fit_stops_before_first_epoch(tmp_path: Path) -> None:
    messy_tree(tmp_path / "d")
    with pytest.raises(DataError, match="unreadable"):
        run_command(
            [
                "fit",
                "--config",
                "configs/gtsrb_cnn.yaml",
                "--data.root",
                str(tmp_path / "d"),
                "--trainer.fast_dev_run",
                "true",
                "--data.num_workers",
                "0",
                "--trainer.logger.init_args.save_dir",
                str(tmp_path / "tb"),
            ]
        )
    assert not (tmp_path / "tb").exists() or not list((tmp_path / "tb").rglob("*.ckpt"))
