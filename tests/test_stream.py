"""litdata streams: optimize a split tree, train and validate from it, refuse what it did not write."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_split_tree

from lit_vision.__main__ import main, run_command
from lit_vision.errors import ConfigError, DataError
from lit_vision.stream import read_meta, require_litdata

pytest.importorskip("litdata")

GTSRB = str(REPO / "configs" / "gtsrb_cnn.yaml")
STREAM = str(REPO / "configs" / "stream.yaml")
TINY = [
    "--data.batch_size",
    "4",
    "--data.num_workers",
    "0",
    "--model.init_args.channels",
    "[8, 16]",
    "--model.init_args.hidden",
    "16",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.logger",
    "false",
    "--trainer.accelerator",
    "cpu",
]


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class split tree written as a 16 px stream."""
    base = tmp_path_factory.mktemp("stream")
    root = make_split_tree(base / "data", classes=3, train=6, val=3, test=0, size=20)
    out = base / "stream"
    code = main(["optimize", "--data.root", str(root), "--output", str(out), "--image_size", "16"])
    assert code == 0
    return out


def test_optimize_writes_self_describing_splits(stream: Path) -> None:
    meta = read_meta(str(stream / "train"))
    assert meta["classes"] == ["class_0", "class_1", "class_2"] and meta["image_size"] == 16
    assert meta["class_counts"] == [6, 6, 6] and read_meta(str(stream / "val"))["images"] == 9
    assert not (stream / "test").exists()
    # Written in a shuffled order (litdata only shuffles chunks and windows of items): a
    # class-sorted stream trains on one-class batches and does not learn.
    from litdata import StreamingDataset

    train = StreamingDataset(str(stream / "train"))
    written = [int(train[i]["index"]) for i in range(len(train))]
    assert sorted(written) == list(range(18)) and written != sorted(written)


def test_fit_and_validate_from_a_stream(stream: Path, tmp_path: Path) -> None:
    args = ["--data.root", str(stream), "--data.image_size", "16", *TINY]
    cli = run_command(
        [
            "fit",
            "--config",
            GTSRB,
            "--config",
            STREAM,
            *args,
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]  # fmt: skip
    )
    dm = cli.datamodule
    assert type(dm).__name__ == "StreamingImageDataModule" and dm.num_classes == 3
    assert cli.model.hparams.num_classes == 3 and list(cli.model.class_names) == dm.classes
    assert cli.trainer.global_step == 18 // 4  # drop_last: whole batches only
    ckpt = next(tmp_path.rglob("*.ckpt"))
    # The checkpoint carries the inference contract (predict/export) at the stream's size.
    spec = torch.load(ckpt, weights_only=True)["lit_vision"]
    assert spec["image_size"] == 16 and spec["class_names"] == dm.classes
    validated = run_command(
        [
            "validate",
            "--config",
            GTSRB,
            "--config",
            STREAM,
            *args,
            "--ckpt_path",
            str(ckpt),
            "--trainer.default_root_dir",
            str(tmp_path / "validate"),
        ]  # fmt: skip
    )
    # Every validation image counted once: accuracy is k/9.
    acc = float(validated.trainer.callback_metrics["val/acc"])
    assert round(acc * 9) == pytest.approx(acc * 9, abs=1e-4)


def test_other_image_size_is_one_line(stream: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fit", "--config", GTSRB, "--config", STREAM, "--data.root", str(stream)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "holds 16px images" in err[-1] and len(err) == 1, err


def test_unsafe_stream_formats_are_refused(stream: Path, tmp_path: Path) -> None:
    index = json.loads((stream / "train" / "index.json").read_text())
    index["config"]["data_format"] = ["pickle", "int"]  # unpickling would run code
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="not lit_vision's"):
        read_meta(str(tmp_path / "train"))
    with pytest.raises(DataError, match="cannot read"):
        read_meta(str(stream.parent / "data"))  # not a stream at all: no index


def test_missing_litdata_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "litdata", None)
    with pytest.raises(ConfigError, match=r"pip install 'lit_vision\[stream\]'"):
        require_litdata()
    root = make_split_tree(tmp_path / "d", classes=2, train=2, val=1, test=0, size=8)
    assert main(["optimize", "--data.root", str(root), "--output", str(tmp_path / "s")]) == 2
