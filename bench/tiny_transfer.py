"""Why ImageNet transfer struggles on tiny images: frozen features by depth, and a shallow fine-tune.

Two phases on a split of tiny images (GTSRB's 32 px signs), EfficientNet-Lite0 with the packaged
ImageNet weights, the images upsampled to ``--size`` (64: what ``transfer.yaml``'s ``image_size:
auto`` picks for 32 px images):

- ``probe``: frozen features of each stage (timm ``features_only``; each map pooled to at most
  4x4, its layout kept) and of the whole backbone (the 1280 globally pooled features
  ``transfer.yaml``'s head sees), each scored by a linear probe trained on the clean training
  images (AdamW, 60 epochs, standardised features). Prints val accuracy per level.
- ``shallow``: the backbone cut after stage ``--level`` (its map kept as a grid, not pooled),
  a linear head, every weight trained: one-cycle AdamW at ``--lr`` for ``--epochs`` with the
  built-in batch augmentation, class-weighted, label smoothing 0.1. Prints val accuracy and
  seconds after every epoch.

  python bench/tiny_transfer.py --data /tmp/lv/gtsrb --phases probe,shallow
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lit_vision.augment import BatchAugment
from lit_vision.cache import decode_all
from lit_vision.folders import discover_classes, list_samples
from lit_vision.weights import create_timm_model

ARCH = "efficientnet_lite0"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images as uint8 NCHW at 32 px, and their class indices."""
    classes = discover_classes(root / "train")
    samples = list_samples(root / split, classes)
    images = decode_all([p for p, _ in samples], 32)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(
        [c for _, c in samples]
    )


NORM = {"value": "imagenet"}  # --norm: how prepare() normalises (set once in main)


def prepare(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float 0-1 (or uint8) images upsampled to ``size`` and normalised (``--norm``).

    ``imagenet`` subtracts ImageNet's mean and divides by its std; ``image`` standardises each
    image by its own mean and std (as ``input_norm: image`` does).
    """
    x = x.float() / 255 if x.dtype == torch.uint8 else x
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if NORM["value"] == "image":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1.0 / 255)
    else:
        x = (x - MEAN) / STD
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def features(x8: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Each stage's map pooled to <= 4x4 and flattened, then the backbone's pooled features."""
    stages = create_timm_model(ARCH, pretrained=True, features_only=True).eval()
    whole = create_timm_model(ARCH, pretrained=True, num_classes=0).eval()
    parts: list[list[torch.Tensor]] = []
    for i in range(0, len(x8), 256):
        x = prepare(x8[i : i + 256], size)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = [F.adaptive_avg_pool2d(m.float(), min(4, m.shape[-1])) for m in stages(x)]
            outs = [m.flatten(1) for m in maps] + [whole(x).float()]
        parts = (
            [[o] for o in outs]
            if not parts
            else [p + [o] for p, o in zip(parts, outs, strict=True)]
        )
    return [torch.cat(p) for p in parts]


def probe(train: torch.Tensor, y: torch.Tensor, val: torch.Tensor, yv: torch.Tensor) -> float:
    """Val accuracy of a linear classifier trained on standardised frozen features."""
    torch.manual_seed(0)
    mu, sd = train.mean(0), train.std(0) + 1e-6
    train, val = (train - mu) / sd, (val - mu) / sd
    head = nn.Linear(train.shape[1], int(y.max()) + 1)
    opt = torch.optim.AdamW(head.parameters(), 1e-3, weight_decay=1e-2)
    for _ in range(60):
        for j in torch.randperm(len(train)).split(256):
            loss = F.cross_entropy(head(train[j]), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((head(val).argmax(1) == yv).float().mean())


def run_probe(data: tuple[torch.Tensor, ...], size: int) -> None:
    """Print the linear-probe accuracy of every stage's features and of the pooled backbone."""
    xtr, ytr, xva, yva = data
    start = time.perf_counter()
    train, val = features(xtr, size), features(xva, size)
    print(f"probe: features in {time.perf_counter() - start:.0f} s at {size} px", flush=True)
    for level, (a, b) in enumerate(zip(train, val, strict=True)):
        name = f"stage {level}" if level < len(train) - 1 else "pooled backbone"
        print(f"probe {name}: {a.shape[1]} features, val acc {probe(a, ytr, b, yva):.4f}")


def run_shallow(data: tuple[torch.Tensor, ...], args: argparse.Namespace) -> None:
    """Fine-tune the backbone cut after stage ``args.level`` with a grid head; print each epoch."""
    xtr, ytr, xva, yva = data
    torch.manual_seed(args.seed)
    body = create_timm_model(ARCH, pretrained=True, features_only=True, out_indices=(args.level,))
    with torch.no_grad():
        c, g = body(torch.zeros(1, 3, args.size, args.size))[0].shape[1:3]
    classes = int(ytr.max()) + 1
    net = nn.ModuleDict(
        {
            "body": body,
            "head": nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(c * g * g, classes)),
        }
    ).to(memory_format=torch.channels_last)
    counts = torch.bincount(ytr).float()
    weight = counts.sum() / (classes * counts)
    augment = BatchAugment(rotate=10, scale=(0.9, 1.1), translate=0.1, color_jitter=0.3)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * -(-len(xtr) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.2)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return net["head"](net["body"](prepare(x, args.size))[0])

    start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        for j in torch.randperm(len(xtr)).split(64):
            loss = F.cross_entropy(
                logits(augment(xtr[j])), ytr[j], weight=weight / weight.mean(), label_smoothing=0.1
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.inference_mode():
            hits = sum(
                int((logits(x).argmax(1) == y).sum())
                for x, y in zip(xva.split(256), yva.split(256), strict=True)
            )
        print(
            f"shallow stage<={args.level} ({c}x{g}x{g}) epoch {epoch}: val acc {hits / len(xva):.4f}, "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )


def main() -> None:
    """Parse the options and run the phases."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="split folder (train/ val/)")
    ap.add_argument("--phases", default="probe,shallow")
    ap.add_argument("--size", type=int, default=64, help="side the 32 px images are upsampled to")
    ap.add_argument(
        "--level", type=int, default=3, help="shallow: the last stage kept (timm index)"
    )
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--norm", choices=("imagenet", "image"), default="imagenet")
    args = ap.parse_args()
    NORM["value"] = args.norm
    data = (*load(args.data, "train"), *load(args.data, "val"))
    phases = args.phases.split(",")
    if "probe" in phases:
        run_probe(data, args.size)
    if "shallow" in phases:
        run_shallow(data, args)


if __name__ == "__main__":
    main()
