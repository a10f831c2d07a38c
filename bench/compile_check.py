"""Does ``torch.compile`` pay for small_cnn's network on this CPU? Eager vs compiled training steps.

Times the bf16 training step of ``small_cnn.yaml``'s network (SimpleCNN 32/64/128, two convs a
block, 4x4 grid head; AdamW, label smoothing 0.1) on random 32 px batches: eager, then the first
compiled step (the compile itself), compiled steps, and eager again (the machine's drift).

  python bench/compile_check.py --batch 64
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lit_vision.networks import SimpleCNN


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
    net = SimpleCNN(
        num_classes=43,
        channels=[32, 64, 128],
        convs_per_block=2,
        block_dropout=0.1,
        pool_grid=4,
        hidden=256,
        dropout=0.4,
    ).to(memory_format=torch.channels_last)
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
