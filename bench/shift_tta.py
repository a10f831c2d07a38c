"""Shift test-time augmentation on trained checkpoints: accuracy with and without it.

For each checkpoint, scores the images of a split folder (``ROOT/CLASS/*``) once as they are and
once as the mean probability of 5 views: the image and its copies shifted by ``--shift`` pixels
left, right, up and down (edges mirrored), the speedruns' translate TTA (no flips: a mirrored sign
is another sign). Prints one line per checkpoint and the mean over all of them.

    python bench/shift_tta.py --data /tmp/lv/gtsrb/val --ckpt A.ckpt B.ckpt C.ckpt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from lit_vision.cache import decode_all
from lit_vision.folders import discover_classes, list_samples
from lit_vision.predict import load_classifier


def views(x: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """The batch and its four copies shifted by ``shift`` px (mirrored edges), float 0-1."""
    x = x.float() / 255
    padded = F.pad(x, (shift, shift, shift, shift), mode="reflect")
    h, w = x.shape[-2:]
    offsets = [(shift, shift), (0, shift), (2 * shift, shift), (shift, 0), (shift, 2 * shift)]
    return [padded[..., dy : dy + h, dx : dx + w] for dy, dx in offsets]


@torch.no_grad()
def score(
    ckpt: Path, images: torch.Tensor, labels: torch.Tensor, shift: int
) -> tuple[float, float]:
    """Accuracy of ``ckpt`` on the images as they are, and with the 5-view shift TTA."""
    model, _ = load_classifier(ckpt)
    plain, tta = [], []
    for start in range(0, len(images), 256):
        batch = views(images[start : start + 256], shift)
        probs = [model(v).float().softmax(-1) for v in batch]
        plain.append(probs[0].argmax(-1))
        tta.append(torch.stack(probs).mean(0).argmax(-1))
    hits = [(torch.cat(p) == labels).float().mean().item() for p in (plain, tta)]
    return hits[0], hits[1]


def main() -> None:
    """Parse arguments, decode the folder once, score every checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a split folder: CLASS/*")
    parser.add_argument("--ckpt", type=Path, nargs="+", required=True)
    parser.add_argument("--shift", type=int, default=2)
    args = parser.parse_args()
    _, spec = load_classifier(args.ckpt[0])
    classes = discover_classes(args.data)
    samples = list_samples(args.data, classes)
    images = decode_all([p for p, _ in samples], spec.image_size)
    images = torch.from_numpy(images).permute(0, 3, 1, 2)
    labels = torch.tensor([t for _, t in samples])
    results = []
    for ckpt in args.ckpt:
        plain, tta = score(ckpt, images, labels, args.shift)
        results.append((plain, tta))
        print(f"{ckpt}: plain {plain:.4f}  shift-TTA {tta:.4f}  ({tta - plain:+.4f})")
    plain = sum(r[0] for r in results) / len(results)
    tta = sum(r[1] for r in results) / len(results)
    print(f"mean over {len(results)}: plain {plain:.4f}  shift-TTA {tta:.4f}  ({tta - plain:+.4f})")


if __name__ == "__main__":
    main()
