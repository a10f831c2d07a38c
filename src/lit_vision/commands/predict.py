"""``lit-vision predict``: classify folders/files with a self-contained checkpoint -> CSV.

It replaces LightningCLI's config-driven ``predict``, which needs the training config and
data and writes nothing; ``validate``/``test`` remain for config-driven evaluation.
"""

from __future__ import annotations

from typing import Literal

from lit_vision.commands.parsing import command_parser, parse
from lit_vision.predict import run_predict


def predict(
    ckpt: str,
    input: list[str],  # noqa: A002 - the option users type is --input
    output: str = "predictions.csv",
    overwrite: bool = False,
    topk: int = 3,
    tta: Literal["none", "hflip", "auto"] = "none",
    batch_size: int = 64,
    device: str = "auto",
    image_size: int | None = None,
    trust_class: list[str] | None = None,
    min_confidence: float = 0.0,
    explain: str | None = None,
    precision: str = "32",
    progress: bool = True,
    group_regex: str = "auto",
) -> int:
    """Predict every file under folders (any depth) or given files; one CSV row per file.

    Unreadable files get a row with the reason. Files under ``FOLDER/CLASS/`` named like the
    model's classes are labelled and the accuracy is printed. Probabilities are calibrated
    with the checkpoint's temperature (``lit-vision calibrate``; 1.0 when it has none).

    Args:
        ckpt: Checkpoint (.ckpt) written by fit.
        input: Folders and/or image files.
        output: CSV to write (never a folder).
        overwrite: Replace an existing output (refused otherwise, before predicting).
        topk: Top classes per row.
        tta: hflip: average with the mirror image; auto: hflip if trained with hflip.
        batch_size: Images per forward pass.
        device: auto, cpu, cuda, cuda:N.
        image_size: Input side, only for checkpoints that do not record one.
        trust_class: Import paths of your own model classes the checkpoint may name (you
            vouch for that code); by default only lit_vision's classes are rebuilt.
        min_confidence: Rows whose top probability is below this say "unknown" instead of
            guessing; the summary gives their count and the accuracy of the others.
        explain: Folder for a Grad-CAM overlay PNG per image (ROW_STEM.png, ROW = CSV row
            from 0): where the evidence for the predicted class is.
        precision: Forward pass precision: 32, bf16 or 16 (autocast).
        progress: Progress bar on stderr for long inputs (never when stderr is not a terminal).
        group_regex: Images whose file names share this regex's key are one group (a track,
            a patient): the accuracy's interval resamples groups, and the summary names the
            groups with errors. auto: the --group_regex split recorded beside the input
            folders; none: every image independent.
    """
    run_predict(
        ckpt,
        input,
        output,
        topk=topk,
        tta=tta,
        batch_size=batch_size,
        device=device,
        image_size=image_size,
        overwrite=overwrite,
        trust_class=trust_class or (),
        min_confidence=min_confidence,
        explain=explain,
        precision=str(precision),
        progress=progress,
        group_regex=group_regex,
    )
    return 0


def main(args: list[str]) -> int:
    """Parse :func:`predict`'s options and predict (``--input A B C``: several paths after one flag)."""
    parser = command_parser("predict", (predict.__doc__ or "").splitlines()[0])
    parser.add_argument("--input", required=True, nargs="+", help="Folders and/or image files.")
    parser.add_function_arguments(predict, skip={"input"})
    return predict(**parse(parser, args))
