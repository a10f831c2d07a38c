"""Does ``torch.compile`` pay for small_cnn's network on this CPU? Eager vs compiled training steps.

Times the bf16 training step of ``configs/small_cnn.yaml``'s network (its SimpleCNN settings read
from the file; AdamW, label smoothing 0.1) on random 32 px batches: eager, then the first
compiled step (the compile itself), compiled steps, and eager again (the machine's drift).

  python bench/compile_check.py --batch 64
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from lit_vision.networks import SimpleCNN

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "small_cnn.yaml"


def network_settings(config: Path) -> dict[str, Any]:
    """The config's model arguments that :class:`SimpleCNN` takes (widths, head, dropout)."""
    init_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    takes = inspect.signature(SimpleCNN).parameters
    return {k: v for k, v in init_args.items() if k in takes}


def per_step_ms(step: Callable[[], None], n: int = 20) -> float:
    """Mean milliseconds of ``step`` over ``n`` calls after 3 warm-up calls."""
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    """Print eager, compile and compiled step times."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    net = SimpleCNN(num_classes=43, **network_settings(CONFIG)).to(
        memory_format=torch.channels_last
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 43, (args.batch,))

    def make_step(model: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    print(f"eager step: {per_step_ms(make_step(net)):.1f} ms (batch {args.batch})")
    compiled = make_step(torch.compile(net))
    start = time.perf_counter()
    compiled()
    print(f"first compiled step (compiling): {time.perf_counter() - start:.1f} s")
    print(f"compiled step: {per_step_ms(compiled):.1f} ms")
    print(f"eager step again: {per_step_ms(make_step(net)):.1f} ms")


if __name__ == "__main__":
    main()
