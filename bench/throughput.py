"""Training throughput and time-to-accuracy: lit_vision vs a naive loop vs the compute limit.

One run measures, on the same data, model, batch size and precision:

  naive    torchvision ImageFolder + PIL + torchvision transforms, 2 workers, plain PyTorch loop
  memory   the same model fed from decoded in-memory tensors (no augmentation): compute limit
  lit      lit_vision's Trainer.fit (ImageFolderDataModule + CNNClassifier), logging and
           validation off, steady-state epochs (the first, with warm-up and caching, excluded)
  lit-sample  the same with ``augment="sample"`` (albumentations per image in loader workers)
  tta-*    wall time until val/acc first reaches --target-acc (naive loop vs lit_vision)
  tta-fit-old / tta-fit-new  the whole ``python -m lit_vision fit --config C`` command, run to
           the end, for --old-config and --new-config: wall time from launch to the first
           val/acc >= --target-acc (TensorBoard's event times), the command's wall time, best
           val/acc and peak RSS. Recipes race as users run them, start-up included:

  python bench/throughput.py --data /tmp/lv_gtsrb --phases tta-naive,tta-fit-old,tta-fit-new

Each phase runs in its own process, so its peak RSS (the process plus its loader workers,
sampled) is its own. Usage:

  python bench/throughput.py --data /tmp/lv_gtsrb            # or the raw gtsrb class folders
  python bench/throughput.py --mode catsdogs --data /tmp/lv_catsdogs --transfer-phase frozen

Results go to bench/results/throughput-MODE-TIMESTAMP.{json,md} and a table is printed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn.functional as F

from lit_vision.cache import decode_all
from lit_vision.cli import LitVisionCLI, build_cli, cpu_has_native_bf16
from lit_vision.data import ImageFolderDataModule
from lit_vision.folders import discover_classes, list_samples
from lit_vision.loaders import loader_workers
from lit_vision.models import ImageClassifier
from lit_vision.split import split_dataset

ROOT = Path(__file__).resolve().parents[1]

# Each mode trains exactly what `fit --config` trains: the bench reads the config file.
CONFIGS = {
    "gtsrb": ROOT / "configs" / "gtsrb_cnn.yaml",
    "catsdogs": ROOT / "configs" / "catsdogs_transfer.yaml",
}
AUGMENT_KEYS = ("hflip", "vflip", "rotate", "scale", "translate", "shear", "color_jitter")


def import_class(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


@functools.cache
def _configured(mode: str, data: str, channels_last: bool, transfer_phase: str) -> LitVisionCLI:
    overrides = ["--model.init_args.channels_last", str(channels_last).lower()]
    if mode == "catsdogs":  # the transfer model held in one phase: head only, or blocks unfrozen
        overrides += [
            "--model.init_args.freeze_epochs",
            str(10**6 if transfer_phase == "frozen" else 0),
        ]
    return build_cli(
        [
            "--config",
            str(CONFIGS[mode]),
            "--data.root",
            data,
            "--data.num_workers",
            "0",
            "--trainer.logger",
            "false",
            *overrides,
        ],
        run=False,
    )


def configured(args: argparse.Namespace) -> LitVisionCLI:
    """``fit --config CONFIG --data.root DATA`` as the CLI resolves it: model and data built, not run."""
    return _configured(args.mode, args.data, not args.no_channels_last, args.transfer_phase)


def experiment(args: argparse.Namespace) -> dict[str, Any]:
    """The mode's optimizer and schedule factories, image size and augmentation, from the CLI."""
    cli = configured(args)
    data = cli.config.data.init_args
    return {
        "optimizer": cli.model.optimizer_factory,
        "scheduler": cli.model.scheduler_factory,
        "image_size": data.get(
            "image_size"
        ),  # None: the model's own (a backbone's pretrained size)
        "augment": {k: data.get(k) for k in AUGMENT_KEYS},
    }


# ---------------------------------------------------------------- measurement helpers
class PeakRSS:
    """Samples the RSS of this process plus all its children (loader workers) every 0.2 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            try:
                total = proc.memory_info().rss + sum(
                    c.memory_info().rss for c in proc.children(recursive=True)
                )
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def stop(self) -> float:
        """Peak in MB (sampled sum over processes; never below this process's own max RSS)."""
        self._stop.set()
        self._thread.join()
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(self.peak, own) / 2**20


def autocast(precision: str) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16"))


def classes_and_counts(root: Path) -> tuple[list[str], int]:
    classes = discover_classes(root / "train")
    return classes, len(list_samples(root / "train", classes))


# ---------------------------------------------------------------- models
def build_model(args: argparse.Namespace, classes: list[str]) -> ImageClassifier:
    """The LightningModule of the chosen mode (its ``forward`` is used by every phase)."""
    if args.model_class:
        return import_class(args.model_class)(num_classes=len(classes), class_names=classes)
    _configured.cache_clear()  # a fresh model each call, seeded by the CLI (seed_everything 0)
    model = configured(args).model
    if hasattr(model, "apply_phase"):
        model.apply_phase(0)
    return model


def image_size(args: argparse.Namespace, model: ImageClassifier) -> int:
    return experiment(args)["image_size"] or model.default_image_size


# ---------------------------------------------------------------- phases
def naive_loaders(
    args: argparse.Namespace, model: ImageClassifier, with_val: bool
) -> tuple[Any, Any]:
    from torchvision import datasets
    from torchvision import transforms as T

    size, aug = image_size(args, model), experiment(args)["augment"]
    # The model's input normalisation, as a transform: per-image standardisation (gtsrb_cnn's
    # input_norm: image) or the model's mean/std.
    norm = (
        T.Lambda(lambda x: (x - x.mean()) / x.std().clamp_min(1 / 255))
        if model.input_norm == "image"
        else T.Normalize(model.mean.flatten().tolist(), model.std.flatten().tolist())
    )
    train_tf = T.Compose(
        [T.Resize((size, size))]
        + ([T.RandomHorizontalFlip()] if aug["hflip"] else [])
        + [
            T.RandomAffine(aug["rotate"], translate=(aug["translate"],) * 2, scale=aug["scale"]),
            T.ColorJitter(aug["color_jitter"], aug["color_jitter"], aug["color_jitter"]),
            T.ToTensor(),
            norm,
        ]
    )
    eval_tf = T.Compose([T.Resize((size, size)), T.ToTensor(), norm])
    root = Path(args.data)
    train = torch.utils.data.DataLoader(
        datasets.ImageFolder(root / "train", train_tf),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=2,
    )
    val = (
        torch.utils.data.DataLoader(
            datasets.ImageFolder(root / "val", eval_tf), batch_size=args.batch_size, num_workers=2
        )
        if with_val
        else None
    )
    return train, val


def phase_naive(args: argparse.Namespace, tta: bool = False) -> dict[str, Any]:
    """Plain PyTorch loop on torchvision ImageFolder; ``tta`` adds validation and stops at the target."""
    t_start = time.perf_counter()
    classes, n_train = classes_and_counts(Path(args.data))
    torch.manual_seed(0)
    model = build_model(args, classes)
    net = model.net  # the bare network: normalisation is in the transforms, NCHW memory format
    train, val = naive_loaders(args, model, with_val=tta)
    epochs = args.tta_epochs if tta else args.epochs
    opt = experiment(args)["optimizer"]([p for p in net.parameters() if p.requires_grad])
    sched = experiment(args)["scheduler"](opt, total_steps=len(train) * epochs)
    ls = model.label_smoothing
    epoch_times, seen, history, reached = [], [], [], None
    for epoch in range(epochs):
        model.train()  # (a transfer model keeps its frozen backbone in eval mode)
        t0, n = time.perf_counter(), 0
        for i, (x, y) in enumerate(train):
            if args.limit_batches and i >= args.limit_batches:
                break
            with autocast(args.naive_precision):
                loss = F.cross_entropy(net(x), y, label_smoothing=ls)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n += len(y)
        epoch_times.append(time.perf_counter() - t0)
        seen.append(n)
        if tta:
            net.eval()
            correct = total = 0
            with torch.no_grad(), autocast(args.naive_precision):
                for x, y in val:
                    correct += (net(x).argmax(1) == y).sum().item()
                    total += len(y)
            acc = correct / total
            history.append(
                {"epoch": epoch, "val_acc": acc, "wall_s": time.perf_counter() - t_start}
            )
            if acc >= args.target_acc and reached is None:
                reached = history[-1]
                break
    return {
        "epoch_times": epoch_times,
        "samples": seen,
        "history": history,
        "reached": reached,
        "n_train": n_train,
    }


def phase_memory(args: argparse.Namespace) -> dict[str, Any]:
    """The compute limit: decoded uint8 tensors in memory, the model's own forward, no augmentation."""
    classes = discover_classes(Path(args.data) / "train")
    samples = list_samples(Path(args.data) / "train", classes)
    torch.manual_seed(0)
    model = build_model(args, classes)
    images = torch.from_numpy(decode_all([p for p, _ in samples], image_size(args, model))).permute(
        0, 3, 1, 2
    )
    targets = torch.tensor([t for _, t in samples])
    model.configure_model()
    model.train()
    opt = experiment(args)["optimizer"]([p for p in model.parameters() if p.requires_grad])
    bs, epoch_times, seen = args.batch_size, [], []
    for _ in range(args.epochs):
        perm = torch.randperm(len(targets))
        t0, n = time.perf_counter(), 0
        for i in range(len(perm) // bs):
            if args.limit_batches and i >= args.limit_batches:
                break
            idx = perm[i * bs : (i + 1) * bs]
            x, y = images[idx], targets[idx]
            with autocast(args.precision):
                loss = F.cross_entropy(model(x), y, label_smoothing=model.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
        epoch_times.append(time.perf_counter() - t0)
        seen.append(n)
    return {"epoch_times": epoch_times, "samples": seen, "n_train": len(samples)}


def lit_datamodule(
    args: argparse.Namespace, model: ImageClassifier, augment: str, cache_dir: str
) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        args.data,
        image_size=image_size(args, model),
        batch_size=args.batch_size,
        cache_dir=cache_dir,
        augment=augment,
        **experiment(args)["augment"],
    )


def phase_lit(
    args: argparse.Namespace, augment: str = "batch", tta: bool = False
) -> dict[str, Any]:
    """lit_vision through Trainer.fit; ``tta`` validates every epoch and records the target crossing."""
    import lightning as L

    t_start = time.perf_counter()
    L.seed_everything(0, verbose=False)
    model = build_model(args, discover_classes(Path(args.data) / "train"))
    cache_dir = tempfile.mkdtemp(prefix="lv_bench_cache_")  # cold: the build is part of the run
    dm = lit_datamodule(args, model, augment, cache_dir)
    t0 = time.perf_counter()
    dm.setup("fit")
    cache_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lit_datamodule(args, model, augment, cache_dir).setup(
        "fit"
    )  # second run: memory-maps the disk cache
    cache_load_s = time.perf_counter() - t0
    epochs = args.tta_epochs if tta else args.epochs
    times: dict[str, Any] = {"epoch_times": [], "history": [], "reached": None}

    class Timer(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            times["epoch_times"].append(time.perf_counter() - self.t0)

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.sanity_checking or "val/acc" not in trainer.callback_metrics:
                return
            acc = float(trainer.callback_metrics["val/acc"])
            times["history"].append(
                {
                    "epoch": trainer.current_epoch,
                    "val_acc": acc,
                    "wall_s": time.perf_counter() - t_start,
                }
            )
            if acc >= args.target_acc and times["reached"] is None:
                times["reached"] = times["history"][-1]
                if not args.full_tta:
                    trainer.should_stop = True

    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1.0 if tta else 0,
        num_sanity_val_steps=2 if tta else 0,
        limit_train_batches=args.limit_batches or 1.0,
        callbacks=[Timer()],
    )
    trainer.fit(model, datamodule=dm)
    per_epoch = trainer.num_training_batches * args.batch_size
    times.update(
        samples=[per_epoch] * len(times["epoch_times"]),
        cache_build_s=cache_build_s,
        cache_load_s=cache_load_s,
        num_workers=loader_workers(dm.hparams.num_workers, dm.datasets["train"]),
        n_train=len(dm.datasets["train"]),
    )
    return times


def phase_fit(args: argparse.Namespace, config: str) -> dict[str, Any]:
    """The whole ``fit`` command on ``config``: val/acc per epoch with wall times from launch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tempfile.mkdtemp(prefix="lv_bench_tb_")
    cmd = [
        *(sys.executable, "-m", "lit_vision", "fit", "--config", config),
        *("--data.root", args.data, "--seed_everything", str(args.seed)),
        *("--trainer.enable_progress_bar", "false"),
        *("--trainer.logger.init_args.save_dir", tb),
        *args.fit_args.split(),
    ]
    start = time.time()
    out = None if os.getenv("BENCH_VERBOSE") else subprocess.DEVNULL
    subprocess.run(cmd, check=True, stdout=out, stderr=out)
    wall = time.time() - start
    (events,) = Path(tb).rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    history = [
        {"epoch": i, "val_acc": e.value, "wall_s": e.wall_time - start}
        for i, e in enumerate(acc.Scalars("val/acc"))
    ]
    reached = next((h for h in history if h["val_acc"] >= args.target_acc), None)
    n_train = len(
        list_samples(Path(args.data) / "train", discover_classes(Path(args.data) / "train"))
    )
    walls = [h["wall_s"] for h in history]
    return {
        "config": config,
        "command_wall_s": wall,
        "history": history,
        "reached": reached,
        "epoch_times": [b - a for a, b in zip(walls, walls[1:], strict=False)] or [wall],
        "samples": [n_train] * max(len(walls) - 1, 1),
    }


PHASES = {
    "naive": lambda a: phase_naive(a),
    "memory": phase_memory,
    "lit": lambda a: phase_lit(a, "batch"),
    "lit-sample": lambda a: phase_lit(a, "sample"),
    "tta-naive": lambda a: phase_naive(a, tta=True),
    "tta-lit": lambda a: phase_lit(a, "batch", tta=True),
    "tta-fit-old": lambda a: phase_fit(a, a.old_config),
    "tta-fit-new": lambda a: phase_fit(a, a.new_config),
}


TTA_PHASES = ("tta-naive", "tta-lit", "tta-fit-old", "tta-fit-new")


def run_child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    rss = PeakRSS()
    t0 = time.perf_counter()
    result = PHASES[args.phase](args)
    result["wall_s"] = time.perf_counter() - t0
    result["peak_rss_mb"] = rss.stop()
    Path(args.child_out).write_text(json.dumps(result))


# ---------------------------------------------------------------- driver
def steady(result: dict[str, Any]) -> dict[str, float]:
    """Images/s and epoch time over the epochs after the first (warm-up)."""
    times, samples = result["epoch_times"], result["samples"]
    if len(times) > 1:
        times, samples = times[1:], samples[1:]
    return {"img_s": sum(samples) / sum(times), "epoch_s": float(np.mean(times))}


def prepare_data(data: str, tmp: Path) -> str:
    """A split root as is; raw class folders are split (track-grouped, val 0.15, seed 0) into tmp."""
    root = Path(data)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return str(root)
    dst = tmp / "split"
    split_dataset(root, dst, val=0.15, seed=0, group_regex=r"^(\d+)_", quiet=True)
    return str(dst)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="split root (train/ val/) or raw class folders")
    p.add_argument("--mode", choices=["gtsrb", "catsdogs"], default="gtsrb")
    p.add_argument("--phases", default="naive,memory,lit,lit-sample,tta-naive,tta-lit")
    p.add_argument(
        "--precision", default=None, help="bf16-mixed or 32-true (default: bf16 if native)"
    )
    p.add_argument(
        "--naive-precision",
        default="32-true",
        help="precision of the naive loop: the course recipe is fp32 (32-true); pass "
        "'same' to give it the precision of the other phases",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="default 128 (gtsrb), 32 (catsdogs)"
    )
    p.add_argument("--epochs", type=int, default=3, help="throughput epochs; the first is excluded")
    p.add_argument("--limit-batches", type=int, default=0, help="batches per epoch (0: all)")
    p.add_argument("--tta-epochs", type=int, default=30)
    p.add_argument("--target-acc", type=float, default=0.97)
    p.add_argument(
        "--full-tta", action="store_true", help="lit tta: train all epochs (final accuracy)"
    )
    p.add_argument(
        "--transfer-phase",
        choices=["frozen", "unfrozen"],
        default="unfrozen",
        help="catsdogs: train the head only, or the head and the last 3 backbone blocks",
    )
    p.add_argument(
        "--old-config", default=str(ROOT / "configs" / "gtsrb_cnn.yaml"), help="tta-fit-old"
    )
    p.add_argument(
        "--new-config", default=str(ROOT / "configs" / "small_cnn.yaml"), help="tta-fit-new"
    )
    p.add_argument("--seed", type=int, default=0, help="tta-fit-*: --seed_everything")
    p.add_argument("--fit-args", default="", help="tta-fit-*: more fit arguments, one string")
    p.add_argument("--model-class", default=None, help="catsdogs: dotted LightningModule class")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="interleaved runs of each throughput phase (best kept)",
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--tag", default="")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.precision is None:
        args.precision = "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    if args.naive_precision == "same":
        args.naive_precision = args.precision
    if args.batch_size is None:
        args.batch_size = 128 if args.mode == "gtsrb" else 32
    if args.phase:
        return run_child(args)

    with tempfile.TemporaryDirectory(prefix="lv_bench_") as tmp:
        args.data = prepare_data(args.data, Path(tmp))
        runs: dict[str, list[dict[str, Any]]] = {}
        phases = args.phases.split(",")
        # Throughput phases are interleaved --repeat times and each keeps its fastest run: on a
        # shared machine a neighbour's burst then cannot land on one phase only.
        order = [p for _ in range(args.repeat) for p in phases if not p.startswith("tta")]
        order += [p for p in phases if p.startswith("tta")]
        for i, phase in enumerate(order):
            out = Path(tmp) / f"{phase}-{i}.json"
            cmd = [
                sys.executable,
                __file__,
                *sys.argv[1:],
                "--data",
                args.data,
                "--phase",
                phase,
                "--child-out",
                str(out),
                "--precision",
                args.precision,
                "--batch-size",
                str(args.batch_size),
                "--naive-precision",
                args.naive_precision,
            ]
            print(f"[bench] {phase} ...", flush=True)
            proc = subprocess.run(
                cmd, stdout=subprocess.DEVNULL if not os.getenv("BENCH_VERBOSE") else None
            )
            if proc.returncode:
                raise SystemExit(
                    f"phase {phase} failed (exit {proc.returncode}); rerun with BENCH_VERBOSE=1"
                )
            runs.setdefault(phase, []).append(json.loads(out.read_text()))
            print(f"\n[bench] {phase}: {summary_line(phase, runs[phase][-1])}", flush=True)
        results = {}
        for phase, rs in runs.items():  # the fastest run of each phase, with all runs' images/s
            results[phase] = max(rs, key=lambda r: steady(r)["img_s"])  # (tta phases run once)
            if len(rs) > 1:
                results[phase]["runs_img_s"] = [steady(r)["img_s"] for r in rs]
    report(args, results)


def summary_line(phase: str, r: dict[str, Any]) -> str:
    if phase.startswith("tta"):
        reached = r["reached"]
        return (
            f"reached {args_target(r)} at {reached['wall_s']:.1f} s (epoch {reached['epoch'] + 1})"
            if reached
            else f"not reached; best {max(h['val_acc'] for h in r['history']):.4f}"
        )
    s = steady(r)
    return f"{s['img_s']:.0f} img/s, {s['epoch_s']:.2f} s/epoch, peak RSS {r['peak_rss_mb']:.0f} MB"


def args_target(r: dict[str, Any]) -> str:
    return f"val/acc {r['reached']['val_acc']:.4f}"


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    machine = (
        f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"torch {torch.__version__}"
    )
    if any(not p.startswith("tta-fit") for p in args.phases.split(",")):
        # The in-process phases' settings; tta-fit-* runs take theirs from the config files.
        machine += f", {args.precision}, batch {args.batch_size}"
    try:
        model_name = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        machine = f"{model_name}, " + machine
    except (OSError, StopIteration):
        pass
    rows, summary = (
        [],
        {
            "machine": machine,
            "mode": args.mode,
            "data": args.data,
            "precision": args.precision,
            "naive_precision": args.naive_precision,
            "batch_size": args.batch_size,
            "channels_last": not args.no_channels_last,
            "repeat": args.repeat,
            "phases": results,
        },
    )
    names = {
        "naive": f"(a) naive: ImageFolder + PIL + torchvision, 2 workers, {args.naive_precision}, NCHW",
        "memory": "(b) in-memory tensors (compute limit)",
        "lit": "(c) lit_vision Trainer.fit (cache + batch aug)",
        "lit-sample": "(c') lit_vision, albumentations per sample",
    }
    for phase, label in names.items():
        if phase in results:
            s = steady(results[phase])
            extra = ""
            if phase.startswith("lit"):
                r = results[phase]
                extra = f"cache build {r['cache_build_s']:.1f} s, reload {r['cache_load_s']:.2f} s, {r['num_workers']} workers"
            runs = results[phase].get("runs_img_s")
            if runs:
                extra = f"best of {len(runs)} ({', '.join(f'{r:.0f}' for r in runs)})" + (
                    f"; {extra}" if extra else ""
                )
            rows.append(
                (
                    label,
                    f"{s['img_s']:.0f}",
                    f"{s['epoch_s']:.2f}",
                    f"{results[phase]['peak_rss_mb']:.0f}",
                    extra,
                )
            )
            summary[f"{phase}_img_s"] = s["img_s"]
    for num, den in (
        ("lit", "naive"),
        ("lit", "memory"),
        ("lit-sample", "naive"),
        ("lit-sample", "memory"),
        ("naive", "memory"),
    ):
        if f"{num}_img_s" in summary and f"{den}_img_s" in summary:
            summary[f"ratio_{num}/{den}"] = summary[f"{num}_img_s"] / summary[f"{den}_img_s"]
    tta = {}
    for phase in TTA_PHASES:
        if phase in results:
            r = results[phase]
            tta[phase] = r["reached"]["wall_s"] if r["reached"] else None
            summary[f"{phase}_s"] = tta[phase]
            summary[f"{phase}_best_acc"] = max(h["val_acc"] for h in r["history"])
            summary[f"{phase}_final_acc"] = r["history"][-1]["val_acc"]
            summary[f"{phase}_peak_rss_mb"] = r["peak_rss_mb"]
    if tta.get("tta-naive") and tta.get("tta-lit"):
        summary["tta_speedup"] = tta["tta-naive"] / tta["tta-lit"]
    for den in ("tta-naive", "tta-fit-old"):
        if tta.get(den) and tta.get("tta-fit-new"):
            summary[f"tta_speedup_new/{den[4:]}"] = tta[den] / tta["tta-fit-new"]

    lines = [
        f"Machine: {machine}",
        "",
        "| pipeline | images/s | epoch s | peak RSS MB | notes |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines.append("")
    for key in sorted(k for k in summary if k.startswith("ratio_")):
        lines.append(f"- {key[6:]}: **{summary[key]:.2f}x**")
    for phase in TTA_PHASES:
        if phase in results:
            r = results[phase]
            where = (
                f"{r['reached']['wall_s']:.0f} s (epoch {r['reached']['epoch'] + 1})"
                if r["reached"]
                else f"not within {len(r['history'])} epochs"
            )
            lines.append(
                f"- time to val/acc >= {args.target_acc} ({phase[4:]}): {where}; best val/acc "
                f"{summary[f'{phase}_best_acc']:.4f}, peak RSS {r['peak_rss_mb']:.0f} MB"
                + (
                    f", whole command {r['command_wall_s']:.0f} s ({Path(r['config']).name})"
                    if "command_wall_s" in r
                    else ""
                )
            )
    if "tta_speedup" in summary:
        lines.append(f"- time-to-accuracy speed-up: **{summary['tta_speedup']:.2f}x**")
    for key in sorted(k for k in summary if k.startswith("tta_speedup_")):
        lines.append(f"- time-to-accuracy speed-up {key[12:]}: **{summary[key]:.2f}x**")
    text = "\n".join(lines)
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"throughput-{args.mode}-{args.tag + '-' if args.tag else ''}{stamp}"
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    (out / f"{name}.md").write_text(text + "\n")
    print(f"\nwrote {out / name}.{{md,json}}")


if __name__ == "__main__":
    main()
