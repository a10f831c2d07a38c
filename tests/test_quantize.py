"""export --int8: static int8 ONNX calibrated on training images, measured against fp32."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_split_tree
from test_predict import fit_tiny

from lit_vision.__main__ import main
from lit_vision.export import ExportError, onnx_session, run_export
from lit_vision.quantize import calibration_files


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_split_tree(tmp_path_factory.mktemp("int8") / "data", train=6, val=3, test=4)


@pytest.fixture(scope="module")
def ckpt(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_tiny(tree, tmp_path_factory.mktemp("int8_run"), epochs=1)


def int8_export(ckpt: Path, tree: Path, out: Path, **kw) -> dict:
    return run_export(
        str(ckpt),
        output_dir=str(out),
        name="m",
        check_images=str(tree / "test"),
        int8=True,
        quiet=True,
        **kw,
    )


def test_calibration_draw_is_stratified_and_seeded(tree: Path) -> None:
    names = ["class_0", "class_1", "class_2"]
    files = calibration_files(tree / "train", names, count=7)
    assert files == calibration_files(tree / "train", names, count=7)  # fixed seed
    assert files != calibration_files(tree / "train", names, count=7, seed=1)
    counts = Counter(Path(f).parent.name for f in files)
    assert sorted(counts.values()) == [2, 2, 3] and set(counts) == set(names)
    everything = calibration_files(tree / "train", names, count=256)
    assert len(everything) == 18 and len(set(everything)) == 18  # all 6 per class, no repeats
    with pytest.raises(ExportError, match="nope"):
        calibration_files(tree / "nope", names, count=4)


def test_int8_written_runs_and_is_reported(ckpt: Path, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    report = int8_export(ckpt, tree, out, int8_min_agreement=0.0)
    assert report["parity_ok"] and report["files"]["onnx_int8"] == "m.int8.onnx"
    contract = json.loads((out / "m.json").read_text())
    q = contract["int8"]
    # Calibrated on the checkpoint's own data root, train/ (all 18 images, 6 per class).
    assert q["calibration"]["root"] == str(tree / "train") and q["calibration"]["images"] == 18
    assert q["calibration"]["per_class"] == {"class_0": 6, "class_1": 6, "class_2": 6}
    assert 0.0 <= q["top1_agreement_vs_fp32"] <= 1.0 and q["images"] == 12
    assert q["labelled_images"] == 12 and 0.0 <= q["accuracy_int8"] <= 1.0
    assert q["accuracy_delta_points"] == pytest.approx(
        (q["accuracy_int8"] - q["accuracy_fp32"]) * 100, abs=1e-3
    )
    assert set(q["latency_ms_per_image"]) == {"batch1", "batch32"}
    assert q["size_bytes"]["int8"] == (out / "m.int8.onnx").stat().st_size
    assert q["size_bytes"]["fp32"] == (out / "m.onnx").stat().st_size
    # A real int8 graph: quantized weights, and it runs in onnxruntime at any batch size.
    graph = onnx.load(str(out / "m.int8.onnx")).graph
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)
    session = onnx_session(out / "m.int8.onnx")
    for n in (1, 5):
        probs = session.run(["probs"], {"images": np.zeros((n, 3, 32, 32), np.uint8)})[0]
        assert probs.shape == (n, 3) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no work files left


def test_int8_below_min_agreement_installs_nothing(ckpt: Path, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    report = int8_export(ckpt, tree, out, int8_min_agreement=1.01, calibration_count=6)
    assert not report["parity_ok"] and report["int8"]["calibration"]["images"] == 6
    assert sorted(p.name for p in out.iterdir()) == [".failed-m"]
    assert {p.name for p in (out / ".failed-m").iterdir()} == {
        "m.onnx",
        "m.int8.onnx",
        "m.safetensors",
        "m.json",
    }


def test_int8_needs_onnx_check_images_and_calibration(
    ckpt: Path, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["export", "--ckpt", str(ckpt), "--output_dir", str(tmp_path / "e"), "--int8", "true"]
    cases = {
        "--check_images": base,
        "keep onnx": [*base, "--check_images", str(tree / "test"), "--formats", "[safetensors]"],
        str(tmp_path / "none"): [
            *base,
            "--check_images",
            str(tree / "test"),
            "--calibration_root",
            str(tmp_path / "none"),
        ],
    }
    for words, args in cases.items():
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "e").exists()


def test_int8_missing_training_data_names_it(
    ckpt: Path, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint from another machine: its recorded data root is not here.
    import lit_vision.export as export

    gone = {"datamodule_hyper_parameters": {"root": str(tmp_path / "gone")}}
    monkeypatch.setattr(export, "read_checkpoint", lambda *a, **k: gone)
    with pytest.raises(ExportError, match="--calibration_root") as err:
        int8_export(ckpt, tree, tmp_path / "e")
    assert str(tmp_path / "gone" / "train") in str(err.value)
    monkeypatch.setattr(export, "read_checkpoint", lambda *a, **k: {})
    with pytest.raises(ExportError, match="records no data root"):
        int8_export(ckpt, tree, tmp_path / "e")
