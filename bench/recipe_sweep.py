"""GTSRB recipe sweep: many short trainings of gtsrb_cnn's network on in-memory data, plain torch.

Used to choose configs/gtsrb_cnn.yaml's schedule (it ran on a lent GPU, six variants at a time;
on 2 CPU cores one 30-epoch variant takes ~7 min). Each variant is a dict of overrides of BASE
(5% warm-up + cosine at lr 2e-3, batch augmentation, per-image standardisation); every result is
one JSON line: the variant, val/acc after each epoch, best, final, seconds.

  python bench/recipe_sweep.py --data /tmp/lv_gtsrb --variants oc5e-3_30,clahe --seeds 0,1,2 \
      --out sweep.jsonl
  SHARD=0/6 python bench/recipe_sweep.py ... # run every 6th job (one process per shard)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lit_vision.augment import BatchAugment, train_transforms
from lit_vision.cache import decode_all
from lit_vision.folders import discover_classes, list_samples
from lit_vision.models import CNNClassifier
from lit_vision.schedulers import WarmupCosineLR

BASE = dict(
    epochs=15,
    lr=2e-3,
    wd=5e-4,
    bs=64,
    warm=0.05,
    wstart=0.1,
    final=0.01,
    aug="batch",
    channels=[32, 64, 128],
    cpb=2,
    bdrop=0.1,
    grid=4,
    hidden=256,
    drop=0.4,
    ls=0.1,
    norm="image",
    rotate=10.0,
    scale=(0.9, 1.1),
    translate=0.1,
    shear=0.0,
    cj=0.3,
    opt="adamw",
    seed=0,
)


class AlbumentationsDataset(torch.utils.data.Dataset):
    """Per-sample albumentations on uint8 HWC arrays (the ``augment: sample`` path)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, tf: Any) -> None:
        self.x, self.y, self.tf = x, y, tf

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.tf(image=self.x[i])["image"]).permute(2, 0, 1), int(self.y[i])


def clahe(images: np.ndarray, clip: float) -> np.ndarray:
    """CLAHE on the L channel of LAB (4x4 tiles), image by image."""
    import cv2

    op = cv2.createCLAHE(clipLimit=clip, tileGridSize=(4, 4))
    out = np.empty_like(images)
    for i, im in enumerate(images):
        lab = cv2.cvtColor(im, cv2.COLOR_RGB2LAB)
        lab[..., 0] = op.apply(lab[..., 0])
        out[i] = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return out


def run(cfg: dict[str, Any], data: tuple, dev: str) -> dict[str, Any]:
    """Train one variant; val/acc after every epoch."""
    c = dict(BASE, **cfg)
    torch.manual_seed(c["seed"])
    np.random.seed(c["seed"])
    xtr, ytr, xva, yva = data
    if c.get("clahe"):
        xtr, xva = clahe(xtr, c["clahe"]), clahe(xva, c["clahe"])
    # The product's module: its forward normalises (input_norm) and runs channels-last.
    net = CNNClassifier(
        43,
        channels=c["channels"],
        convs_per_block=c["cpb"],
        block_dropout=c["bdrop"],
        pool_grid=c["grid"],
        hidden=c["hidden"],
        dropout=c["drop"],
        input_norm=c["norm"],
        early_pool=c.get("early_pool", False),
    ).to(dev)
    net.configure_model()
    if c["opt"] == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=c["lr"], weight_decay=c["wd"])
    else:
        opt = torch.optim.SGD(
            net.parameters(), lr=c["lr"], momentum=0.9, nesterov=True, weight_decay=c["wd"]
        )
    bs = c["bs"]
    steps_per_epoch = len(ytr) // bs
    sched = WarmupCosineLR(
        opt,
        total_steps=steps_per_epoch * c["epochs"],
        warmup_fraction=c["warm"],
        warmup_start=c["wstart"],
        final_factor=c["final"],
    )
    aug = dict(
        rotate=c["rotate"],
        scale=tuple(c["scale"]),
        translate=c["translate"],
        shear=c["shear"],
        color_jitter=c["cj"],
    )
    batch_aug = BatchAugment(**aug)
    xtr_t = torch.from_numpy(xtr).permute(0, 3, 1, 2).contiguous().to(dev)
    ytr_t = torch.from_numpy(ytr).long().to(dev)
    xva_t = torch.from_numpy(xva).permute(0, 3, 1, 2).contiguous().to(dev)
    yva_t = torch.from_numpy(yva).long().to(dev)
    if c["aug"] == "sample":
        loader = torch.utils.data.DataLoader(
            AlbumentationsDataset(xtr, ytr, train_transforms(**aug)),
            batch_size=bs,
            shuffle=True,
            drop_last=True,
            num_workers=3,
            persistent_workers=True,
        )

    def batches() -> Any:
        if c["aug"] == "sample":
            yield from ((x.to(dev), y.to(dev)) for x, y in loader)
            return
        perm = torch.randperm(len(ytr_t), device=dev)
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            yield (batch_aug(xtr_t[idx]) if c["aug"] == "batch" else xtr_t[idx]), ytr_t[idx]

    ema = None
    if c.get("ema"):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(c["ema"]), use_buffers=True)
    hist, hist_ema, hist_tta, secs, train_s = [], [], [], [], 0.0
    for _ in range(c["epochs"]):
        net.train()
        t0 = time.time()
        for x, y in batches():
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=c.get("amp", False)):
                loss = F.cross_entropy(net(x), y, label_smoothing=c["ls"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(net)
        train_s += time.time() - t0
        secs.append(round(train_s, 1))
        hist.append(accuracy(net, xva_t, yva_t))
        if ema is not None:
            hist_ema.append(accuracy(ema.module, xva_t, yva_t))
        hist_tta.append(accuracy(ema.module if ema is not None else net, xva_t, yva_t, tta=True))
    return dict(
        cfg=cfg,
        hist=hist,
        hist_ema=hist_ema,
        hist_tta=hist_tta,
        secs=secs,
        best=max(hist),
        final=hist[-1],
        final_ema=hist_ema[-1] if hist_ema else None,
        final_tta=hist_tta[-1],
    )


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Images (uint8 NCHW) moved by (dx, dy) pixels, edges replicated: float 0-1."""
    p = max(abs(dx), abs(dy))
    if not p:
        return x.float() / 255
    h, w = x.shape[-2:]
    padded = F.pad(x.float() / 255, (p, p, p, p), mode="replicate")
    return padded[..., p - dy : p - dy + h, p - dx : p - dx + w]


TTA_SHIFTS = ((0, 0), (2, 0), (-2, 0), (0, 2), (0, -2))


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, tta: bool = False) -> float:
    """val/acc; with ``tta`` the mean softmax over the image and its +-2 px shifts."""
    net.eval()
    preds = []
    for i in range(0, len(y), 512):
        xb = x[i : i + 512]
        views = TTA_SHIFTS if tta else ((0, 0),)
        preds.append(sum(net(shifted(xb, dx, dy)).softmax(1) for dx, dy in views).argmax(1))
    return round((torch.cat(preds) == y).float().mean().item(), 4)


# The one-cycle schedule of gtsrb_cnn.yaml over 15 bf16 epochs, with an EMA copy scored too.
S15 = dict(epochs=15, lr=5e-3, warm=0.3, wstart=0.04, final=1e-3, amp=True, ema=0.998)

VARIANTS = {
    "base30": dict(epochs=30),
    "base15": dict(),
    "oc5e-3": dict(lr=5e-3, warm=0.3, wstart=0.04, final=1e-3),
    "oc1e-2": dict(lr=1e-2, warm=0.3, wstart=0.04, final=1e-3),
    "sample": dict(aug="sample"),
    "sample_oc5e-3": dict(aug="sample", lr=5e-3, warm=0.3, wstart=0.04, final=1e-3),
    "wide": dict(channels=[64, 128, 256]),
    "nocj": dict(cj=0.0),
    "strong": dict(rotate=15.0, scale=(0.8, 1.2), translate=0.15, shear=8.0, cj=0.4),
    "dsnorm": dict(norm="dataset"),
    "bs128": dict(bs=128, lr=4e-3),
    "head512": dict(hidden=512, drop=0.5),
    "noaug": dict(aug="none"),
    "lowwd": dict(wd=5e-2),
    "grid2": dict(grid=2, hidden=512),
    "cpb3": dict(cpb=3),
    "oc5e-3_30": dict(epochs=30, lr=5e-3, warm=0.3, wstart=0.04, final=1e-3),
    "sample30": dict(aug="sample", epochs=30),
    "strong_oc": dict(
        rotate=15.0,
        scale=(0.8, 1.2),
        translate=0.15,
        shear=8.0,
        cj=0.4,
        lr=5e-3,
        warm=0.3,
        wstart=0.04,
        final=1e-3,
    ),
    "sgd": dict(opt="sgd", lr=0.05),
    "nols": dict(ls=0.0),
    "oc5e-3_25": dict(epochs=25, lr=5e-3, warm=0.3, wstart=0.04, final=1e-3),
    "oc5e-3_20": dict(epochs=20, lr=5e-3, warm=0.3, wstart=0.04, final=1e-3),
    "oc8e-3_30": dict(epochs=30, lr=8e-3, warm=0.3, wstart=0.04, final=1e-3),
    "oc3e-3_30": dict(epochs=30, lr=3e-3, warm=0.3, wstart=0.04, final=1e-3),
    "ema": dict(epochs=30, lr=5e-3, warm=0.3, wstart=0.04, final=1e-3, ema=0.998),
    "clahe": dict(epochs=30, lr=5e-3, warm=0.3, wstart=0.04, final=1e-3, clahe=2.0),
    "clahe_ema": dict(epochs=30, lr=5e-3, warm=0.3, wstart=0.04, final=1e-3, clahe=2.0, ema=0.998),
    "reg": dict(epochs=30, lr=5e-3, warm=0.3, wstart=0.04, final=1e-3, bdrop=0.2, drop=0.5),
    "sample_oc30": dict(epochs=30, lr=5e-3, warm=0.3, wstart=0.04, final=1e-3, aug="sample"),
    "oc5e-3_30_bf16": dict(epochs=30, lr=5e-3, warm=0.3, wstart=0.04, final=1e-3, amp=True),
    # Issue 15: 15 epochs in bf16 with an EMA copy (each run also scores +-2 px shift TTA).
    "s15": S15,
    "s15_ls2": dict(S15, ls=0.2),
    "s15_ep": dict(S15, early_pool=True),
    "s15_epwide": dict(S15, early_pool=True, channels=[64, 128, 256]),
    "s15_sgd": dict(S15, lr=0.05, opt="sgd"),
    "s15_sample": dict(S15, aug="sample"),
    "s15_ep_ls2": dict(S15, early_pool=True, ls=0.2),
    "s15_ep_sgd": dict(S15, lr=0.05, early_pool=True, opt="sgd"),
    "s15_ep48": dict(S15, early_pool=True, channels=[48, 96, 192]),
    "b20": dict(S15, epochs=20, bs=128),
    "b20_eq": dict(S15, epochs=20, bs=128, norm="equalize"),
    "s15_fp32": dict(S15, amp=False),
}


def load(root: str) -> tuple:
    """(train images, train targets, val images, val targets) of a split root, decoded at 32 px."""
    out = []
    classes = discover_classes(Path(root) / "train")
    for split in ("train", "val"):
        samples = list_samples(Path(root) / split, classes)
        out += [decode_all([p for p, _ in samples], 32), np.array([t for _, t in samples])]
    return tuple(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="split root (train/ val/) of GTSRB")
    ap.add_argument(
        "--npz", help="or: an .npz with train_x/train_y/val_x/val_y (uint8 NHWC at 32 px)"
    )
    ap.add_argument(
        "--variants", default="all", help=f"comma-separated from: {', '.join(VARIANTS)}"
    )
    ap.add_argument("--seeds", default="0")
    ap.add_argument(
        "--set",
        default="{}",
        help="JSON overrides applied to every variant, e.g. '{\"epochs\": 1}'",
    )
    ap.add_argument("--out", default=None, help="append JSON lines here")
    args = ap.parse_args()
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    extra, out = json.loads(args.set), args.out
    torch.set_num_threads(int(os.getenv("THREADS", "2")))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if args.npz:
        d = np.load(args.npz)
        data = (d["train_x"], d["train_y"], d["val_x"], d["val_y"])
    else:
        data = load(args.data)
    jobs = [(n, s) for n in names for s in seeds]
    shard, nshard = (int(v) for v in os.getenv("SHARD", "0/1").split("/"))
    for n, s in jobs[shard::nshard]:
        try:
            r = run(dict(VARIANTS[n], seed=s, **extra), data, dev)
            r["name"] = n
        except Exception as e:  # one broken variant must not stop the others
            r = dict(name=n, seed=s, error=repr(e))
        line = json.dumps(r)
        print(line, flush=True)
        if out:
            with open(out, "a") as f:
                f.write(line + "\n")
