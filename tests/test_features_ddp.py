"""The frozen-feature cache under 2-process CPU DDP: shards computed once each, gathered in order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, make_split_tree

from lit_vision.__main__ import run_command

CONFIG = str(REPO / "configs" / "transfer.yaml")
TINY = [
    "--data.num_workers",
    "0",
    "--data.batch_size",
    "4",
    "--data.image_size",
    "32",
    "--model.init_args.backbone",
    "test_efficientnet",
    "--model.init_args.pretrained",
    "false",
    "--model.init_args.unfreeze_blocks",
    "0",
    "--model.init_args.max_head_epochs",
    "2",
    "--trainer.enable_progress_bar",
    "false",
]


def test_ddp_ranks_compute_their_shards_and_gather_them_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 15 val images over 2 ranks: shards of 8 and 7, padded for the gather, trimmed after.
    root = make_split_tree(tmp_path / "data", classes=3, train=7, val=5, test=0, size=24)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    # 24 px images: --small_images null keeps the transfer recipe under test.
    cmd = [sys.executable, "-m", "lit_vision", "fit", "--config", CONFIG, "--small_images", "null"]
    cmd += ["--config", str(REPO / "configs" / "ddp_cpu.yaml"), "--data.root", str(root)]
    cmd += ["--trainer.logger.init_args.save_dir", str(tmp_path / "tb"), *TINY]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = done.stderr + done.stdout
    assert done.returncode == 0, log[-3000:]
    assert "world size 2" in log
    # Rank 0 stored the gathered features of the whole split, once.
    folder = root / ".lit_vision_cache" / "features"
    stored = {p.name.split("-")[0]: p for p in folder.glob("*-0.npy")}
    assert sorted(stored) == ["train", "val"]
    ddp_val = torch.from_numpy(np.load(stored["val"]))
    assert ddp_val.shape[:2] == (1, 15)

    # One process, nothing stored or reused: the same features, image by image.
    monkeypatch.chdir(tmp_path)
    cli = run_command(
        ["fit", "--config", CONFIG, "--small_images", "null", "--data.root", str(root)]
        + ["--data.disk_cache", "false", "--trainer.logger", "false", *TINY]
    )
    single = cli.model._features
    assert not cli.model._reused
    torch.testing.assert_close(ddp_val, single["val"].features, atol=1e-5, rtol=1e-4)
    ddp_train = torch.from_numpy(np.load(stored["train"]))
    assert ddp_train.shape[:2] == (2, 21)  # the clean view and one augmented view per image
    # The clean view does not depend on how the images were sharded.
    torch.testing.assert_close(ddp_train[0], single["train"].features[0], atol=1e-5, rtol=1e-4)
