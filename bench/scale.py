"""Data paths at scale: PIL from folders vs litdata streaming vs the decoded cache vs the model.

    python bench/scale.py build --src /work/shared/data/gtsrb --dst /tmp/lv_scale/big --variants 8
    python bench/scale.py loader --kind pil|stream|cache|model --root ... [--batches 150]
    python bench/scale.py ddp-once --stream /tmp/lv_scale/big_stream/train

``build`` writes every GTSRB image at several sizes and crops (a large, varied tree on local
disk, not committed); ``loader`` times one data path in its own process and prints one JSON
line (images/s, peak RSS of the process and of its loader workers); ``ddp-once`` streams one
epoch in 2 gloo processes and checks every sample is seen exactly once across the ranks.
Results: docs/results.md R60-R69.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

# (scale of the short side, crop fraction): 8 variants of each image; more with --variants.
_VARIANTS = [(s, c) for c in (1.0, 0.8) for s in (1.0, 1.5, 2.0, 3.0)] + [
    (s, 0.9) for s in (1.25, 1.75, 2.5, 4.0, 0.75, 2.25, 3.5, 1.1)
]


def _write_variants(job: tuple[str, str, int]) -> int:
    src, dst_stem, variants = job
    with Image.open(src) as img:
        img = img.convert("RGB")
        w, h = img.size
        for k, (scale, crop) in enumerate(_VARIANTS[:variants]):
            cw, ch = max(8, int(w * crop)), max(8, int(h * crop))
            x0, y0 = (w - cw) // 2, (h - ch) // 2
            out = img.crop((x0, y0, x0 + cw, y0 + ch)).resize(
                (max(8, int(cw * scale)), max(8, int(ch * scale))), Image.Resampling.BILINEAR
            )
            out.save(f"{dst_stem}_v{k}.ppm")
    return variants


def build(src: Path, dst: Path, variants: int, val_fraction: float) -> None:
    """Write ``variants`` sized/cropped copies of every image, split by track into train/val."""
    jobs = []
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.ppm"))
        tracks = sorted({f.name.split("_")[0] for f in files})
        n_val = max(1, int(len(tracks) * val_fraction))
        val_tracks = set(tracks[-n_val:])
        for f in files:
            split = "val" if f.name.split("_")[0] in val_tracks else "train"
            out_dir = dst / split / class_dir.name
            out_dir.mkdir(parents=True, exist_ok=True)
            jobs.append((str(f), str(out_dir / f.stem), variants))
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        total = sum(pool.map(_write_variants, jobs, chunksize=64))
    print(json.dumps({"images": total, "seconds": round(time.perf_counter() - start, 1)}))


def _peaks() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(own), "peak_worker_rss_mb": round(workers)}


def _loader(kind: str, root: str, size: int, batch: int, workers: int, cache_dir: str):  # noqa: ANN202
    if kind == "stream":
        from lit_vision.streaming_data import StreamingImageDataModule

        dm = StreamingImageDataModule(root, batch_size=batch, num_workers=workers)
    else:
        from lit_vision.data import ImageFolderDataModule

        dm = ImageFolderDataModule(
            root, image_size=size, batch_size=batch, num_workers=workers,
            cache=kind == "cache", cache_dir=cache_dir, scan=False,
        )  # fmt: skip
    dm.setup("fit")
    return dm, dm.train_dataloader()


def time_loader(args: argparse.Namespace) -> dict[str, float]:
    """Images/s of one data path feeding the gtsrb_cnn model (``--train``) or alone."""
    import torch

    from lit_vision.models import CNNClassifier

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    channels = [int(c) for c in args.channels.split(",")]
    model = CNNClassifier(
        num_classes=43, channels=channels, convs_per_block=2, pool_grid=4, hidden=args.hidden
    )
    model.configure_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    if args.kind == "model":  # the compute limit: batches already in memory
        x = torch.randint(0, 255, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
        y = torch.randint(0, 43, (args.batch,))
        batches = ((x, y) for _ in range(args.batches + 5))
    else:
        setup_start = time.perf_counter()
        dm, loader = _loader(
            args.kind, args.root, args.size, args.batch, args.workers, args.cache_dir
        )
        setup_s = time.perf_counter() - setup_start
        batches = iter(loader)
    n, start = 0, None
    for i, (x, y) in enumerate(batches):
        if i == 5:  # after warm-up (workers started, first chunks read)
            n, start = 0, time.perf_counter()
        if args.train:
            step(x, y)
        n += len(y)
        if i >= args.batches + 5:
            break
    seconds = time.perf_counter() - start
    out = {"kind": args.kind, "train": args.train, "channels": args.channels}
    out["images_per_s"] = round(n / seconds, 1)
    out.update(_peaks())
    if args.kind != "model":
        out["setup_s"] = round(setup_s, 1)
    return out


def ddp_once(stream: str, drop_last: bool, world: int = 2) -> None:
    """Stream one shuffled epoch in ``world`` gloo processes; check each sample is seen once."""
    import torch.multiprocessing as mp

    out = Path(f"/tmp/lv_scale/ddp_once_{os.getpid()}")
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_ddp_worker, args=(world, stream, str(out), drop_last), nprocs=world, join=True)
    seen = [np.load(out / f"rank{r}.npy") for r in range(world)]
    allseen = np.concatenate(seen)
    n = int(json.loads(Path(stream, "index.json").read_text())["lit_vision"]["images"])
    counts = np.bincount(allseen, minlength=n)
    print(json.dumps({
        "world": world, "drop_last": drop_last, "images": n, "per_rank": [len(s) for s in seen],
        "seen_once": int((counts == 1).sum()), "seen_twice_or_more": int((counts > 1).sum()),
        "not_seen": int((counts == 0).sum()),
        "ranks_disjoint": len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0,
    }))  # fmt: skip


def _ddp_worker(rank: int, world: int, stream: str, out: str, drop_last: bool) -> None:
    import torch.distributed as dist
    from litdata import StreamingDataLoader, StreamingDataset

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    # StreamingImageDataModule's settings: training drops the ragged tail, evaluation does not.
    ds = StreamingDataset(stream, shuffle=True, drop_last=drop_last, seed=0)
    loader = StreamingDataLoader(ds, batch_size=256, num_workers=1)
    seen = [batch["index"].numpy() for batch in loader]
    np.save(Path(out) / f"rank{rank}.npy", np.concatenate(seen))
    dist.destroy_process_group()


def main() -> None:
    """Command line: build | loader | ddp-once."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--src", type=Path, default=Path("/work/shared/data/gtsrb"))
    b.add_argument("--dst", type=Path, required=True)
    b.add_argument("--variants", type=int, default=8)
    b.add_argument("--val_fraction", type=float, default=0.15)
    t = sub.add_parser("loader")
    t.add_argument("--kind", choices=["pil", "stream", "cache", "model"], required=True)
    t.add_argument("--root", default="")
    t.add_argument("--size", type=int, default=32)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--batches", type=int, default=150)
    t.add_argument("--train", action="store_true", help="run a gtsrb_cnn training step per batch")
    t.add_argument("--cache_dir", default="/tmp/lv_scale/cache")
    t.add_argument("--channels", default="32,64,128", help="gtsrb_cnn's; e.g. 8 for a light model")
    t.add_argument("--hidden", type=int, default=256)
    d = sub.add_parser("ddp-once")
    d.add_argument("--stream", required=True)
    d.add_argument("--drop_last", action="store_true", help="training's setting")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.src, args.dst, args.variants, args.val_fraction)
    elif args.cmd == "loader":
        print(json.dumps(time_loader(args)))
    else:
        ddp_once(args.stream, args.drop_last)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
