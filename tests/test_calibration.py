"""Calibration: the fitted temperature, ECE, the fit callback, `calibrate`, and `--min_confidence`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_split_tree
from test_predict import fit_tiny, read_rows

from lit_vision.__main__ import main
from lit_vision.calibration import (
    calibrate_logits,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from lit_vision.errors import CheckpointError
from lit_vision.predict import load_classifier, predict_probs
from lit_vision.spec import CHECKPOINT_KEY, preprocessing_contract, read_temperature


def test_fit_temperature_recovers_a_known_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 6, generator=g) * 2
    targets = torch.multinomial(true_logits.softmax(dim=1), 1, generator=g).squeeze(1)
    # Logits three times too sharp: the calibrated temperature is 3, the ECE falls.
    summary = calibrate_logits(true_logits * 3, targets)
    assert summary["temperature"] == pytest.approx(3.0, rel=0.08)
    assert summary["ece_after"] < summary["ece_before"] / 3
    assert summary["nll_after"] < summary["nll_before"]
    assert summary["accuracy"] == pytest.approx(
        float((true_logits.argmax(1) == targets).float().mean())
    )


def test_ece_is_the_weighted_gap_of_the_reliability_bins() -> None:
    g = torch.Generator().manual_seed(1)
    probs = (torch.randn(500, 4, generator=g) * 3).softmax(dim=1)
    targets = torch.randint(0, 4, (500,), generator=g)
    bins = reliability_bins(probs, targets)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 500
    by_hand = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert expected_calibration_error(probs, targets) == pytest.approx(by_hand / 500, abs=1e-5)


def test_fit_temperature_degenerate_inputs() -> None:
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0
    # Every prediction right at any temperature: the NLL keeps falling as T -> 0; clamped.
    logits = torch.eye(3).repeat(10, 1) * 5
    t = fit_temperature(logits, torch.arange(3).repeat(10))
    assert 0.05 <= t < 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("calibration")
    tree = make_split_tree(base / "data", test=6)
    return tree, fit_tiny(tree, base / "run")


def test_fit_stores_the_temperature_in_every_checkpoint_and_reports_it(
    trained: tuple[Path, Path],
) -> None:
    _, last = trained
    run_dir = last.parent.parent
    for ckpt in last.parent.glob("*.ckpt"):
        meta = torch.load(ckpt, map_location="cpu", weights_only=True)[CHECKPOINT_KEY]
        assert meta["temperature"] > 0 and meta["calibration"]["split"] == "val"
        assert meta["calibration"]["images"] == 12 and meta["calibration"]["bins"] == 15
    report = json.loads((run_dir / "report.json").read_text())
    assert report["calibration"]["temperature"] == pytest.approx(meta["temperature"])
    assert "## Calibration" in (run_dir / "report.md").read_text()
    assert (run_dir / "reliability.png").stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    assert "val/reliability" in events.Tags()["images"]
    assert {"val/ece", "val/ece_calibrated", "val/temperature"} <= set(events.Tags()["scalars"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_calibrate_writes_a_new_checkpoint_and_never_the_input(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tree, last = trained
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(last.read_bytes())
    before = _sha(ckpt)
    args = ["calibrate", "--ckpt", str(ckpt), "--data.root", str(tree)]
    assert main([*args, "--plot", str(tmp_path / "rel.png")]) == 0
    assert "ECE" in capsys.readouterr().out
    out = tmp_path / "model.calibrated.ckpt"
    meta = torch.load(out, map_location="cpu", weights_only=True)[CHECKPOINT_KEY]
    assert meta["temperature"] > 0 and meta["calibration"]["images"] == 12
    assert (tmp_path / "rel.png").stat().st_size > 0
    assert _sha(ckpt) == before  # the input is untouched
    assert main(args) == 2  # the output exists: refused
    assert "--overwrite true" in capsys.readouterr().err
    assert main([*args, "--output", str(ckpt)]) == 2  # in place: refused without --overwrite
    assert _sha(ckpt) == before
    assert main([*args, "--output", str(ckpt), "--overwrite", "true"]) == 0
    assert torch.load(ckpt, weights_only=True)[CHECKPOINT_KEY]["temperature"] > 0
    new = str(tmp_path / "new.ckpt")
    assert (
        main(["calibrate", "--ckpt", str(ckpt), "--data.root", str(tmp_path), "--output", new]) == 2
    )
    assert "no val/ folder" in capsys.readouterr().err


def test_predict_applies_the_temperature(trained: tuple[Path, Path], tmp_path: Path) -> None:
    tree, last = trained
    meta_ckpt = torch.load(last, map_location="cpu", weights_only=True)
    meta_ckpt[CHECKPOINT_KEY]["temperature"] = 2.5
    ckpt = tmp_path / "t.ckpt"
    torch.save(meta_ckpt, ckpt)
    model, spec = load_classifier(ckpt)
    assert spec.temperature == 2.5
    assert preprocessing_contract(spec)["temperature"] == 2.5
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = (model(x) / 2.5).softmax(dim=1)
    assert torch.allclose(predict_probs(model, x, temperature=2.5), expected, atol=1e-6)
    out = tmp_path / "p.csv"
    assert (
        main(["predict", "--ckpt", str(ckpt), "--input", str(tree / "val"), "--output", str(out)])
        == 0
    )
    rows = read_rows(out)
    model1, _ = load_classifier(last)
    with torch.no_grad():
        plain = model1(x).softmax(dim=1)
    assert not torch.allclose(plain, expected)  # the temperature changes confidences...
    assert (plain.argmax(1) == expected.argmax(1)).all()  # ...never the predicted class
    assert all(r["status"] == "ok" for r in rows)


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("inf"), "2", True])
def test_bad_temperature_is_refused(bad: object) -> None:
    with pytest.raises(CheckpointError, match="temperature"):
        read_temperature({"temperature": bad})


def test_min_confidence_labels_unknown_and_reports_the_rest(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tree, last = trained
    # A high temperature spreads the tiny model's confidences over (1/3, 1).
    data = torch.load(last, map_location="cpu", weights_only=True)
    data[CHECKPOINT_KEY]["temperature"] = 20.0
    ckpt = tmp_path / "soft.ckpt"
    torch.save(data, ckpt)
    base = ["predict", "--ckpt", str(ckpt), "--input", str(tree / "test"), "--device", "cpu"]
    out0 = tmp_path / "all.csv"
    assert main([*base, "--output", str(out0)]) == 0
    rows = read_rows(out0)
    probs = np.array([float(r["prob"]) for r in rows])
    values = np.unique(probs)
    threshold = float(values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    capsys.readouterr()
    out = tmp_path / "sel.csv"
    assert main([*base, "--output", str(out), "--min_confidence", str(threshold)]) == 0
    printed = capsys.readouterr().out
    sel = read_rows(out)
    unknown = [r for r in sel if r["pred"] == "unknown"]
    assert len(unknown) == int((probs < threshold).sum()) > 0
    assert all(r["correct"] == "" and r["top1"] for r in unknown)  # no guess, still ranked
    kept = [r for r in sel if r["pred"] != "unknown"]
    acc = np.mean([int(r["correct"]) for r in kept])
    assert f"{len(unknown)}/{len(sel)} readable file(s) below --min_confidence" in printed
    assert f"accuracy {acc:.4f}" in printed and f"on the {len(kept)} labelled images" in printed
    assert main([*base, "--output", str(tmp_path / "x.csv"), "--min_confidence", "1.5"]) == 2
    assert "--min_confidence" in capsys.readouterr().err


def test_precision_bf16_predicts_and_bad_precision_is_a_user_error(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tree, ckpt = trained
    base = ["predict", "--ckpt", str(ckpt), "--input", str(tree / "val"), "--device", "cpu"]
    assert main([*base, "--output", str(tmp_path / "a.csv")]) == 0
    assert main([*base, "--output", str(tmp_path / "b.csv"), "--precision", "bf16"]) == 0
    a, b = read_rows(tmp_path / "a.csv"), read_rows(tmp_path / "b.csv")
    agree = np.mean([x["pred"] == y["pred"] for x, y in zip(a, b, strict=True)])
    assert agree >= 0.9
    capsys.readouterr()
    assert main([*base, "--output", str(tmp_path / "c.csv"), "--precision", "fp8"]) == 2
    assert "--precision" in capsys.readouterr().err
    assert not (tmp_path / "c.csv").exists()
