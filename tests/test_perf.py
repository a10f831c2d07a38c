"""Fast-path settings: batch augmentation through the CLI, opt-in CPU bf16, compile flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_vision import cli
from lit_vision.__main__ import run_command
from lit_vision.augment import BatchAugment
from lit_vision.cli import auto_precision

REPO = Path(__file__).resolve().parents[1]


def test_auto_precision_cpu_bf16_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_precision("cpu") == "32-true"
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: True)
    assert auto_precision("auto", cpu_bf16=True) == "bf16-mixed"
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: False)
    assert auto_precision("auto", cpu_bf16=True) == "32-true"


@pytest.mark.parametrize("augment", ["batch", "sample"])
def test_fit_with_batch_and_sample_augmentation(
    split_tree: Path, tmp_path: Path, augment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # fast_dev_run checkpoints land in the working directory
    calls: list[torch.Tensor] = []
    original = BatchAugment.__call__
    monkeypatch.setattr(
        BatchAugment, "__call__", lambda self, x: calls.append(x) or original(self, x)
    )
    run = run_command(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "gtsrb_cnn.yaml"),
            "--data.root",
            str(split_tree),
            "--data.augment",
            augment,
            "--data.num_workers",
            "0",
            "--data.batch_size",
            "4",
            "--data.image_size",
            "16",
            "--trainer.fast_dev_run",
            "true",
            "--cpu_bf16",
            "true",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "tb"),
        ]
    )
    assert run.trainer.state.finished
    assert (run.datamodule.batch_augment is not None) == (augment == "batch")
    # fast_dev_run: one training batch augmented on the device, the validation batch left alone
    assert len(calls) == (1 if augment == "batch" else 0)


def test_compile_flag_keeps_state_dict_keys() -> None:
    from lit_vision.models import CNNClassifier

    model = CNNClassifier(3, channels=(4,), hidden=0, compile=True)
    keys = set(model.state_dict())
    model.configure_model()  # wraps the network; compiling itself happens lazily on first call
    assert "_compiled_net" in model.__dict__ and set(model.state_dict()) == keys


def test_gpu_mixed_false_keeps_fp32_with_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert auto_precision("auto") == "bf16-mixed"
    assert auto_precision("auto", gpu_mixed=False) == "32-true"
    assert auto_precision("cpu", gpu_mixed=False) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: True)
    assert auto_precision("auto", cpu_bf16=True, gpu_mixed=False) == "bf16-mixed"  # CPU: bf16


def test_enable_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_vision.precision import enable_tf32

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        enable_tf32()
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
