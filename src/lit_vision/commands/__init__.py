"""lit_vision's own subcommands besides LightningCLI's fit/validate/test.

Each module is one subcommand with a ``main(args) -> int`` front-end over a typed function;
they are imported only when their subcommand runs, so ``lit-vision split --help`` does not
pay for torch, Lightning or matplotlib.
"""

from __future__ import annotations

# name -> (module, one-line summary for `lit-vision --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "split": (
        "lit_vision.commands.split",
        "raw class folders -> ROOT/train, ROOT/val, ROOT/test (verified)",
    ),
    "check": (
        "lit_vision.commands.check",
        "scan ROOT for unreadable images, stray files, class mismatches, leaks",
    ),
    "predict": (
        "lit_vision.commands.predict",
        "checkpoint + folders/files -> CSV of top-k predictions",
    ),
    "calibrate": (
        "lit_vision.commands.calibrate",
        "checkpoint + ROOT/val -> checkpoint with a fitted softmax temperature (ECE)",
    ),
    "export": (
        "lit_vision.commands.export",
        "checkpoint -> ONNX + TorchScript + safetensors + JSON contract",
    ),
    "lr_find": (
        "lit_vision.commands.lr_find",
        "learning-rate range test for a config: plot + suggestion",
    ),
    "optimize": (
        "lit_vision.commands.optimize",
        "split tree -> litdata streaming chunks per split (folder or s3/gs/azure URL)",
    ),
    "compare": (
        "lit_vision.commands.compare",
        "train several configs/variants on one split and budget, rank them",
    ),
}


def help_text() -> str:
    """The subcommand list printed with ``lit-vision --help``."""
    lines = ["", "lit_vision subcommands besides LightningCLI's fit/validate/test:"]
    lines += [f"  {name:<10}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines) + "\n"
