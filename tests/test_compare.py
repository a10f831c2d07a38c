"""``lit-vision compare``: variant parsing, budget, and a real two-CNN comparison on a tiny tree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lit_vision.__main__ import main
from lit_vision.commands.compare import budget_args, parse_variant

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "gtsrb_cnn.yaml")


def test_parse_variant_names_and_overrides() -> None:
    e = parse_variant("configs/x.yaml model.channels=[8,16] --data.image_size=32")
    assert e.config == "configs/x.yaml"
    assert e.overrides == ["--model.channels=[8,16]", "--data.image_size=32"]
    assert e.name == "x+channels=8-16+image_size=32"
    assert parse_variant("configs/x.yaml model.backbone=resnet18 name=r18").name == "r18"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_variant("configs/x.yaml resnet18")
    with pytest.raises(ValueError, match="config file"):
        parse_variant("model.backbone=resnet18")


def test_budget_args() -> None:
    assert budget_args(3, None) == ["--trainer.max_epochs=3"]
    assert budget_args(None, "90.5") == ["--trainer.max_time=00:01:30:30"]
    assert budget_args(None, "00:00:05:00") == ["--trainer.max_time=00:00:05:00"]


def test_compare_two_cnns_ranks_and_reports(tmp_path: Path, split_tree: Path) -> None:
    out = tmp_path / "cmp"
    rc = main(
        [
            "compare",
            "--data.root",
            str(split_tree),
            "--configs",
            CONFIG,
            "--variants",
            f"{CONFIG} model.channels=[8,16] model.hidden=0 name=small",
            f"{CONFIG} model.no_such_option=1 name=broken",
            "--max_epochs",
            "1",
            "--out",
            str(out),
            "--latency_runs",
            "3",
            "--data.image_size",
            "16",
            "--data.num_workers",
            "0",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    assert rc == 0
    with open(out / "compare.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows][2] == "broken" and rows[2]["status"] == "failed"
    ok = rows[:2]
    assert {r["name"] for r in ok} == {"gtsrb_cnn", "small"} and [r["rank"] for r in ok] == [
        "1",
        "2",
    ]
    for r in ok:
        assert r["eval_split"] == "test" and 0 <= float(r["accuracy"]) <= 1
        assert int(r["params"]) > 0 and float(r["train_seconds"]) > 0 and float(r["latency_ms"]) > 0
        assert r["epochs"] == "1" and Path(r["best_checkpoint"]).is_file()
        report = (Path(r["log_dir"]) / "report.md").read_text()
        assert f"ranked **{r['rank']} of 2**" in report
    small, big = sorted(ok, key=lambda r: int(r["params"]))
    assert small["name"] == "small" and int(small["params"]) < int(big["params"])
    summary = json.loads((out / "compare.json").read_text())
    assert summary["winner"] == ok[0]["name"]
    md = (out / "compare.md").read_text()
    assert f"Winner: **{ok[0]['name']}**" in md and "| 1 | " in md and "failed" in md
    assert (out / "compare.png").stat().st_size > 1000


def test_compare_refuses_a_typo_before_training(
    tmp_path: Path, split_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An option compare passes on to every fit is checked once, up front: one line, exit 2."""
    rc = main(
        [
            "compare",
            "--data.root",
            str(split_tree),
            "--configs",
            CONFIG,
            "--out",
            str(tmp_path / "c"),
            "--trainer.max_epocs",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert (
        rc == 2
        and err.startswith("error: compare: ")
        and "max_epocs" in err
        and err.count("\n") == 1
    )
    assert not (tmp_path / "c" / "tb").exists()
