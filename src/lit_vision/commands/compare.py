"""``lit-vision compare``: train several experiments on one split and budget, rank them, plot them."""

from __future__ import annotations

import argparse
import gc
import re
import shlex
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse import ArgumentError

from lit_vision.cli import ParseOnlyCLI, build_cli
from lit_vision.commands.compare_report import (
    Result,
    plot,
    rank,
    table_markdown,
    winner_statement,
    write_comparison,
)
from lit_vision.errors import ConfigError, config_error_line
from lit_vision.insight import InsightCallback

# Re-exported: the report side of compare lives in compare_report.
__all__ = [
    "HELP",
    "Experiment",
    "Result",
    "budget_args",
    "check_fit_options",
    "compare",
    "main",
    "measure_latency",
    "parse_variant",
    "plot",
    "rank",
    "run_experiment",
    "table_markdown",
    "winner_statement",
]

HELP = """usage: lit-vision compare --data.root ROOT [--configs C.yaml ...] [--variants 'C.yaml KEY=VALUE ...' ...]
                          [--max_epochs N] [--max_time MINUTES] [--out DIR] [fit options for every run]

Trains every experiment on the same split (--data.root) with the same seed and budget, evaluates
its best checkpoint on ROOT/test (or ROOT/val when there is no test split), measures inference
latency, and writes a ranked table (OUT/compare.md, OUT/compare.csv, OUT/compare.json) and a
plot (OUT/compare.png). The winner is stated, and each run's report.md gets the table under
"Why this model". TensorBoard logs of all runs go to OUT/tb/EXPERIMENT/version_N.

experiments:
  --configs C.yaml ...        configs run as they are
  --variants 'C.yaml K=V ...' a config with overrides, one quoted string per experiment, e.g.
                              'configs/catsdogs_transfer.yaml model.backbone=resnet18 model.pretrained=false'
                              (K is any fit option without the leading --; name=NAME names the run)
budget (the same for every experiment):
  --max_epochs N              epochs per experiment (default: each config's own)
  --max_time MINUTES          wall-clock cap per experiment's training (or Lightning's DD:HH:MM:SS);
                              epochs still come from --max_epochs or the config, so LR schedules
                              keep their length
other:
  --out DIR                   output folder (default compare_out)
  --rank_by {acc,f1}          ranking metric (default acc; ties broken by the other, then latency)
  --latency_runs N            timed batch-1 forward passes per model (default 30)
Any other option (e.g. --data.num_workers 2, --trainer.limit_train_batches 0.5) is passed to every run.
"""


@dataclass
class Experiment:
    """One candidate: a config, overrides, and a name."""

    name: str
    config: str
    overrides: list[str] = field(default_factory=list)


def parse_variant(spec: str) -> Experiment:
    """``'CONFIG.yaml key=value ... [name=NAME]'`` -> Experiment (name from the overrides)."""
    tokens = shlex.split(spec)
    if not tokens or "=" in tokens[0]:
        raise ValueError(
            f"--variants '{spec}': start with a config file, e.g. 'configs/x.yaml model.backbone=resnet18'"
        )
    config, overrides, name = tokens[0], [], None
    for tok in tokens[1:]:
        if "=" not in tok:
            raise ValueError(f"--variants '{spec}': '{tok}' is not KEY=VALUE")
        key, value = tok.split("=", 1)
        key = key.lstrip("-")
        if key == "name":
            name = value
        else:
            overrides.append(f"--{key}={value}")
    if name is None:  # e.g. catsdogs_transfer+backbone=resnet18+pretrained=false
        name = Path(config).stem + "".join(
            f"+{o[2:].split('=')[0].split('.')[-1]}={o.split('=', 1)[1]}" for o in overrides
        )
    return Experiment(_safe(name), config, overrides)


def _safe(name: str) -> str:
    """A folder-friendly run name: ``[8, 16]`` -> ``8-16``, other odd characters -> ``_``."""
    name = re.sub(r"[\[\]\s]", "", name).replace(",", "-")
    return re.sub(r"[^A-Za-z0-9_.=+\-]", "_", name)


def check_fit_options(config: str, root: str, options: list[str]) -> None:
    """Parse ``fit``'s options once, before any training: a typo fails the comparison at once.

    The options compare does not know itself go to every run's ``fit``; LightningCLI's parser
    checks them here, building nothing.

    Raises:
        ConfigError: One line naming the option.
    """
    args = ["--config", config, f"--data.root={root}", *options]
    try:
        build_cli(args, cli_class=ParseOnlyCLI, run=False, parser_kwargs={"exit_on_error": False})
    except ArgumentError as err:
        raise ConfigError(f"compare: {config_error_line(str(err))}") from None


def budget_args(max_epochs: int | None, max_time: str | None) -> list[str]:
    """Trainer options for the shared budget."""
    out = []
    if max_epochs is not None:
        out.append(f"--trainer.max_epochs={max_epochs}")
    if max_time:
        if ":" not in max_time:
            seconds = int(round(float(max_time) * 60))
            max_time = f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        out.append(f"--trainer.max_time={max_time}")
    return out


def measure_latency(
    model: torch.nn.Module, image_size: int, runs: int = 30, device: torch.device | None = None
) -> float:
    """Median milliseconds of one batch-1 forward pass (uint8 input, eval mode, no grad)."""
    device = device or next(model.parameters()).device
    model = model.eval().to(device)
    x = torch.randint(0, 256, (1, 3, image_size, image_size), dtype=torch.uint8, device=device)
    times = []
    with torch.inference_mode():
        for i in range(runs + 5):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 5:  # the first calls allocate and pick kernels
                times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def run_experiment(
    exp: Experiment, root: str, out: Path, common: list[str], latency_runs: int
) -> Result:
    """Fit one experiment in-process, evaluate its best checkpoint, measure latency.

    Args:
        exp: The experiment.
        root: The split folder.
        out: The comparison's output folder (TensorBoard logs go to ``OUT/tb``).
        common: Options passed to every run (budget and extra fit options).
        latency_runs: Timed batch-1 forward passes.

    Returns:
        What was measured.
    """
    args = [
        "fit",
        "--config",
        exp.config,
        *exp.overrides,
        f"--data.root={root}",
        f"--trainer.logger.init_args.save_dir={out / 'tb'}",
        f"--trainer.logger.init_args.name={exp.name}",
        *common,
    ]
    print(f"compare: {exp.name}: lit-vision {shlex.join(args)}", flush=True)
    cli = build_cli(
        args, save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False}
    )
    res = _evaluate(exp, cli, root, latency_runs)
    del cli
    gc.collect()
    return res


def _evaluate(exp: Experiment, cli: Any, root: str, latency_runs: int) -> Result:
    """Evaluate a fitted run's best checkpoint on test/ (or val/) and collect its numbers."""
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    ck = trainer.checkpoint_callback
    best = getattr(ck, "best_model_path", "") or None
    stage = "test" if (Path(root) / "test").is_dir() else "val"
    run = trainer.test if stage == "test" else trainer.validate
    metrics = run(model, datamodule=dm, ckpt_path="best" if best else None, verbose=False)[0]
    insight = next((c for c in trainer.callbacks if isinstance(c, InsightCallback)), None)
    report = insight.report if insight else {}
    timing = report.get("timing", {})
    best_score = getattr(ck, "best_model_score", None)
    res = Result(
        exp.name,
        exp.config,
        exp.overrides,
        model=type(model).__name__,
        eval_split=stage,
        accuracy=float(metrics[f"{stage}/acc"]),
        macro_f1=float(metrics[f"{stage}/f1"]),
        best_val_acc=float(best_score) if best_score is not None else None,
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=report.get("model", {}).get("trainable_params"),
        train_seconds=timing.get("train_total"),
        fit_seconds=timing.get("fit_wall"),
        train_images_per_s=timing.get("train_images_per_s"),
        epochs=trainer.current_epoch,
        image_size=int(getattr(dm, "image_size", 0) or 0) or None,
        log_dir=trainer.log_dir,
        best_checkpoint=best,
    )
    if res.image_size:
        res.latency_ms = measure_latency(
            model, res.image_size, latency_runs, device=trainer.strategy.root_device
        )
    return res


def _parser() -> argparse.ArgumentParser:
    """``compare``'s own options; any other option goes on to every run's ``fit``."""
    p = argparse.ArgumentParser(prog="lit-vision compare", add_help=False)
    p.add_argument("--data.root", dest="root")
    p.add_argument("--configs", nargs="+", default=[])
    p.add_argument("--variants", nargs="+", default=[])
    p.add_argument("--max_epochs", type=int)
    p.add_argument("--max_time")
    p.add_argument("--out", default="compare_out")
    p.add_argument("--rank_by", choices=("acc", "f1"), default="acc")
    p.add_argument("--latency_runs", type=int, default=30)
    p.add_argument("-h", "--help", action="store_true")
    return p


def compare(
    experiments: list[Experiment],
    root: str,
    *,
    out: str | Path = "compare_out",
    max_epochs: int | None = None,
    max_time: str | None = None,
    rank_by: str = "acc",
    latency_runs: int = 30,
    extra: list[str] | None = None,
) -> list[Result]:
    """Run, rank and write the comparison; returns the ranked results.

    Args:
        experiments: The candidates (names must be unique).
        root: The split folder every experiment trains and evaluates on.
        out: Output folder for ``compare.{md,csv,json,png}`` and the TensorBoard logs.
        max_epochs: Epochs per experiment (default: each config's own).
        max_time: Wall-clock cap per experiment, minutes or ``DD:HH:MM:SS``.
        rank_by: ``acc`` or ``f1``.
        latency_runs: Timed batch-1 forward passes per model.
        extra: Other fit options passed to every run.

    Returns:
        The results, best first, failed ones last.

    Raises:
        ValueError: Two experiments share a name.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = budget_args(max_epochs, max_time) + list(extra or [])
    names = [e.name for e in experiments]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(
            f"compare: experiment names repeat ({', '.join(sorted(dupes))}); "
            "add name=NAME to --variants"
        )
    results = []
    t0 = time.perf_counter()
    for exp in experiments:
        try:
            results.append(run_experiment(exp, root, out, common, latency_runs))
        except (Exception, SystemExit) as err:  # one broken candidate must not sink the others
            traceback.print_exc()
            msg = (
                str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
            )
            results.append(Result(exp.name, exp.config, exp.overrides, status="failed", error=msg))
    ranked = rank(results, rank_by)
    md = write_comparison(
        ranked,
        out,
        root=root,
        budget=common,
        rank_by=rank_by,
        seconds=time.perf_counter() - t0,
    )
    print(md)
    return ranked


def main(args: list[str]) -> int:
    """Parse ``compare`` options and run it; 0 when at least one experiment finished."""
    opts, extra = _parser().parse_known_args(args)
    if opts.help:
        print(HELP)
        return 0
    if not opts.root:
        raise FileNotFoundError(
            "compare needs --data.root ROOT (a split folder with train/ and val/)"
        )
    experiments = [Experiment(_safe(Path(c).stem), c) for c in opts.configs]
    experiments += [parse_variant(v) for v in opts.variants]
    if not experiments:
        raise FileNotFoundError("compare needs --configs and/or --variants (see `compare --help`)")
    for e in experiments:
        if not Path(e.config).is_file():
            raise FileNotFoundError(f"compare: config {e.config} not found")
    check_fit_options(
        experiments[0].config, opts.root, budget_args(opts.max_epochs, opts.max_time) + extra
    )
    ranked = compare(
        experiments,
        opts.root,
        out=opts.out,
        max_epochs=opts.max_epochs,
        max_time=opts.max_time,
        rank_by=opts.rank_by,
        latency_runs=opts.latency_runs,
        extra=extra,
    )
    return 0 if any(r.status == "ok" for r in ranked) else 1
