"""bf16 autocast vs fp32 on this CPU for EfficientNet-Lite0: forward passes and training steps.

Why ``configs/transfer.yaml`` computes frozen features in bf16 and trains in fp32 (docs/results.md
R37). Each figure is images/s of a batch of 32 (64 for forwards), best of two rounds, random
weights (speed does not depend on them)::

    python bench/cpu_precision.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from lit_vision.networks import TransferNet


def rate(step: Callable[[], None], images: int, reps: int = 3) -> float:
    """Images per second of ``step`` (one warm-up call, then ``reps`` timed ones)."""
    step()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    return images * reps / (time.perf_counter() - start)


def forward_rate(net: TransferNet, size: int, bf16: bool) -> float:
    """Frozen forward passes (the feature cache's work) at ``size`` px."""
    x = torch.randn(64, 3, size, size).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            net(x)

    return rate(step, 64)


def train_rate(net: TransferNet, size: int, blocks: int | None, bf16: bool) -> float:
    """Training steps with the last ``blocks`` backbone blocks trainable (None: all)."""
    groups = net.groups()
    trainable = {id(p) for g in (groups if blocks is None else groups[-blocks:]) for p in g}
    for p in net.features.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], 1e-4)
    x = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, net.head[-1].out_features, (32,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return rate(step, 32)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = TransferNet("efficientnet_lite0", 10, pretrained=False).to(
        memory_format=torch.channels_last
    )
    net.features.eval()  # BatchNorm as in the recipe: frozen statistics
    cases = [("forward", s, None) for s in (64, 128, 224)]
    cases += [("train", 64, None), ("train", 224, 2)]
    print("| pass | px | trainable blocks | bf16 img/s | fp32 img/s | bf16/fp32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, size, blocks in cases:
        best = {}
        for _ in range(args.rounds):
            for bf16 in (True, False):
                r = (
                    forward_rate(net, size, bf16)
                    if kind == "forward"
                    else train_rate(net, size, blocks, bf16)
                )
                best[bf16] = max(best.get(bf16, 0.0), r)
        label = "-" if kind == "forward" else ("all" if blocks is None else f"last {blocks}")
        print(
            f"| {kind} | {size} | {label} | {best[True]:.0f} | {best[False]:.0f} "
            f"| {best[True] / best[False]:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
