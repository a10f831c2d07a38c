"""export: ONNX (dynamo exporter) + preprocessing JSON whose outputs match PyTorch on real images."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import pytest
import timm
import torch
from conftest import make_split_tree
from test_predict import fit_tiny

from lit_vision.__main__ import main
from lit_vision.checkpoints import CheckpointError
from lit_vision.data import ImageFolderDataModule
from lit_vision.export import INPUT_NAME, onnx_session, run_export
from lit_vision.images import load_image
from lit_vision.models import ImageClassifier
from lit_vision.predict import load_classifier, run_predict


class TimmClassifier(ImageClassifier):
    """A timm backbone behind the shared system, standing in for any ImageClassifier subclass.

    Args:
        num_classes: Number of classes.
        class_names: Class names.
        backbone: timm model name (random init: nothing downloads).
    """

    default_image_size = 40

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        backbone: str = "efficientnet_lite0",
    ) -> None:
        super().__init__(
            num_classes, class_names=class_names, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
        )
        self.save_hyperparameters()
        self.net = timm.create_model(backbone, pretrained=False, num_classes=num_classes)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_split_tree(tmp_path_factory.mktemp("export") / "data", train=6, val=3, test=4)


@pytest.fixture(scope="module")
def cnn_ckpt(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_tiny(tree, tmp_path_factory.mktemp("export_run"), epochs=1)


def check_export(ckpt: Path, images: Path, out: Path, trust: list[str] | None = None) -> dict:
    report = run_export(
        str(ckpt),
        trust_class=trust,
        output_dir=str(out),
        name="m",
        check_images=str(images),
        check_count=100,
        tolerance=1e-4,
        bench=False,
        quiet=True,
    )
    assert report["parity_ok"], report["parity"]
    assert set(report["files"]) == {"onnx", "safetensors"}  # TorchScript is opt-in now
    assert report["parity"]["onnxruntime"]["max_abs_diff_probs"] < 1e-4
    assert report["parity"]["onnxruntime"]["top1_agreement"] == 1.0
    assert report["parity"]["images"] == 12 and "real images" in report["parity"]["source"]
    contract = json.loads((out / "m.json").read_text())
    assert contract["input"]["dtype"] == "uint8" and contract["input"]["layout"] == "NCHW"
    assert contract["input"]["range"] == [0, 255] and contract["input"]["channels"] == "RGB"
    assert contract["class_names"] == ["class_0", "class_1", "class_2"]
    assert (out / contract["files"]["onnx"]).is_file()
    opsets = {o.domain: o.version for o in onnx.load(str(out / "m.onnx")).opset_import}
    assert opsets[""] >= 18  # the dynamo exporter's default opset here

    # Follow the contract by hand, without lit_vision's model code: decode, resize, uint8 NCHW.
    model, spec = load_classifier(ckpt, trust_class=trust or ())
    paths = sorted(str(p) for p in images.rglob("*.png"))
    size = contract["image_size"]
    pixels = np.stack([load_image(p, size).transpose(2, 0, 1) for p in paths])
    session = onnx_session(out / "m.onnx")
    with torch.no_grad():
        ref = model(torch.from_numpy(pixels)).softmax(1).numpy()
    for batch in (pixels[:1], pixels[:5], pixels):  # dynamic batch axis
        probs = session.run(["probs"], {INPUT_NAME: batch})[0]
        np.testing.assert_allclose(probs, ref[: len(batch)], atol=1e-4)
    return contract


def test_export_cnn_parity(tree: Path, cnn_ckpt: Path, tmp_path: Path) -> None:
    contract = check_export(cnn_ckpt, tree / "test", tmp_path / "export")
    assert (
        contract["image_size"] == 32
        and contract["model_class"] == "lit_vision.models.CNNClassifier"
    )


def test_export_timm_subclass_parity(tree: Path, tmp_path: Path) -> None:
    dm = ImageFolderDataModule(tree, batch_size=6, num_workers=0)
    model = TimmClassifier(dm.num_classes, dm.classes, backbone="mobilenetv3_small_050")
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=1,
    )
    trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / "timm.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="TimmClassifier"):
        load_classifier(ckpt)  # a class outside lit_vision: refused unless the user trusts it
    trust = [f"{TimmClassifier.__module__}.TimmClassifier"]
    loaded, spec = load_classifier(ckpt, trust_class=trust)
    assert (
        type(loaded).__name__ == "TimmClassifier" and spec.image_size == 40
    )  # the model's preferred size
    assert spec.mean == pytest.approx([0.5] * 3)
    contract = check_export(ckpt, tree / "test", tmp_path / "export", trust)
    assert contract["mean"] == pytest.approx([0.5] * 3) and contract["std"] == pytest.approx(
        [0.25] * 3
    )
    # predict runs on the same subclass
    result = run_predict(
        ckpt, [tree / "test"], tmp_path / "p.csv", device="cpu", quiet=True, trust_class=trust
    )
    assert len(result.rows) == 12 and result.accuracy is not None


def test_export_cli_without_images_uses_random_pixels(cnn_ckpt: Path, tmp_path: Path) -> None:
    code = main(
        [
            "export",
            "--ckpt",
            str(cnn_ckpt),
            "--output_dir",
            str(tmp_path / "e"),
            "--formats",
            "[onnx]",
            "--check_count",
            "8",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "e" / "model.json").read_text())
    assert "random" in report["parity"]["source"] and set(report["files"]) == {"onnx"}
    assert report["parity"]["onnxruntime"]["max_abs_diff_probs"] < 1e-4


def test_deprecated_exporters_are_opt_in_and_warn(cnn_ckpt: Path, tree: Path, tmp_path: Path):
    # TorchScript and the legacy ONNX exporter still work when asked for, and torch's
    # deprecation warnings reach the user (nothing silences them any more).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = run_export(
            str(cnn_ckpt),
            output_dir=str(tmp_path / "e"),
            formats=["onnx", "torchscript"],
            dynamo=False,
            opset=17,
            check_images=str(tree / "test"),
            quiet=True,
        )
    assert any(w.category is FutureWarning and "torch.jit.trace" in str(w.message) for w in caught)
    assert any("legacy TorchScript-based ONNX export" in str(w.message) for w in caught)
    assert report["parity_ok"] and set(report["files"]) == {"onnx", "torchscript"}
    for runtime in ("onnxruntime", "torchscript"):
        assert report["parity"][runtime]["max_abs_diff_probs"] < 1e-4
    opsets = {
        o.domain: o.version for o in onnx.load(str(tmp_path / "e" / "model.onnx")).opset_import
    }
    assert opsets[""] == 17


@pytest.mark.parametrize("input_norm", ["equalize", "local", "clahe"])
def test_export_small_cnn_parity(tree: Path, tmp_path: Path, input_norm: str) -> None:
    """small_cnn.yaml with the graph options (early pooling, in-graph contrast) exports exactly."""
    config = str(Path(__file__).resolve().parents[1] / "configs" / "small_cnn.yaml")
    options = ("--model.init_args.input_norm", input_norm, "--model.init_args.early_pool", "true")
    ckpt = fit_tiny(tree, tmp_path / "run", 1, config, *options)
    model, _ = load_classifier(ckpt)
    assert model.hparams.early_pool and model.hparams.input_norm == input_norm
    check_export(ckpt, tree / "test", tmp_path / "export")
