"""``lit-vision compare``: train several experiments on one split and budget, rank them, plot them."""

from __future__ import annotations

import argparse
import csv
import gc
import json
import re
import shlex
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse import ArgumentError

from lit_vision.cli import ParseOnlyCLI, build_cli
from lit_vision.errors import ConfigError, config_error_line
from lit_vision.figures import plt
from lit_vision.insight import InsightCallback
from lit_vision.report import environment_info, render_markdown

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


@dataclass
class Result:
    """What ``compare`` measured for one experiment."""

    name: str
    config: str
    overrides: list[str]
    status: str = "ok"
    model: str | None = None
    eval_split: str | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    best_val_acc: float | None = None
    params: int | None = None
    trainable_params: int | None = None
    train_seconds: float | None = None
    fit_seconds: float | None = None
    train_images_per_s: float | None = None
    epochs: int | None = None
    image_size: int | None = None
    latency_ms: float | None = None
    log_dir: str | None = None
    best_checkpoint: str | None = None
    error: str | None = None
    rank: int | None = None


def parse_variant(spec: str) -> Experiment:
    """``'CONFIG.yaml key=value ... [name=NAME]'`` -> Experiment (name from the overrides)."""
    tokens = shlex.split(spec)
    if not tokens or "=" in tokens[0]:
        raise ValueError(f"--variants '{spec}': start with a config file, e.g. 'configs/x.yaml model.backbone=resnet18'")
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
            f"+{o[2:].split('=')[0].split('.')[-1]}={o.split('=', 1)[1]}" for o in overrides)
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


def measure_latency(model: torch.nn.Module, image_size: int, runs: int = 30, device: torch.device | None = None) -> float:
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


def run_experiment(exp: Experiment, root: str, out: Path, common: list[str], latency_runs: int) -> Result:
    """Fit one experiment in-process, evaluate its best checkpoint, measure latency."""
    res = Result(exp.name, exp.config, exp.overrides)
    args = ["fit", "--config", exp.config, *exp.overrides, f"--data.root={root}",
            f"--trainer.logger.init_args.save_dir={out / 'tb'}", f"--trainer.logger.init_args.name={exp.name}",
            *common]
    print(f"compare: {exp.name}: lit-vision {shlex.join(args)}", flush=True)
    cli = build_cli(args, save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    ck = trainer.checkpoint_callback
    best = getattr(ck, "best_model_path", "") or None
    stage = "test" if (Path(root) / "test").is_dir() else "val"
    run = trainer.test if stage == "test" else trainer.validate
    metrics = run(model, datamodule=dm, ckpt_path="best" if best else None, verbose=False)[0]
    insight = next((c for c in trainer.callbacks if isinstance(c, InsightCallback)), None)
    report = insight.report if insight else {}
    timing = report.get("timing", {})
    res.model = type(model).__name__
    res.eval_split = stage
    res.accuracy = float(metrics[f"{stage}/acc"])
    res.macro_f1 = float(metrics[f"{stage}/f1"])
    res.best_val_acc = float(ck.best_model_score) if getattr(ck, "best_model_score", None) is not None else None
    res.params = sum(p.numel() for p in model.parameters())
    res.trainable_params = report.get("model", {}).get("trainable_params")
    res.train_seconds = timing.get("train_total")
    res.fit_seconds = timing.get("fit_wall")
    res.train_images_per_s = timing.get("train_images_per_s")
    res.epochs = trainer.current_epoch
    res.image_size = int(getattr(dm, "image_size", 0) or 0) or None
    res.log_dir = trainer.log_dir
    res.best_checkpoint = best
    if res.image_size:
        res.latency_ms = measure_latency(model, res.image_size, latency_runs, device=trainer.strategy.root_device)
    del cli, trainer, model, dm
    gc.collect()
    return res


def rank(results: list[Result], by: str = "acc") -> list[Result]:
    """Successful results ranked best first (metric, then the other metric, then latency)."""
    ok = [r for r in results if r.status == "ok"]
    first, second = ("accuracy", "macro_f1") if by == "acc" else ("macro_f1", "accuracy")
    ok.sort(key=lambda r: (-(getattr(r, first) or 0), -(getattr(r, second) or 0), r.latency_ms or 1e9))
    for i, r in enumerate(ok, 1):
        r.rank = i
    return ok + [r for r in results if r.status != "ok"]


def _f(x: Any, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def table_markdown(results: list[Result]) -> str:
    """The ranked comparison as a markdown table."""
    lines = ["| rank | experiment | model | eval | accuracy | macro-F1 | best val acc | params | "
             "train time | train img/s | latency ms/img (batch 1) | input px | epochs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.status != "ok":
            lines.append(f"| — | {r.name} | failed: {r.error} | | | | | | | | | | |")
            continue
        lines.append(
            f"| {r.rank} | {r.name} | {r.model} | {r.eval_split} | {_f(r.accuracy, '.4f')} | {_f(r.macro_f1, '.4f')} | "
            f"{_f(r.best_val_acc, '.4f')} | {r.params / 1e6:.2f} M | {_f(r.train_seconds, '.0f')} s | "
            f"{_f(r.train_images_per_s, '.0f')} | {_f(r.latency_ms, '.2f')} | {r.image_size} | {r.epochs} |")
    return "\n".join(lines)


def winner_statement(results: list[Result], by: str) -> str:
    """One sentence naming the winner and its margin over the runner-up."""
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return "No experiment finished."
    w = ok[0]
    metric = "accuracy" if by == "acc" else "macro-F1"
    value = w.accuracy if by == "acc" else w.macro_f1
    text = f"Winner: **{w.name}** ({w.model}) with {metric} {value:.4f} on {w.eval_split}"
    if len(ok) > 1:
        r2 = ok[1]
        v2 = r2.accuracy if by == "acc" else r2.macro_f1
        text += (f", {100 * (value - v2):+.2f} points over {r2.name} ({v2:.4f}); "
                 f"{w.params / 1e6:.2f} M vs {r2.params / 1e6:.2f} M parameters, "
                 f"{_f(w.latency_ms, '.2f')} vs {_f(r2.latency_ms, '.2f')} ms per image")
    return text + "."


def plot(results: list[Result], path: Path, by: str) -> None:
    """Ranked accuracy bars and an accuracy-vs-latency scatter (marker area ~ parameters)."""
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 0.5 * len(ok) + 3), dpi=100)
    names = [r.name for r in ok][::-1]
    acc = [r.accuracy for r in ok][::-1]
    f1 = [r.macro_f1 for r in ok][::-1]
    y = np.arange(len(ok))
    a.barh(y - 0.2, acc, 0.4, label="accuracy")
    a.barh(y + 0.2, f1, 0.4, label="macro-F1")
    a.set_yticks(y, names, fontsize=8)
    lo = max(0.0, min(acc + f1) - 0.05)
    a.set_xlim(lo, 1.0)
    a.legend(loc="lower right")
    a.set_title(f"ranked by {by} on {ok[0].eval_split} (best at top)")
    for r in ok:
        b.scatter(r.latency_ms or 0, r.accuracy, s=40 + 400 * (r.params / max(x.params for x in ok)), alpha=0.6)
        b.annotate(r.name, (r.latency_ms or 0, r.accuracy), fontsize=7, xytext=(4, 4), textcoords="offset points")
    b.set_xscale("log")
    b.set_xlabel("latency ms / image (batch 1, log scale)")
    b.set_ylabel("accuracy")
    b.set_title("accuracy vs latency (marker area ~ parameters)")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
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
    """Run, rank and write the comparison; returns the ranked results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = budget_args(max_epochs, max_time) + list(extra or [])
    names = [e.name for e in experiments]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"compare: experiment names repeat ({', '.join(sorted(dupes))}); add name=NAME to --variants")
    results = []
    t0 = time.perf_counter()
    for exp in experiments:
        try:
            results.append(run_experiment(exp, root, out, common, latency_runs))
        except (Exception, SystemExit) as err:  # one broken candidate must not sink the others
            traceback.print_exc()
            msg = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
            results.append(Result(exp.name, exp.config, exp.overrides, status="failed", error=msg))
    ranked = rank(results, rank_by)
    env = environment_info()
    budget = " ".join(common) or "each config's own"
    statement = winner_statement(ranked, rank_by)
    table = table_markdown(ranked)
    eval_split = next((r.eval_split for r in ranked if r.eval_split), "val")
    caveat = ("" if eval_split == "test" else
              "\n\nEvaluated on val/, which also picked each run's best checkpoint: optimistic for every "
              "candidate alike. Add a test split (`split --test 0.1`) for an unbiased number.")
    md = "\n".join([
        f"# Comparison on `{root}`", "",
        f"- budget per experiment: `{budget}`; seed 0; total wall time {time.perf_counter() - t0:.0f} s",
        f"- machine: {env['cpu']}, {env['cpus_usable']} usable cores"
        + (f", GPUs {', '.join(env['gpus'])}" if env["gpus"] else "")
        + f"; torch {env['packages']['torch']}, lightning {env['packages']['lightning']}, timm {env['packages']['timm']}",
        "- train time excludes validation; latency is the median of batch-1 forward passes on the "
        "training device, uint8 input, after warm-up", "",
        table, "", statement + caveat, "", "![comparison](compare.png)", ""])
    (out / "compare.md").write_text(md)
    with open(out / "compare.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(ranked[0]).keys()))
        writer.writeheader()
        for r in ranked:
            writer.writerow({k: (" ".join(v) if isinstance(v, list) else v) for k, v in asdict(r).items()})
    (out / "compare.json").write_text(json.dumps(
        {"root": root, "budget": common, "rank_by": rank_by, "winner": ranked[0].name if ranked[0].status == "ok" else None,
         "statement": statement, "results": [asdict(r) for r in ranked]}, indent=2) + "\n")
    plot(ranked, out / "compare.png", rank_by)
    # Each run's report says why it was (or was not) chosen.
    for r in ranked:
        rpath = Path(r.log_dir) / "report.json" if r.log_dir else None
        if rpath is None or not rpath.is_file():
            continue
        rep = json.loads(rpath.read_text())
        rep["model_selection"] = {
            "statement": f"This run ({r.name}) ranked **{r.rank} of {sum(x.status == 'ok' for x in ranked)}** "
                         f"in `lit-vision compare` (budget `{budget}`, table in `{out / 'compare.md'}`). {statement}",
            "table_md": table,
        }
        rpath.write_text(json.dumps(rep, indent=2) + "\n")
        (rpath.parent / "report.md").write_text(render_markdown(rep))
    print(md)
    return ranked


def main(args: list[str]) -> int:
    """Parse ``compare`` options and run it; 0 when at least one experiment finished."""
    opts, extra = _parser().parse_known_args(args)
    if opts.help:
        print(HELP)
        return 0
    if not opts.root:
        raise FileNotFoundError("compare needs --data.root ROOT (a split folder with train/ and val/)")
    experiments = [Experiment(_safe(Path(c).stem), c) for c in opts.configs]
    experiments += [parse_variant(v) for v in opts.variants]
    if not experiments:
        raise FileNotFoundError("compare needs --configs and/or --variants (see `compare --help`)")
    for e in experiments:
        if not Path(e.config).is_file():
            raise FileNotFoundError(f"compare: config {e.config} not found")
    check_fit_options(experiments[0].config, opts.root, budget_args(opts.max_epochs, opts.max_time) + extra)
    ranked = compare(experiments, opts.root, out=opts.out, max_epochs=opts.max_epochs, max_time=opts.max_time,
                     rank_by=opts.rank_by, latency_runs=opts.latency_runs, extra=extra)
    return 0 if any(r.status == "ok" for r in ranked) else 1
