"""Data paths at scale: PIL from folders vs litdata streaming vs the decoded cache vs the model.

    python bench/scale.py build --src /work/shared/data/gtsrb --dst /tmp/lv_scale/big --variants 8
    python bench/scale.py loader --kind pil|stream|cache|model --root ... [--batches 150] [--train]
    python bench/scale.py e2e [--tree /tmp/lv_scale/jpeg --stream /tmp/lv_scale/jpeg_stream]
    python bench/scale.py fit-pair [--epochs 1 --rounds 2] [-- --trainer.limit_train_batches 60]
    python bench/scale.py ddp-once --stream /tmp/lv_scale/big_stream/train

``build`` writes every GTSRB image at several sizes and crops (a large, varied tree on local
disk, not committed); ``loader`` times one data path in its own process and prints one JSON
line (images/s, peak RSS of the process, RSS of its live loader workers); ``e2e`` builds a tree of
~2-megapixel JPEGs from cats/dogs (``build-jpeg``) and its 64 px stream if absent, then times
whole training steps (batch augmentation, a light CNN) in turn: the folder DataModule's PIL
fallback (its cache budget set below the decoded size), the stream, and the model on batches
already in memory (the compute limit), with ratios against PIL; ``fit-pair`` runs ``fit``
from the folder (decoded cache) and from its stream with the same config and seed, in turn;
``ddp-once`` streams one epoch in 2 gloo processes and checks every sample is seen exactly
once across the ranks. Results: docs/results.md R60-R69, R88-R90.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# (scale of the short side, crop fraction): 8 variants of each image; more with --variants.
_VARIANTS = [(s, c) for c in (1.0, 0.8) for s in (1.0, 1.5, 2.0, 3.0)] + [
    (s, 0.9) for s in (1.25, 1.75, 2.5, 4.0, 0.75, 2.25, 3.5, 1.1)
]


def _write_variants(job: tuple[str, str, int], fmt: str = "ppm") -> int:
    """Write the first ``variants`` (scale, crop) copies of one image as ``{dst_stem}_vK.{fmt}``."""
    src, dst_stem, variants = job
    table, save_args = _FORMATS[fmt]
    with Image.open(src) as img:
        img = img.convert("RGB")
        w, h = img.size
        for k, (scale, crop) in enumerate(table[:variants]):
            cw, ch = max(8, int(w * crop)), max(8, int(h * crop))
            x0, y0 = (w - cw) // 2, (h - ch) // 2
            out = img.crop((x0, y0, x0 + cw, y0 + ch)).resize(
                (max(8, int(cw * scale)), max(8, int(ch * scale))), Image.Resampling.BILINEAR
            )
            out.save(f"{dst_stem}_v{k}.{fmt}", **save_args)
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


# (scale, crop fraction) of every cats/dogs JPEG (mostly 150-500 px): photos of ~2 megapixels
# on average (the first 3: mean 1.9, median 1.8, up to 12.6), re-encoded; trained at 64 px,
# so the folder path spends its time decoding files.
_JPEG_VARIANTS = [(3.0, 1.0), (4.0, 0.9), (5.0, 0.8), (3.5, 1.0), (4.5, 0.85), (2.5, 1.0)]


# Each output format: its (scale, crop) table and PIL save options.
_FORMATS: dict[str, tuple[list[tuple[float, float]], dict[str, int]]] = {
    "ppm": (_VARIANTS, {}),
    "jpg": (_JPEG_VARIANTS, {"quality": 90}),
}


def build_jpeg(src: Path, dst: Path, variants: int, val_fraction: float) -> None:
    """JPEG copies of every image at several sizes and crops, split by source image."""
    jobs = []
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.jpg"))
        n_val = max(1, int(len(files) * val_fraction))
        for k, f in enumerate(files):
            out_dir = dst / ("val" if k >= len(files) - n_val else "train") / class_dir.name
            out_dir.mkdir(parents=True, exist_ok=True)
            jobs.append((str(f), str(out_dir / f.stem.replace(".", "_")), variants))
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        total = sum(pool.map(functools.partial(_write_variants, fmt="jpg"), jobs, chunksize=32))
    size = sum(f.stat().st_size for f in dst.rglob("*.jpg"))
    print(json.dumps({"images": total, "gb": round(size / 1e9, 2),
                      "seconds": round(time.perf_counter() - start, 1)}))  # fmt: skip


def _peaks() -> dict[str, float]:
    """Peak RSS of this process, and the memory its live children (loader workers) add now.

    The workers' USS (pages only they hold; forked workers share the rest with this process).
    RUSAGE_CHILDREN would not do: ``import torch`` already runs a ~430 MB child process.
    """
    import psutil

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = psutil.Process().children(recursive=True)
    uss = sum(c.memory_full_info().uss for c in children) / 1024**2
    return {"peak_rss_mb": round(own), "workers_uss_mb": round(uss)}


def _datamodule(args: argparse.Namespace):  # noqa: ANN202
    """The DataModule of one data path, each with its own default loader workers."""
    workers = {} if args.workers is None else {"num_workers": args.workers}
    if args.kind == "stream":
        from lit_vision.streaming_data import StreamingImageDataModule

        return StreamingImageDataModule(args.root, batch_size=args.batch, **workers)
    from lit_vision.data import ImageFolderDataModule

    # pil: the folder DataModule when the decoded images exceed its cache budget (its fallback:
    # every image decoded from its file every epoch); cache: decoded once, memory-mapped.
    return ImageFolderDataModule(
        args.root, image_size=args.size, batch_size=args.batch, **workers,
        cache="auto" if args.kind == "pil" else True, cache_budget_gb=args.budget_gb,
        cache_dir=args.cache_dir, scan=False,
    )  # fmt: skip


def _batches(args: argparse.Namespace) -> tuple[object, dict[str, object]]:
    """The batches to time, and what to report about their source."""
    import torch

    if args.kind == "model":  # the compute limit: batches already in memory
        x = torch.randint(0, 255, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
        y = torch.randint(0, args.classes, (args.batch,))
        return ((x, y) for _ in range(args.batches + 5)), {"classes": args.classes}
    start = time.perf_counter()
    dm = _datamodule(args)
    dm.setup("fit")
    loader = dm.train_dataloader()
    info: dict[str, object] = {"classes": dm.num_classes, "images": len(dm.datasets["train"])}
    if args.kind != "stream":  # whether the folder DataModule decoded into its cache
        info["decoded_cache"] = dm.datasets["train"].cache is not None
    info["workers"] = loader.num_workers
    info["setup_s"] = round(time.perf_counter() - start, 1)
    return iter(loader), info


def _train_step(args: argparse.Namespace, classes: int):  # noqa: ANN202
    """One training step of the CNN (``--channels``), after the DataModules' batch augmentation."""
    import torch

    from lit_vision.augment import AugmentSettings
    from lit_vision.models import CNNClassifier

    channels = [int(c) for c in args.channels.split(",")]
    model = CNNClassifier(
        num_classes=classes, channels=channels, convs_per_block=2, pool_grid=4, hidden=args.hidden
    )
    model.configure_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    augment = AugmentSettings().batch_augment() if args.augment else None

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if augment is not None:
            x = augment(x)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def time_loader(args: argparse.Namespace) -> dict[str, object]:
    """Images/s of one data path feeding a training step (``--train``) or alone."""
    import torch

    # 0: torch's default (every core), as fit runs; R63-R68 used half the cores (the default).
    torch.set_num_threads(args.threads or torch.get_num_threads())
    batches, info = _batches(args)
    step = _train_step(args, int(info["classes"])) if args.train else None
    n, start = 0, time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if i == 5:  # after warm-up (workers started, first chunks read)
            n, start = 0, time.perf_counter()
        if step is not None:
            step(x, y)
        n += len(y)
        if i >= args.batches + 5:
            break
    seconds = time.perf_counter() - start
    out = {"kind": args.kind, "train": args.train, "augment": args.augment, "size": args.size}
    out.update(channels=args.channels, images_per_s=round(n / seconds, 1), **_peaks(), **info)
    return out


def _subprocess(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd``; its stdout and its own peak RSS in MB (``wait4``: this child only)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read()[-3000:]}")
        return out.read(), usage.ru_maxrss / 1024


def _median(rows: list[dict], kind: str, key: str) -> float:
    return float(np.median([r[key] for r in rows if r["kind"] == kind]))


def end_to_end(args: argparse.Namespace) -> dict[str, object]:
    """Training steps from a large JPEG tree: PIL fallback vs stream vs compute limit, in turn."""
    tree = args.tree
    if not (tree / "train").is_dir():
        build_jpeg(args.src, tree, args.variants, 0.1)
    if not Path(args.stream, "train", "index.json").is_file():  # raw uint8 at the training size
        _subprocess([sys.executable, "-m", "lit_vision", "optimize", "--data.root", str(tree),
                     "--output", args.stream, "--image_size", str(args.size)])  # fmt: skip
    common = ["--train", "--augment", "--size", str(args.size), "--channels", args.channels,
              "--threads", str(args.threads),
              "--hidden", str(args.hidden), "--batches", str(args.batches)]  # fmt: skip
    kinds = {
        "model": ["--kind", "model", "--classes", str(len(list((tree / "train").iterdir())))],
        "pil": ["--kind", "pil", "--root", str(tree), "--budget_gb", str(args.budget_gb)],
        "stream": ["--kind", "stream", "--root", args.stream],
    }
    rows = []
    for r in range(args.rounds):  # interleaved, so drift in the machine's load hits every path
        for extra in kinds.values():
            out, _ = _subprocess([sys.executable, __file__, "loader", *common, *extra])
            rows.append({**json.loads(out.strip().splitlines()[-1]), "round": r})
            print(json.dumps(rows[-1]), flush=True)
    speed = {k: _median(rows, k, "images_per_s") for k in kinds}
    pil = next(r for r in rows if r["kind"] == "pil")
    decoded_gb = pil["images"] * args.size**2 * 3 / 1024**3
    return {
        "images_per_s": speed,
        "stream_over_pil": round(speed["stream"] / speed["pil"], 2),
        "model_over_pil": round(speed["model"] / speed["pil"], 2),
        "stream_over_model": round(speed["stream"] / speed["model"], 2),
        "peak_rss_mb": {k: max(r["peak_rss_mb"] for r in rows if r["kind"] == k) for k in kinds},
        "pil_workers_uss_mb": pil["workers_uss_mb"], "pil_workers": pil["workers"],
        "pil_fallback": not pil["decoded_cache"], "train_images": pil["images"],
        "decoded_gb": round(decoded_gb, 2), "cache_budget_gb": args.budget_gb,
    }  # fmt: skip


def fit_pair(args: argparse.Namespace) -> dict[str, object]:
    """``fit`` from the folder (decoded cache) and from its stream, same config and seed, in turn.

    Throughput is the run report's ``train_images_per_s`` (training phase, whole steps).
    """
    paths = {
        "folder": ["--data.root", args.folder, "--data.cache_dir", args.cache_dir],
        "stream": ["--config", str(REPO / "configs" / "stream.yaml"), "--data.root", args.stream],
    }
    rows = []
    for r in range(args.rounds):
        for kind, extra in paths.items():
            save_dir = args.out / f"{kind}_{r}"
            shutil.rmtree(save_dir, ignore_errors=True)
            cmd = [sys.executable, "-m", "lit_vision", "fit", "--config", args.config, *extra,
                   "--seed_everything", str(args.seed), "--trainer.max_epochs", str(args.epochs),
                   "--trainer.enable_progress_bar", "false",
                   "--trainer.logger.init_args.save_dir", str(save_dir), *args.extra]  # fmt: skip
            _, rss = _subprocess(cmd)
            report = json.loads(next(save_dir.rglob("report.json")).read_text())
            metrics = report.get("final_metrics") or {}
            rows.append({"kind": kind, "round": r, "peak_rss_mb": round(rss),
                         "images_per_s": round(report["timing"]["train_images_per_s"], 1),
                         "fit_wall_s": round(report["timing"]["fit_wall"], 1),
                         "val_acc": metrics.get("val/acc")})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    speed = {k: _median(rows, k, "images_per_s") for k in paths}
    return {
        "images_per_s": speed,
        "stream_over_folder": round(speed["stream"] / speed["folder"], 2),
        "val_acc": {k: [r["val_acc"] for r in rows if r["kind"] == k] for k in paths},
        "peak_rss_mb": {k: max(r["peak_rss_mb"] for r in rows if r["kind"] == k) for k in paths},
    }


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


def _loader_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--kind", choices=["pil", "stream", "cache", "model"], required=True)
    t.add_argument("--root", default="")
    t.add_argument("--size", type=int, default=32)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--workers", type=int, default=None, help="default: the DataModule's own")
    t.add_argument("--batches", type=int, default=150)
    t.add_argument("--train", action="store_true", help="run a training step per batch")
    t.add_argument("--augment", action="store_true", help="BatchAugment in the step (fit's)")
    t.add_argument("--cache_dir", default="/tmp/lv_scale/cache")
    t.add_argument("--budget_gb", type=float, default=0.0, help="pil: the cache budget it exceeds")
    t.add_argument("--channels", default="32,64,128", help="gtsrb_cnn's; e.g. 8 for a light model")
    t.add_argument("--hidden", type=int, default=256)
    t.add_argument("--classes", type=int, default=43, help="model: classes of the random labels")
    t.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="0: all")


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
    _loader_args(t)
    j = sub.add_parser("build-jpeg")
    j.add_argument("--src", type=Path, default=Path("/work/shared/data/catsdogs"))
    j.add_argument("--dst", type=Path, required=True)
    j.add_argument("--variants", type=int, default=3)
    j.add_argument("--val_fraction", type=float, default=0.1)
    e = sub.add_parser("e2e")
    e.add_argument("--tree", type=Path, default=Path("/tmp/lv_scale/jpeg"))
    e.add_argument("--stream", default="/tmp/lv_scale/jpeg_stream")
    e.add_argument("--src", type=Path, default=Path("/work/shared/data/catsdogs"))
    e.add_argument("--variants", type=int, default=3)
    e.add_argument("--size", type=int, default=64)
    e.add_argument("--channels", default="8,16")
    e.add_argument("--hidden", type=int, default=32)
    e.add_argument("--batches", type=int, default=75, help="at most one epoch (84 batches)")
    e.add_argument("--rounds", type=int, default=2)
    e.add_argument("--budget_gb", type=float, default=0.05, help="below the decoded tree's size")
    # Half the cores for torch, the rest for PIL's loader workers (conservative for the stream,
    # which leaves them idle); 0 (torch's default, as fit) oversubscribes the PIL path.
    e.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    f = sub.add_parser("fit-pair")
    f.add_argument("--folder", default="/tmp/lv/gtsrb")
    f.add_argument("--stream", default="/tmp/lv_scale/gtsrb_stream")
    f.add_argument("--config", default=str(REPO / "configs" / "gtsrb_cnn.yaml"))
    f.add_argument("--cache_dir", default="/tmp/lv_scale/cache")
    f.add_argument("--out", type=Path, default=Path("/tmp/lv_scale/fit_pair"))
    f.add_argument("--epochs", type=int, default=1)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--rounds", type=int, default=2)
    f.add_argument("extra", nargs="*", help="more fit arguments, after --")
    d = sub.add_parser("ddp-once")
    d.add_argument("--stream", required=True)
    d.add_argument("--drop_last", action="store_true", help="training's setting")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.src, args.dst, args.variants, args.val_fraction)
    elif args.cmd == "build-jpeg":
        build_jpeg(args.src, args.dst, args.variants, args.val_fraction)
    elif args.cmd == "loader":
        print(json.dumps(time_loader(args)))
    elif args.cmd == "e2e":
        print(json.dumps(end_to_end(args)))
    elif args.cmd == "fit-pair":
        print(json.dumps(fit_pair(args)))
    else:
        ddp_once(args.stream, args.drop_last)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
