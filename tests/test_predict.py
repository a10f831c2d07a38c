"""predict: one CSV row per input file, unreadable files flagged, accuracy equal to `test`."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_split_tree, write_images
from PIL import Image

from lit_vision.__main__ import main, run_command
from lit_vision.models import CHECKPOINT_KEY
from lit_vision.predict import CheckpointError, load_classifier, run_predict

CONFIG = "configs/gtsrb_cnn.yaml"


def fit_tiny(tree: Path, out: Path, epochs: int = 3, config: str = CONFIG, *extra: str) -> Path:
    """Train a config (gtsrb_cnn) for a few steps on a tiny tree; return last.ckpt."""
    main(
        [
            "fit",
            "--config",
            config,
            *extra,
            "--data.root",
            str(tree),
            "--data.num_workers",
            "0",
            "--data.batch_size",
            "8",
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger.init_args.save_dir",
            str(out / "tb"),
        ]
    )
    (ckpt,) = out.glob("tb/*/version_*/checkpoints/last.ckpt")
    return ckpt


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-class tree and a checkpoint trained on it."""
    base = tmp_path_factory.mktemp("predict")
    tree = make_split_tree(base / "data", test=6)
    return tree, fit_tiny(tree, base / "run")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_checkpoint_records_inference_spec(trained: tuple[Path, Path]) -> None:
    _, ckpt = trained
    meta = torch.load(ckpt, map_location="cpu", weights_only=False)[CHECKPOINT_KEY]
    assert meta["model_class"] == "lit_vision.models.CNNClassifier"
    assert meta["class_names"] == ["class_0", "class_1", "class_2"]
    assert meta["image_size"] == 32
    assert meta["input"]["dtype"] == "uint8" and meta["train_flips"] == {
        "hflip": False,
        "vflip": False,
    }
    assert len(meta["mean"]) == 3 and len(meta["std"]) == 3


def test_predict_lists_every_file_and_flags_unreadable(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    tree, ckpt = trained
    folder = tmp_path / "in"
    shutil.copytree(tree / "test", folder)
    # Deeper folders, other modes and formats, and files that are not images.
    write_images(folder / "class_1" / "sub" / "deeper", 2, seed=7, label=1, fmt="jpg")
    write_images(folder / "class_2", 1, seed=8, label=2, mode="L", prefix="gray")
    write_images(folder / "class_0", 1, seed=9, label=0, mode="RGBA", prefix="alpha")
    write_images(folder / "unsorted", 1, seed=10, label=0, prefix="loose")
    good = Path(write_images(tmp_path / "src", 1, size=64, fmt="png")[0]).read_bytes()
    (folder / "class_0" / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "full.jpg", quality=95)
    (folder / "class_1" / "truncated.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "class_2" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(200))
    (folder / "class_2" / "empty.png").write_bytes(b"")
    bad = {"truncated.png", "truncated.jpg", "notes.txt", "Thumbs.db", "empty.png"}
    extra_file = write_images(tmp_path / "single", 1, seed=11, label=2)[0]

    out = tmp_path / "preds.csv"
    main(
        [
            "predict",
            "--ckpt",
            str(ckpt),
            "--input",
            str(folder),
            str(extra_file),
            "--output",
            str(out),
            "--topk",
            "2",
            "--device",
            "cpu",
            "--batch_size",
            "4",
        ]
    )
    rows = read_rows(out)
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file()) + [str(extra_file)]
    assert [r["path"] for r in rows] == files  # one row per input file, in order, none dropped
    for r in rows:
        name = Path(r["path"]).name
        if name in bad:
            assert r["status"] == "error" and r["error"], r
            assert r["pred"] == ""
        else:
            assert r["status"] == "ok" and r["error"] == "", r
            assert r["pred"] == r["top1"] and r["pred"] in {"class_0", "class_1", "class_2"}
            assert 1.0 >= float(r["top1_prob"]) >= float(r["top2_prob"]) >= 0.0
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "recognised" in by_name["notes.txt"]["error"]
    assert by_name["loose000.png"]["true"] == ""  # unsorted/ is not a class: unlabelled
    assert by_name["img000.jpg"]["true"] == "class_1"  # labelled by its top folder, at any depth
    assert by_name["truncated.png"]["true"] == "class_0"
    assert by_name["Thumbs.db"]["true"] == ""  # not an image file: listed, never scored


def test_predict_accuracy_matches_test(trained: tuple[Path, Path], tmp_path: Path) -> None:
    tree, ckpt = trained
    cli = run_command(
        [
            "test",
            "--config",
            CONFIG,
            "--data.root",
            str(tree),
            "--ckpt_path",
            str(ckpt),
            "--data.num_workers",
            "0",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    test_acc = float(cli.trainer.callback_metrics["test/acc"])
    result = run_predict(ckpt, [tree / "test"], tmp_path / "p.csv", device="cpu", quiet=True)
    assert len(result.labelled) == 18
    assert result.accuracy == pytest.approx(test_acc, abs=1e-6)
    # Not a vacuous match: the model separates the classes somewhat.
    assert len({int(np.argmax(r.probs)) for r in result.rows}) > 1


def test_predict_interval_over_the_splits_groups(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder from a grouped split: the interval counts groups, and errors are listed by group."""
    tree, ckpt = trained
    split = tmp_path / "split"
    for i, image in enumerate(sorted((tree / "test").rglob("*.png"))):
        target = split / "test" / image.parent.name / f"{i % 2}_{image.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    (split / "split_plan.json").write_text('{"group_regex": "^(\\\\d)_"}')
    args = ["predict", "--ckpt", str(ckpt), "--input", str(split / "test"), "--progress", "false"]
    assert main([*args, "--output", str(tmp_path / "a.csv")]) == 0
    grouped = capsys.readouterr().out
    assert "bootstrap over 6 groups" in grouped and "in groups by ^(\\d)_" in grouped, grouped
    assert main([*args, "--output", str(tmp_path / "b.csv"), "--group_regex", "none"]) == 0
    assert "interval" in (plain := capsys.readouterr().out) and "18 images)" in plain, plain
    assert main([*args, "--output", str(tmp_path / "c.csv"), "--group_regex", "("]) == 2
    assert "--group_regex '(' is not a valid regex" in capsys.readouterr().err


def test_hflip_tta_averages_mirror(trained: tuple[Path, Path], tmp_path: Path) -> None:
    tree, ckpt = trained
    plain = run_predict(ckpt, [tree / "val"], tmp_path / "a.csv", device="cpu", quiet=True)
    tta = run_predict(
        ckpt, [tree / "val"], tmp_path / "b.csv", device="cpu", tta="hflip", quiet=True
    )
    model, spec = load_classifier(ckpt)
    from lit_vision.images import load_image

    img = torch.from_numpy(load_image(tta.rows[0].path, spec.image_size)).permute(2, 0, 1)[None]
    with torch.no_grad():
        # The checkpoint's calibration temperature (fitted in fit) applies to each view.
        mirror = (model(img.flip(-1)) / spec.temperature).softmax(1)[0].numpy()
    np.testing.assert_allclose(tta.rows[0].probs, (plain.rows[0].probs + mirror) / 2, atol=1e-6)
    # auto: no flips in training -> no TTA
    auto = run_predict(
        ckpt, [tree / "val"], tmp_path / "c.csv", device="cpu", tta="auto", quiet=True
    )
    assert auto.tta == "none"


def test_checkpoint_is_self_contained(tmp_path: Path) -> None:
    tree = make_split_tree(tmp_path / "data", classes=2, train=4, val=2, test=3)
    ckpt = fit_tiny(tree, tmp_path / "run", epochs=1)
    held_out = tmp_path / "held_out"
    shutil.copytree(tree / "test", held_out)
    moved = tmp_path / "elsewhere" / "model.ckpt"
    moved.parent.mkdir()
    shutil.move(ckpt, moved)
    shutil.rmtree(tree)
    shutil.rmtree(tmp_path / "run")  # config.yaml and logs are gone too
    result = run_predict(moved, [held_out], tmp_path / "p.csv", device="cpu", quiet=True)
    assert len(result.rows) == 6 and result.n_unreadable == 0 and result.accuracy is not None


def test_predict_user_errors(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ckpt = trained
    with pytest.raises(CheckpointError, match="not found"):
        run_command(["predict", "--ckpt", str(tmp_path / "nope.ckpt"), "--input", str(tmp_path)])
    (tmp_path / "junk.ckpt").write_text("junk")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        run_command(["predict", "--ckpt", str(tmp_path / "junk.ckpt"), "--input", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        run_command(["predict", "--ckpt", str(ckpt), "--input", str(tmp_path / "missing_dir")])
    # The shell's entry point: one error line and exit code 2 for each.
    capsys.readouterr()
    assert main(["predict", "--ckpt", str(tmp_path / "junk.ckpt"), "--input", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "junk.ckpt" in err and err.count("\n") == 1


def test_progress_bar_only_on_a_terminal_for_long_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from lit_vision.progress import progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert not progress_bar(300, "predicting").disable
    assert progress_bar(300, "predicting", enabled=False).disable  # --progress false
    assert progress_bar(10, "predicting").disable  # short: no flicker
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress_bar(300, "predicting").disable  # logs, pipes, CI
