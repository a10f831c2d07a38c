"""Smoke test on the real images in ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from lit_vision.__main__ import main, run_command


@pytest.mark.slow
def test_split_and_fit_on_real_crack_images(shared_data: Path, tmp_path: Path) -> None:
    raw = shared_data / "crack"
    n_images = sum(1 for p in raw.rglob("*.jpg"))
    root = tmp_path / "crack"
    counts = main(["split", "--src", str(raw), "--dst", str(root), "--val", "0.2", "--test", "0.1"])
    assert counts == 0
    assert sum(1 for p in root.rglob("*.jpg")) == n_images
    cli = run_command(
        [
            "fit",
            "--config",
            str(REPO / "configs/crack_cnn.yaml"),
            "--data.root",
            str(root),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "4",
            "--data.num_workers",
            "0",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "tb"),
        ]
    )
    assert cli.datamodule.classes == ["Negative", "Positive"]
    assert len(cli.datamodule.datasets["val"]) + len(cli.datamodule.datasets["train"]) < n_images
    assert 0.0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1.0
