"""spec: one InferenceSpec for the checkpoint entry and the export contract, built duck-typed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import albumentations as A
import pytest
import torch

from lit_vision.checkpoints import CheckpointError
from lit_vision.export import INPUT_NAME
from lit_vision.export import preprocessing_contract as export_contract
from lit_vision.models import CHECKPOINT_KEY as models_key
from lit_vision.models import CNNClassifier
from lit_vision.predict import InferenceSpec as PredictInferenceSpec
from lit_vision.predict import load_classifier
from lit_vision.spec import (
    CHECKPOINT_KEY,
    InferenceSpec,
    inference_spec,
    preprocessing_contract,
)


def _model(**kw) -> CNNClassifier:
    kw = {"class_names": ["a", "b", "c"], "channels": (4,), "hidden": 0, **kw}
    return CNNClassifier(3, **kw).eval()


def test_old_import_paths_still_work() -> None:
    assert PredictInferenceSpec is InferenceSpec
    assert export_contract is preprocessing_contract and INPUT_NAME == "images"
    assert models_key == CHECKPOINT_KEY == "lit_vision"


def test_spec_without_datamodule_uses_the_model_and_identity() -> None:
    model = _model(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    spec = inference_spec(model)
    assert spec.class_names == ["a", "b", "c"]
    assert spec.image_size is None  # a scratch CNN has no preferred size
    assert spec.mean == [0.5] * 3 and spec.std == [0.25] * 3
    assert spec.transform.transforms == [] and spec.train_flips == {"hflip": False, "vflip": False}
    assert spec.model_class == "lit_vision.models.CNNClassifier"


def test_spec_reads_only_public_datamodule_settings() -> None:
    transform = A.Compose([A.CenterCrop(24, 24)])
    dm = SimpleNamespace(image_size=32, eval_transform=transform, hparams={"hflip": True})
    spec = inference_spec(_model(), dm)
    assert spec.image_size == 32 and spec.transform is transform
    assert spec.train_flips == {"hflip": True, "vflip": False}
    # No eval_transform attribute: the identity, as the DataModule evaluates today.
    spec = inference_spec(_model(), SimpleNamespace(image_size=48, hparams={}))
    assert spec.image_size == 48 and spec.transform.transforms == []


def test_checkpoint_entry_keeps_its_format_and_round_trips() -> None:
    model = _model()
    spec = inference_spec(model, SimpleNamespace(image_size=32, hparams={"vflip": True}))
    entry = spec.to_checkpoint()
    assert list(entry) == [
        "format",
        "model_class",
        "class_names",
        "image_size",
        "mean",
        "std",
        "eval_transform",
        "input",
        "train_flips",
        # Added within format 1: readers that ignore them get the plain softmax.
        "temperature",
        "calibration",
    ]
    assert entry["format"] == 1 and entry["image_size"] == 32
    assert entry["temperature"] == 1.0 and entry["calibration"] == {}  # never calibrated
    assert entry["input"] == {
        "dtype": "uint8",
        "range": [0, 255],
        "layout": "NCHW",
        "channels": "RGB",
        "resize": "bilinear to image_size x image_size, aspect ratio not kept",
    }
    back = InferenceSpec.from_checkpoint(entry, model, spec.model_class)
    assert back.to_checkpoint() == entry
    assert (
        InferenceSpec.from_checkpoint(entry, model, spec.model_class, image_size=64).image_size
        == 64
    )
    assert InferenceSpec.from_checkpoint({}, model, spec.model_class).image_size is None
    old = {k: v for k, v in entry.items() if k not in ("temperature", "calibration")}
    assert InferenceSpec.from_checkpoint(old, model, spec.model_class).temperature == 1.0


def test_export_contract_comes_from_the_same_spec() -> None:
    spec = inference_spec(_model(), SimpleNamespace(image_size=40, hparams={}))
    contract = preprocessing_contract(spec)
    assert contract["format"] == "lit_vision-export/1" and contract["num_classes"] == 3
    assert contract["input"]["name"] == "images" and contract["input"]["shape"] == [
        "batch",
        3,
        40,
        40,
    ]
    assert contract["preprocessing"]["eval_transform"] == spec.to_checkpoint()["eval_transform"]


def _save(model: CNNClassifier, path: Path, **hparams) -> Path:
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": {**model.hparams, **hparams},
            CHECKPOINT_KEY: inference_spec(
                model, SimpleNamespace(image_size=16, hparams={})
            ).to_checkpoint(),
        },
        path,
    )
    return path


def test_checkpoint_saying_avgmax_for_the_concatenation_still_loads(tmp_path: Path) -> None:
    """Checkpoints from before the rename meant concatenation by ``avgmax``."""
    model = _model(pooling="catavgmax", pool_grid=2)
    path = _save(model, tmp_path / "old.ckpt", pooling="avgmax")
    loaded, spec = load_classifier(path)
    assert loaded.hparams["pooling"] == "catavgmax" and spec.image_size == 16
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(loaded(x), model(x))


def test_checkpoint_with_wrong_weights_names_the_first_reason(tmp_path: Path) -> None:
    path = _save(_model(pooling="catavgmax"), tmp_path / "bad.ckpt", pooling="avgmax", hidden=7)
    with pytest.raises(CheckpointError, match="does not rebuild a CNNClassifier"):
        load_classifier(path)
