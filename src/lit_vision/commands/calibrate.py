"""``lit-vision calibrate``: fit a checkpoint's softmax temperature on ROOT/val -> a new checkpoint."""

from __future__ import annotations

from lit_vision.commands.parsing import command_parser, parse


def calibrate(
    ckpt: str,
    root: str,
    output: str | None = None,
    overwrite: bool = False,
    split: str = "val",
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "32",
    trust_class: list[str] | None = None,
    plot: str | None = None,
) -> int:
    """Fit the temperature T of softmax(logits / T) on ROOT/val (LBFGS on the NLL); print ECE.

    The new checkpoint is the input plus lit_vision.temperature and lit_vision.calibration;
    predict and the export contract use it. Predictions do not change, only confidences.

    Args:
        ckpt: Checkpoint (.ckpt) written by fit (read, never rewritten without --overwrite).
        root: The split layout whose SPLIT/CLASS/* images fit the temperature (--data.root).
        output: New checkpoint (default: NAME.calibrated.ckpt beside the input).
        overwrite: Replace an existing output, the input itself included.
        split: Held-out split to fit on (never the training split).
        batch_size: Images per forward pass.
        device: auto, cpu, cuda, cuda:N.
        precision: Forward pass precision: 32, bf16 or 16.
        trust_class: Import paths of your own model classes the checkpoint may name.
        plot: Also save the reliability diagram (before/after) as this PNG.
    """
    from lit_vision.calibrate import run_calibrate
    from lit_vision.figures import plt, reliability_figure

    summary = run_calibrate(
        ckpt,
        root,
        output,
        overwrite=overwrite,
        split=split,
        batch_size=batch_size,
        device=device,
        precision=str(precision),
        trust_class=trust_class or (),
    )
    if plot:
        fig = reliability_figure(summary, f"{split} of {root}:")
        fig.savefig(plot)
        plt.close(fig)
        print(f"reliability diagram -> {plot}")
    return 0


def main(args: list[str]) -> int:
    """Parse :func:`calibrate`'s options (``--data.root ROOT`` as in fit) and calibrate."""
    parser = command_parser("calibrate", (calibrate.__doc__ or "").splitlines()[0])
    parser.add_argument("--data.root", required=True, help="The split layout (ROOT/val/CLASS/*).")
    parser.add_function_arguments(calibrate, skip={"root"})
    cfg = parse(parser, args)
    root = cfg.pop("data")["root"]
    return calibrate(root=root, **cfg)
