"""Which recipe trains a folder: a config can hand folders of tiny images to another recipe.

ImageNet features fit images of 32 px or less poorly, and fine-tuning a pretrained backbone on
them costs many times a small scratch network's time for a worse model (docs/results.md R74,
R95, R96). So ``configs/transfer.yaml``, the recipe for any folder, sets the top-level key
``small_images: small_cnn.yaml``: when the training images' median short side is at most
:data:`SMALL_SIDE`, ``fit``/``validate``/``test`` run with that config in its place. The
user's other options still apply on top; ``--small_images null`` keeps the config's own recipe.
The decision is made on the command line, before LightningCLI parses it, because it changes
the model's class, the schedule and the trainer settings together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from lit_vision.errors import ConfigError, DataError
from lit_vision.folders import discover_classes, list_samples, median_short_side

# The largest median short side (px) handed to the small-image recipe: both folders measured
# at this size (GTSRB signs, digits) train better from scratch (docs/transfer-learning.md).
SMALL_SIDE = 32
ROUTED_SUBCOMMANDS = ("fit", "validate", "test")
_OFF = ("", "null", "none", "false", "off")


@dataclass(frozen=True)
class Route:
    """A command line handed to the small-image recipe.

    Attributes:
        argv: The command line to run.
        note: One line for the log: what changed and why.
        hint: What to say when the new command line does not parse (an option of the
            replaced recipe that the small-image one lacks).
    """

    argv: list[str]
    note: str
    hint: str


def _occurrences(argv: list[str], names: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """``(index, prefix, value)`` of each ``--name value`` or ``--name=value`` in ``argv``."""
    found = []
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                found.append((i + 1, "", argv[i + 1]))
            elif arg.startswith(name + "="):
                found.append((i, name + "=", arg[len(name) + 1 :]))
    return found


def _read_config(path: str) -> dict:
    """A config file's top level as a mapping (empty when it is not one)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}  # LightningCLI reports an unreadable config itself, naming it
    return loaded if isinstance(loaded, dict) else {}


def _data_root(argv: list[str], configs: list[dict]) -> str | None:
    """``--data.root`` from the command line, else from the last config that sets it."""
    given = _occurrences(argv, ("--data.root", "--data.init_args.root"))
    if given:
        return given[-1][2]
    for config in reversed(configs):
        data = config.get("data")
        if isinstance(data, dict):
            init = data.get("init_args") if isinstance(data.get("init_args"), dict) else data
            if init.get("root") is not None:
                return str(init["root"])
    return None


def _training_side(root: str) -> int | None:
    """The median short side of ``root/train``'s images; ``None`` when it cannot be read."""
    try:
        train = Path(root) / "train"
        files = [p for p, _ in list_samples(train, discover_classes(train))]
    except (DataError, OSError):
        return None  # the DataModule reports a missing or broken folder itself
    return median_short_side(files)


def route_small_images(argv: list[str]) -> Route | None:
    """The command line that trains this folder, when a config hands tiny images on.

    Args:
        argv: The command line without the program name (``["fit", "--config", ...]``).

    Returns:
        The changed command line with a note, or ``None`` when it runs as given.

    Raises:
        ConfigError: The small-image recipe the config names does not exist.
    """
    if not argv or argv[0] not in ROUTED_SUBCOMMANDS:
        return None
    configs = _occurrences(argv, ("--config", "-c"))
    loaded = [_read_config(value) for _, _, value in configs]
    owners = [i for i, config in enumerate(loaded) if "small_images" in config]
    if not owners:
        return None
    index, prefix, config_path = configs[owners[-1]]
    override = _occurrences(argv, ("--small_images",))
    if override:
        target, base, key = override[-1][2], Path.cwd(), "--small_images"
    else:
        value = loaded[owners[-1]]["small_images"]
        target, base, key = ("" if value is None else str(value)), Path(config_path).parent, None
    if target.strip().lower() in _OFF:
        return None
    small = base / target
    if not small.is_file():
        raise ConfigError(f"{key or config_path + ': small_images'}: no such config file: {small}")
    root = _data_root(argv, loaded)
    side = None if root in (None, "???") else _training_side(root)
    if side is None or side > SMALL_SIDE:
        return None
    new = list(argv)
    new[index] = prefix + str(small)
    why = f"the images under {Path(root) / 'train'} are {side} px (median short side)"
    return Route(
        argv=new,
        note=f"lit_vision: {why}: training with {small} instead of {config_path} "
        f"(ImageNet features fit images of <= {SMALL_SIDE} px poorly; "
        "--small_images null keeps it)",
        hint=f"{why}, so {config_path} hands them to {small}; "
        "pass --small_images null to keep its own recipe",
    )
