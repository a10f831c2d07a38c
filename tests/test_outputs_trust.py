"""Trustworthy outputs: export installs a checked set or nothing; predict never clobbers a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import make_split_tree
from safetensors import safe_open
from safetensors.torch import load_file
from test_predict import fit_tiny

import lit_vision.export as export
import lit_vision.predict as predict
from lit_vision.export import ExportError, onnx_session, run_export
from lit_vision.predict import OutputExistsError, load_classifier, run_predict


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """A 2-class and a 3-class checkpoint (one epoch on tiny trees)."""
    base = tmp_path_factory.mktemp("trust")
    out = {}
    for n in (2, 3):
        tree = make_split_tree(base / f"data{n}", classes=n, train=4, val=2, test=2)
        out[n] = fit_tiny(tree, base / f"run{n}", epochs=1)
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def quick_export(ckpt: Path, out: Path, **kw) -> dict:
    return run_export(str(ckpt), output_dir=str(out), name="m", check_count=4, quiet=True, **kw)


def test_failed_export_keeps_previous_set_success_replaces_it(
    ckpts: dict[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    first = quick_export(ckpts[2], out)
    assert first["parity_ok"] and set(first["files"]) == {"onnx", "safetensors"}
    (out / "README.txt").write_text("mine\n")  # an unrelated file: never touched
    before = snapshot(out)
    assert set(before) == {"m.onnx", "m.safetensors", "m.json", "README.txt"}

    # 1) Parity fails for the 3-class model: nothing installed, failed set kept for inspection.
    real_parity = export.parity

    def bad_parity(*args, **kwargs):
        result = real_parity(*args, **kwargs)
        result["onnxruntime"]["max_abs_diff_probs"] = 1.0
        return result

    monkeypatch.setattr(export, "parity", bad_parity)
    report = quick_export(ckpts[3], out)
    assert not report["parity_ok"]
    failed = out / ".failed-m"
    assert report["failed_dir"] == str(failed)
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".failed-m")} == before
    assert json.loads((failed / "m.json").read_text())["num_classes"] == 3
    assert {p.name for p in failed.iterdir()} == {"m.onnx", "m.safetensors", "m.json"}
    assert not list(out.glob(".m.export-*"))
    monkeypatch.setattr(export, "parity", real_parity)

    # 2) The ONNX checker rejects the written file: exception, previous set byte-identical.
    def reject(*args, **kwargs):
        raise onnx.checker.ValidationError("injected checker failure")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    with pytest.raises(onnx.checker.ValidationError, match="injected"):
        quick_export(ckpts[3], out)
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".failed-m")} == before
    assert not list(out.glob(".m.export-*"))
    monkeypatch.undo()

    # 3) Success replaces the whole set; the stale failed set goes, the unrelated file stays.
    report = quick_export(ckpts[3], out)
    assert report["parity_ok"]
    after = snapshot(out)
    assert set(after) == set(before) and after["README.txt"] == before["README.txt"]
    assert all(after[f] != before[f] for f in ("m.onnx", "m.safetensors"))
    contract = json.loads(after["m.json"])
    assert contract["num_classes"] == 3 and contract["files"]["safetensors"] == "m.safetensors"
    probs = onnx_session(out / "m.onnx").run(
        ["probs"], {"images": np.zeros((1, 3, 32, 32), np.uint8)}
    )
    assert probs[0].shape == (1, 3)
    with safe_open(str(out / "m.safetensors"), "pt") as fh:
        assert json.loads(fh.metadata()["class_names"]) == contract["class_names"]
    assert not failed.exists() and not list(out.glob(".m.export-*"))


def test_export_output_dir_that_is_a_file_is_one_line_error(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file\n")
    # The checkpoint does not even exist: the destination is checked before anything loads.
    for output_dir in (taken, taken / "sub"):
        with pytest.raises(ExportError, match="is a file, not a folder") as err:
            run_export(str(tmp_path / "nope.ckpt"), output_dir=str(output_dir), quiet=True)
        assert str(taken) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ExportError, match="plain file name"):
        run_export(str(tmp_path / "nope.ckpt"), output_dir=str(tmp_path / "e"), name="../m")
    assert taken.read_text() == "a file\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "taken"
    ]


def test_safetensors_round_trips(ckpts: dict[int, Path], tmp_path: Path) -> None:
    out = tmp_path / "export"
    report = quick_export(ckpts[3], out, formats=["safetensors"])
    assert set(report["files"]) == {"safetensors"} and report["parity_ok"]
    assert sorted(p.name for p in out.iterdir()) == ["m.json", "m.safetensors"]
    with safe_open(str(out / "m.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "pt" and meta["lit_vision_format"] == report["format"]
    assert meta["model_class"] == "lit_vision.models.CNNClassifier" and meta["image_size"] == "32"
    assert json.loads(meta["class_names"]) == ["class_0", "class_1", "class_2"]

    model, spec = load_classifier(ckpts[3])
    fresh, _ = load_classifier(ckpts[3])
    with torch.no_grad():
        for p in fresh.parameters():  # make sure the weights below come from the file
            p.add_(torch.randn_like(p))
    fresh.load_state_dict(load_file(str(out / "m.safetensors")), strict=True)
    fresh.mean.copy_(torch.tensor(json.loads(meta["mean"])).view_as(fresh.mean))
    fresh.std.copy_(torch.tensor(json.loads(meta["std"])).view_as(fresh.std))
    x = torch.randint(0, 256, (4, 3, spec.image_size, spec.image_size), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


# ---- predict --output ----


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_split_tree(tmp_path / "imgs", classes=3, train=1, val=1, test=0) / "val"


def test_predict_refuses_existing_csv_before_loading(
    ckpts: dict[int, Path], images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "preds.csv"
    out.write_text("my precious results\n")

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load when the output is taken")

    monkeypatch.setattr(predict, "load_classifier", no_load)
    with pytest.raises(OutputExistsError, match="--overwrite true") as err:
        run_predict(ckpts[3], [images], out, device="cpu", quiet=True)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert out.read_text() == "my precious results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "preds.csv"]


def test_predict_overwrite_replaces_csv(
    ckpts: dict[int, Path], images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.csv"
    out.write_text("old\n")
    result = run_predict(ckpts[3], [images], out, device="cpu", overwrite=True, quiet=True)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("path,status") and len(lines) == 1 + len(result.rows) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "preds.csv"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_predict_leaves_users_tmp_file_alone(
    ckpts: dict[int, Path], images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.csv"
    user_tmp = tmp_path / "preds.csv.tmp"  # the name the old code wrote to and renamed away
    user_tmp.write_text("user data\n")
    run_predict(ckpts[3], [images], out, device="cpu", quiet=True)
    assert user_tmp.read_text() == "user data\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "preds.csv", "preds.csv.tmp"]


def test_predict_output_folder_refused_nothing_left(
    ckpts: dict[int, Path], images: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="is a folder") as err:
        run_predict(ckpts[3], [images], folder, device="cpu", overwrite=True, quiet=True)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "results"]
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


def test_predict_write_failure_leaves_no_partial_file(
    ckpts: dict[int, Path], images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, spec = load_classifier(ckpts[3])
    files, _ = predict.collect_inputs([images], spec.class_names)
    result = predict.predict_files(model, spec, files, workers=1)

    def broken(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(predict.np, "argsort", broken)
    with pytest.raises(OSError, match="injected"):
        predict.write_csv(result, tmp_path / "out" / "p.csv")
    assert [p.name for p in (tmp_path / "out").iterdir()] == []
