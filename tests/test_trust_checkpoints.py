"""Hostile checkpoints: no subcommand runs code from a .ckpt; each refusal is one line and exit 2.

Every payload here would write a marker file if its code ran. The tests build the payloads
themselves (a pickle ``__reduce__``, class paths in plain hyperparameters at several depths, a
foreign model class whose module writes the marker on import) and assert the marker never
appears, the command exits 2 and stderr is one ``error:`` line naming the key.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, make_split_tree
from test_predict import CONFIG, fit_tiny

from lit_vision.__main__ import main
from lit_vision.checkpoints import CheckpointError, allowed_classes, read_checkpoint


class Payload:
    """Unpickling this runs a shell command (what a malicious pickle does)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny split tree and a real checkpoint trained on it."""
    base = tmp_path_factory.mktemp("trust")
    tree = make_split_tree(base / "data", test=4)
    return tree, fit_tiny(tree, base / "run", epochs=1)


def _tamper(src: Path, dst: Path, edit: Any) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def _commands(ckpt: Path, tree: Path, out: Path) -> dict[str, list[str]]:
    common = [
        "--config",
        CONFIG,
        "--data.root",
        str(tree),
        "--data.num_workers",
        "0",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(out),
        "--ckpt_path",
        str(ckpt),
    ]
    return {
        "predict": [
            "predict",
            "--ckpt",
            str(ckpt),
            "--input",
            str(tree / "val"),
            "--output",
            str(out / "p.csv"),
        ],
        "export": ["export", "--ckpt", str(ckpt), "--output_dir", str(out / "export")],
        "validate": ["validate", *common],
        "test": ["test", *common],
        "fit": ["fit", *common, "--trainer.max_epochs", "2"],
    }


def _refused(args: list[str], marker: Path, capsys: pytest.CaptureFixture[str], *words: str) -> str:
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert not marker.exists(), f"code from the checkpoint ran in {args[0]}"
    assert code == 2, f"{args[0]} exited {code}: {err}"
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    return err


def test_pickle_payload_never_runs(
    good: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree, real = good
    marker = tmp_path / "PWNED"
    ckpt = torch.load(real, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["evil"] = Payload(f"touch {marker}")
    bad = tmp_path / "pickle.ckpt"
    torch.save(ckpt, bad)
    for args in _commands(bad, tree, tmp_path).values():
        _refused(args, marker, capsys, "pickle.ckpt")


HPARAM_PAYLOADS = {
    "optimizer": lambda h, cmd: h.update(
        optimizer={"class_path": "os.system", "init_args": {"command": cmd}}
    ),
    "scheduler": lambda h, cmd: h.update(
        scheduler={"class_path": "os.system", "init_args": {"command": cmd}}
    ),
    "optimizer-string": lambda h, cmd: h.update(optimizer="os.system"),
    "instantiator": lambda h, cmd: h.update(_instantiator="os.system"),
    "model-class": lambda h, cmd: h.update(_class_path="os.system"),
    "nested": lambda h, cmd: h.update(
        extra={"a": [{"b": {"class_path": "os.system", "init_args": {"command": cmd}}}]}
    ),
}


@pytest.mark.parametrize("where", list(HPARAM_PAYLOADS))
def test_class_paths_in_hparams_are_refused(
    where: str, good: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree, real = good
    marker = tmp_path / "PWNED"
    bad = _tamper(
        real,
        tmp_path / "hparams.ckpt",
        lambda c: HPARAM_PAYLOADS[where](c["hyper_parameters"], f"touch {marker}"),
    )
    torch.load(bad, weights_only=True)  # plain data: weights_only alone does not stop it
    for args in _commands(bad, tree, tmp_path).values():
        _refused(args, marker, capsys, "os.system", "not an allowed class")


def test_datamodule_hparams_are_checked_too(good: tuple[Path, Path], tmp_path: Path) -> None:
    _, real = good
    bad = _tamper(
        real,
        tmp_path / "dm.ckpt",
        lambda c: c.setdefault("datamodule_hyper_parameters", {}).update(
            {"_class_path": "subprocess.Popen"}
        ),
    )
    with pytest.raises(CheckpointError, match="datamodule_hyper_parameters._class_path"):
        read_checkpoint(bad)


def test_foreign_model_class_is_never_imported(
    good: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tree, real = good
    marker = tmp_path / "PWNED"
    (tmp_path / "evil_module.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from lit_vision.models import CNNClassifier as Model\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    bad = _tamper(
        real,
        tmp_path / "foreign.ckpt",
        lambda c: c["lit_vision"].update(model_class="evil_module.Model"),
    )
    for cmd in ("predict", "export"):
        _refused(_commands(bad, tree, tmp_path)[cmd], marker, capsys, "evil_module.Model")
    assert "evil_module" not in sys.modules


def test_eval_transform_reading_files_is_refused(good: tuple[Path, Path], tmp_path: Path) -> None:
    _, real = good
    bad = _tamper(
        real,
        tmp_path / "fda.ckpt",
        lambda c: c["lit_vision"].update(
            eval_transform={
                "__version__": "2.0.0",
                "transform": {
                    "__class_fullname__": "Compose",
                    "p": 1.0,
                    "transforms": [
                        {"__class_fullname__": "FDA", "reference_images": ["/etc/passwd"], "p": 1.0}
                    ],
                },
            }
        ),
    )
    with pytest.raises(CheckpointError, match="FDA"):
        read_checkpoint(bad)


def test_truncated_and_junk_checkpoints_are_one_line(
    good: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree, real = good
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    for args in _commands(truncated, tree, tmp_path).values():
        _refused(args, tmp_path / "never", capsys, "truncated.ckpt")


def test_allow_list() -> None:
    allowed = allowed_classes()
    for name in (
        "torch.optim.AdamW",
        "torch.optim.SGD",
        "torch.optim.lr_scheduler.OneCycleLR",
        "lit_vision.WarmupCosineLR",
        "lit_vision.CNNClassifier",
        "lit_vision.models.TransferClassifier",
        "lit_vision.ImageFolderDataModule",
    ):
        assert name in allowed, name
    for name in (
        "os.system",
        "subprocess.Popen",
        "builtins.eval",
        "torch.load",
        "lit_vision.cli.main",
    ):
        assert name not in allowed, name


def test_legitimate_checkpoint_still_loads_everywhere(
    good: tuple[Path, Path], tmp_path: Path
) -> None:
    """The real checkpoint (with an allow-listed optimizer class path added) works as before."""
    tree, real = good
    ok = _tamper(
        real,
        tmp_path / "ok.ckpt",
        lambda c: c["hyper_parameters"].update(
            optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}
        ),
    )
    cmds = _commands(ok, tree, tmp_path)
    for name in ("predict", "validate"):
        assert main(cmds[name]) == 0, name


def test_console_entry_points_exit_codes(good: tuple[Path, Path], tmp_path: Path) -> None:
    """``python -m lit_vision``: 2 for a refused checkpoint, 1 for a check with findings, 0 for success."""
    tree, real = good
    bad = tmp_path / "pickle.ckpt"
    ckpt = torch.load(real, map_location="cpu", weights_only=True)
    ckpt["evil"] = Payload(f"touch {tmp_path / 'PWNED'}")
    torch.save(ckpt, bad)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lit_vision", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )

    out = run("validate", *_commands(bad, tree, tmp_path)["validate"][1:])
    assert (
        out.returncode == 2 and "Traceback" not in out.stderr and not (tmp_path / "PWNED").exists()
    )
    assert [line for line in out.stderr.splitlines() if line.startswith("error:")], out.stderr
    (tree / "train" / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    try:
        assert run("check", "--data.root", str(tree)).returncode == 1
    finally:
        (tree / "train" / "class_0" / "broken.png").unlink()
    assert run("check", "--data.root", str(tree)).returncode == 0
