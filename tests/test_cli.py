"""The real configs through the real CLI, in-process, with fast_dev_run on tiny trees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import REPO, make_split_tree

from lit_vision.__main__ import main, run_command

# Experiment configs (the overlays change only the trainer, except stream.yaml, which swaps the
# DataModule class and is stacked on an experiment in tests/test_stream.py).
CONFIGS = sorted(
    p for p in (REPO / "configs").glob("*.yaml") if "data:" in p.read_text() and p.stem != "stream"
)


def _fit_args(config: Path, tmp_path: Path, root: Path | None) -> list[str]:
    args = [
        "fit",
        "--config",
        str(config),
        "--trainer.fast_dev_run",
        "true",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "tb"),
        "--data.num_workers",
        "0",
    ]
    if root is not None:
        args += ["--data.root", str(root)]
    return args


def toy_backbone(arch: str, **kwargs: object) -> torch.nn.Module:
    """Timm's tiny ``test_efficientnet`` in place of any backbone (random weights, 0.36 M params).

    The config test checks that each config parses, builds and trains end to end; the real
    224 px backbones (and their weights) are exercised by tests/test_transfer.py.
    """
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained", "weights", "weights_path")}
    return timm.create_model("test_efficientnet", pretrained=False, **kwargs)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_fits(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # digits materialise under ./data, logs under tmp_path
    monkeypatch.setattr("lit_vision.networks.create_timm_model", toy_backbone)
    root = (
        None if "digits" in config.stem else make_split_tree(tmp_path / "data", classes=3, size=24)
    )
    cli = run_command(_fit_args(config, tmp_path, root))
    assert cli.trainer.state.finished
    assert cli.model.num_classes == (10 if root is None else 3)
    assert cli.model.class_names == cli.datamodule.classes
    assert {"train/loss", "val/loss", "val/acc", "val/f1"} <= set(cli.trainer.callback_metrics)


def test_logs_config_hparams_and_checkpoints(tmp_path: Path) -> None:
    root = make_split_tree(tmp_path / "data", classes=2, size=16)
    cli = run_command(
        [
            "fit",
            "--config",
            str(REPO / "configs/gtsrb_cnn.yaml"),
            "--data.root",
            str(root),
            "--trainer.max_epochs",
            "2",
            "--trainer.limit_train_batches",
            "2",
            "--data.num_workers",
            "0",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "tb"),
        ]
    )
    run = tmp_path / "tb" / "gtsrb_cnn" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "hparams.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-epoch") for n in ckpts)
    # automatic precision: the config's cpu_bf16 asks for bf16 where the CPU has it natively
    from lit_vision.precision import cpu_has_native_bf16

    assert cli.trainer.precision == ("bf16-mixed" if cpu_has_native_bf16() else "32-true")
    hparams = (run / "hparams.yaml").read_text()
    assert "class_names" in hparams and "channels" in hparams


def test_validate_and_test_subcommands(tmp_path: Path) -> None:
    root = make_split_tree(tmp_path / "data", classes=2, size=16)
    common = [
        "--config",
        str(REPO / "configs/gtsrb_cnn.yaml"),
        "--data.root",
        str(root),
        "--data.num_workers",
        "0",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "tb"),
    ]
    cli = run_command(["test", *common])
    assert "test/acc" in cli.trainer.callback_metrics
    cli = run_command(["validate", *common])
    assert "val/acc" in cli.trainer.callback_metrics


def test_help_lists_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lit_vision", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0
    for word in ("fit", "validate", "test", "predict", "split"):
        assert word in out.stdout


def test_user_error_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_vision",
            "fit",
            "--config",
            "configs/gtsrb_cnn.yaml",
            "--data.root",
            str(tmp_path / "nowhere"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode != 0
    assert "nowhere" in out.stderr and "Traceback" not in out.stderr


def test_split_subcommand(tmp_path: Path) -> None:
    from conftest import make_raw_tree

    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=5)
    assert main(["split", "--src", str(raw), "--dst", str(tmp_path / "out"), "--val", "0.2"]) == 0
    assert len(list((tmp_path / "out" / "val").rglob("*.png"))) == 2


def test_console_script_exits_zero_on_success(tmp_path: Path) -> None:
    """``lit-vision fit`` (pip's wrapper does ``sys.exit(main())``) exits 0, and without a logger."""
    script = Path(sys.executable).with_name("lit-vision")
    if not script.is_file():
        pytest.skip("the lit-vision console script is not installed in this environment")
    root = make_split_tree(tmp_path / "data", classes=2, size=16)
    out = subprocess.run(
        [
            str(script),
            "fit",
            "--config",
            "configs/gtsrb_cnn.yaml",
            "--data.root",
            str(root),
            "--trainer.fast_dev_run",
            "true",
            "--trainer.logger",
            "false",
            "--data.num_workers",
            "0",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "LitVisionCLI object" not in out.stderr


def test_option_errors_name_the_real_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Extra subcommands: a bad value is one line with exit 2; the hyphen spelling is an alias."""
    from conftest import make_raw_tree

    raw = make_raw_tree(tmp_path / "raw", classes=2, per_class=4)
    assert (
        main(
            [
                "split",
                "--src",
                str(raw),
                "--dst",
                str(tmp_path / "a"),
                "--val",
                "0.5",
                "--group-regex",
                "^(img)",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["split", "--src", str(raw), "--dst", str(tmp_path / "b"), "--val", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "val" in err
    assert (
        main(
            ["split", "--src", str(raw), "--dst", str(tmp_path / "c"), "--group_regex", "(unclosed"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--group_regex" in err and "--group-regex" not in err
