"""Patch whitening (lit_vision.whitening) and CNNClassifier's frozen whitened first layer."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, quiet_trainer

from lit_vision.__main__ import main
from lit_vision.data import ImageFolderDataModule
from lit_vision.models import CNNClassifier
from lit_vision.whitening import patch_whitening_filters


def test_filters_whiten_the_patches() -> None:
    # Strongly correlated channels and neighbours: a blurred random field, one hue.
    g = torch.Generator().manual_seed(0)
    base = F.avg_pool2d(torch.randn(64, 1, 36, 36, generator=g), 5, stride=1)
    images = base * torch.tensor([1.0, 0.8, 0.3]).view(1, 3, 1, 1)
    images = images + 0.05 * torch.randn(images.shape, generator=g)
    filters = patch_whitening_filters(images, 54, eps=0.0)
    out = F.conv2d(images, filters[:27]).permute(1, 0, 2, 3).reshape(27, -1)
    cov = torch.cov(out)
    torch.testing.assert_close(cov, torch.eye(27), atol=0.05, rtol=0)
    torch.testing.assert_close(filters[27:], -filters[:27])
    raw = torch.cov(F.unfold(images, 3).transpose(1, 2).reshape(-1, 27).T)
    assert raw[0, 1] / raw.diagonal().mean() > 0.5  # the input really was correlated


def test_filters_keep_the_directions_of_most_variance() -> None:
    images = torch.randn(8, 3, 16, 16) * torch.tensor([5.0, 1.0, 0.2]).view(1, 3, 1, 1)
    filters = patch_whitening_filters(images, 2)  # one direction: the red channel's
    assert filters.shape == (2, 3, 3, 3)
    energy = filters[0].pow(2).sum(dim=(1, 2))
    assert energy[0] / energy.sum() > 0.9
    with pytest.raises(ValueError, match="at most 54"):
        patch_whitening_filters(images, 56)
    with pytest.raises(ValueError, match="even"):
        patch_whitening_filters(images, 3)


def test_fit_whitens_and_freezes_the_first_convolution(split_tree: Path, tmp_path: Path) -> None:
    dm = ImageFolderDataModule(split_tree, image_size=16, batch_size=8, cache="off")
    model = CNNClassifier(
        3, channels=(8, 16), hidden=0, input_norm="image", whiten=True, channels_last=False
    )
    before = model.net.features[0].weight.detach().clone()
    later = model.net.features[3].weight.detach().clone()
    trainer = quiet_trainer(tmp_path, 2, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    first = model.net.features[0].weight
    images = torch.stack([dm.datasets["train"][i][0] for i in range(len(dm.datasets["train"]))])
    expected = patch_whitening_filters(model.normalize(images).contiguous(), 8)
    assert not first.requires_grad and not torch.equal(first, before)
    torch.testing.assert_close(first, expected)  # computed at fit start, then never trained
    assert not torch.equal(model.net.features[3].weight, later)  # the rest did train


def test_whiten_rejects_a_first_block_wider_than_the_filters(
    split_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="model.whiten"):
        CNNClassifier(3, channels=(64,), whiten=True)
    argv = ["fit", "--config", str(REPO / "configs" / "small_cnn.yaml"), "--data.root"]
    argv += [str(split_tree), "--model.init_args.whiten", "true"]
    argv += ["--model.init_args.channels", "[64, 64]", "--trainer.logger", "false"]
    argv += ["--trainer.default_root_dir", str(tmp_path), "--trainer.fast_dev_run", "1"]
    assert main(argv) == 2  # a user error: one line naming the key, no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model.whiten") and "Traceback" not in "".join(err)


def test_whiten_without_an_indexable_train_split_is_one_line(
    split_tree: Path, tmp_path: Path
) -> None:
    model = CNNClassifier(3, channels=(8,), hidden=0, whiten=True)
    loader = ImageFolderDataModule(split_tree, image_size=16, batch_size=8, cache="off")
    loader.setup("fit")
    trainer = L.Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="model.whiten needs an ImageFolderDataModule"):
        trainer.fit(model, loader.train_dataloader(), loader.val_dataloader())
