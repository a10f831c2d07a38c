"""``lit-vision lr_find``: Lightning's learning-rate range test on a config, saved as PNG + JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lit_vision.cli import build_cli
from lit_vision.figures import plt

HELP = """usage: lit-vision lr_find --config CONFIG.yaml --data.root ROOT [fit options] [lr_find options]

Learning-rate range test (Lightning's Tuner.lr_find): trains num_training batches while the
learning rate grows from min_lr to max_lr, plots loss against learning rate and suggests the
rate with the steepest loss descent. Every parameter group starts from the same rate, and the
config's scheduler is replaced during the test. Takes every `fit` option (--config,
--data.root, --model.*, --data.*, --trainer.*). Writes OUT/NAME_lr_find.png and .json
(NAME: the config's logger name) and prints the suggestion.

lr_find options:
  --min_lr FLOAT              smallest learning rate tried (default 1e-6)
  --max_lr FLOAT              largest learning rate tried (default 1.0)
  --num_training INT          batches in the test (default 100)
  --mode {exponential,linear} how the rate grows (default exponential)
  --early_stop_threshold F    stop when loss > F x best loss (default 4.0; 0 to run all)
  --out DIR                   output folder (default lr_find)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-vision lr_find", add_help=False)
    p.add_argument("--min_lr", type=float, default=1e-6)
    p.add_argument("--max_lr", type=float, default=1.0)
    p.add_argument("--num_training", type=int, default=100)
    p.add_argument("--mode", choices=("exponential", "linear"), default="exponential")
    p.add_argument("--early_stop_threshold", type=float, default=4.0)
    p.add_argument("--out", default="lr_find")
    p.add_argument("-h", "--help", action="store_true")
    return p


def main(args: list[str]) -> int:
    """Parse ``lr_find`` options, build the model/data/trainer from the config, run the test."""
    opts, rest = _parser().parse_known_args(args)
    if opts.help:
        print(HELP)
        return 0
    result = run_lr_find(
        rest,
        min_lr=opts.min_lr,
        max_lr=opts.max_lr,
        num_training=opts.num_training,
        mode=opts.mode,
        early_stop_threshold=opts.early_stop_threshold or None,
        out=opts.out,
    )
    if result["suggestion"] is None:
        print(f"lr_find: no suggestion (too few points: {len(result['lr'])}); see {result['plot']}")
        return 1
    print(
        f"lr_find: suggested learning rate {result['suggestion']:.3g} "
        f"(plot {result['plot']}, data {result['json']})"
    )
    return 0


def run_lr_find(
    cli_args: list[str],
    *,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    num_training: int = 100,
    mode: str = "exponential",
    early_stop_threshold: float | None = 4.0,
    out: str | Path = "lr_find",
) -> dict[str, Any]:
    """Run the range test for a config (``cli_args`` as for ``fit``) and save plot and JSON.

    Returns:
        The JSON's content: ``suggestion`` (or ``None``), ``lr``, ``loss``, ``plot``, ``json``.
    """
    from lightning.pytorch.tuner import Tuner

    cli = build_cli(cli_args, save_config_callback=None, run=False)
    trainer = cli.trainer
    name = getattr(trainer.logger, "name", None) or "lit_vision"
    # The range test is not a training run: no log folder, checkpoints or report.
    trainer.loggers = []
    trainer.callbacks = [
        c for c in trainer.callbacks if type(c).__name__ in ("TQDMProgressBar", "RichProgressBar")
    ]
    # max_steps bounds the test; enough epochs that a small training set does not cut it short.
    trainer.fit_loop.max_epochs = max(trainer.max_epochs or 1, 10_000)
    finder = Tuner(trainer).lr_find(
        cli.model,
        datamodule=cli.datamodule,
        min_lr=min_lr,
        max_lr=max_lr,
        num_training=num_training,
        mode=mode,
        early_stop_threshold=early_stop_threshold,
        update_attr=False,
    )
    try:
        suggestion = finder.suggestion()
    except Exception:  # Lightning raises on too few points in some versions
        suggestion = None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_path = out / f"{name}_lr_find.png"
    json_path = out / f"{name}_lr_find.json"
    fig = finder.plot(suggest=suggestion is not None)
    fig.axes[0].set_title(
        f"{name}: lr range test" + (f", suggestion {suggestion:.3g}" if suggestion else "")
    )
    fig.savefig(plot_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    result = {
        "name": name,
        "suggestion": suggestion,
        "min_lr": min_lr,
        "max_lr": max_lr,
        "num_training": num_training,
        "mode": mode,
        "args": cli_args,
        "lr": [float(x) for x in finder.results["lr"]],
        "loss": [float(x) for x in finder.results["loss"]],
        "plot": str(plot_path),
        "json": str(json_path),
    }
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result
