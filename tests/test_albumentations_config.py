"""Any albumentations pipeline from a config: validated when the DataModule is built, run per sample."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import pytest
import torch
import yaml
from conftest import REPO

from lit_vision.__main__ import main
from lit_vision.data import DataError, ImageFolderDataModule

# What a user writes under data.init_args.albumentations (the A.to_dict format; A.save's YAML).
PIPELINE_YAML = """
transform:
  __class_fullname__: Compose
  transforms:
    - {__class_fullname__: HorizontalFlip, p: 0.5}
    - {__class_fullname__: RandomBrightnessContrast, brightness_limit: 0.2, contrast_limit: 0.2, p: 0.5}
    - __class_fullname__: CoarseDropout
      num_holes_range: [1, 2]
      hole_height_range: [2, 4]
      hole_width_range: [2, 4]
      p: 0.5
"""


def _dm(root: Path, **kwargs: object) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        root, image_size=16, batch_size=4, num_workers=0, disk_cache=False, **kwargs
    )


@pytest.mark.parametrize("form", ["mapping", "inner mapping", "yaml file", "A.save file"])
def test_pipeline_from_config_is_the_training_transform(
    split_tree: Path, tmp_path: Path, form: str
) -> None:
    spec: object = yaml.safe_load(PIPELINE_YAML)
    if form == "inner mapping":
        spec = spec["transform"]
    elif form == "yaml file":
        (tmp_path / "aug.yaml").write_text(PIPELINE_YAML)
        spec = str(tmp_path / "aug.yaml")
    elif form == "A.save file":
        A.save(
            A.from_dict(yaml.safe_load(PIPELINE_YAML)),
            str(tmp_path / "saved.yaml"),
            data_format="yaml",
        )
        spec = str(tmp_path / "saved.yaml")
    dm = _dm(split_tree, augment="sample", albumentations=spec)
    assert dm.batch_augment is None
    assert [type(t).__name__ for t in dm.custom_pipeline.transforms] == [
        "HorizontalFlip",
        "RandomBrightnessContrast",
        "CoarseDropout",
    ]
    dm.setup("fit")
    assert dm.datasets["train"].transform is dm.custom_pipeline
    assert dm.datasets["val"].transform.transforms == []  # evaluation stays the identity
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 16, 16) and y.shape == (4,)


@pytest.mark.parametrize(
    ("spec", "augment", "match"),
    [
        (
            {"transform": {"__class_fullname__": "NoSuchTransform", "p": 1.0}},
            "sample",
            "not a valid",
        ),
        (
            {
                "transform": {
                    "__class_fullname__": "Compose",
                    "transforms": [{"__class_fullname__": "Rotate", "limit": "wide", "p": 1.0}],
                }
            },
            "sample",
            "not a valid",
        ),
        ("/no/such/pipeline.yaml", "sample", "is not a file"),
        (
            {
                "transform": {
                    "__class_fullname__": "Compose",
                    "transforms": [
                        {"__class_fullname__": "RandomCrop", "height": 8, "width": 8, "p": 1.0}
                    ],
                }
            },
            "sample",
            "decoded size",
        ),
        (
            {
                "transform": {
                    "__class_fullname__": "Compose",
                    "transforms": [{"__class_fullname__": "Normalize", "p": 1.0}],
                }
            },
            "sample",
            "uint8",
        ),
        (yaml.safe_load(PIPELINE_YAML), "batch", "data.augment"),
    ],
    ids=[
        "unknown-transform",
        "bad-argument",
        "missing-file",
        "changes-size",
        "normalizes",
        "batch-mode",
    ],
)
def test_bad_pipeline_is_a_data_error_naming_the_key(
    split_tree: Path, spec: object, augment: str, match: str
) -> None:
    with pytest.raises(DataError, match=match) as info:
        _dm(split_tree, augment=augment, albumentations=spec)
    assert str(info.value).startswith("data.albumentations") and "\n" not in str(info.value)


def _fit(root: Path, tmp_path: Path, pipeline: Path) -> list[str]:
    return [
        "fit",
        "--config",
        str(REPO / "configs" / "gtsrb_cnn.yaml"),
        "--data.root",
        str(root),
        "--data.augment",
        "sample",
        "--data.albumentations",
        str(pipeline),
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "4",
        "--data.image_size",
        "16",
        "--trainer.fast_dev_run",
        "true",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
    ]


def test_pipeline_through_the_command_line(
    split_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "aug.yaml"
    good.write_text(PIPELINE_YAML)
    assert main(_fit(split_tree, tmp_path, good)) == 0

    bad = tmp_path / "bad.yaml"
    bad.write_text(PIPELINE_YAML.replace("HorizontalFlip", "HorizontallFlip"))
    capsys.readouterr()
    assert main(_fit(split_tree, tmp_path, bad)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "data.albumentations" in err[0], err
