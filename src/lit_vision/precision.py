"""What the hardware computes fast: native bf16 on the CPU, TF32 tensor cores on a GPU."""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), so bf16 autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def enable_tf32() -> None:
    """Let fp32 matmuls and convolutions on CUDA use TF32 tensor cores (10-bit mantissa inputs).

    Safe for training classifiers (it is cuDNN's default for convolutions); fp32 runs on
    Ampere or newer GPUs gain tensor-core speed without the casts of mixed precision.
    """
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
