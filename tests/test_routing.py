"""transfer.yaml hands folders of tiny images to the small-image recipe (lit_vision.routing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, make_split_tree

from lit_vision import CNNClassifier, TransferClassifier
from lit_vision.__main__ import main, run_command
from lit_vision.errors import ConfigError
from lit_vision.routing import SMALL_SIDE, route_small_images

TRANSFER = str(REPO / "configs" / "transfer.yaml")
SMALL = str(REPO / "configs" / "small_cnn.yaml")
QUICK = ["--trainer.fast_dev_run", "1", "--trainer.logger", "false", "--data.num_workers", "0"]


def quick(tmp_path: Path, name: str) -> list[str]:
    """One step of fit, writing into ``tmp_path / name`` only."""
    return [*QUICK, "--trainer.default_root_dir", str(tmp_path / name)]


def tree(tmp_path: Path, size: int) -> str:
    """A split tree of ``size`` px images."""
    return str(make_split_tree(tmp_path / f"data{size}", train=4, val=2, test=0, size=size))


def test_tiny_images_train_with_the_small_image_recipe(tmp_path: Path) -> None:
    root = tree(tmp_path, SMALL_SIDE)
    route = route_small_images(["fit", "--config", TRANSFER, "--data.root", root, "--x", "1"])
    assert route is not None
    assert route.argv == ["fit", "--config", SMALL, "--data.root", root, "--x", "1"]
    assert f"are {SMALL_SIDE} px" in route.note and "--small_images null" in route.note
    # The --config=PATH spelling keeps its spelling; test and validate decide alike.
    route = route_small_images(["test", f"--config={TRANSFER}", f"--data.root={root}"])
    assert route is not None and route.argv[1] == f"--config={SMALL}"


def test_photos_and_opt_outs_keep_the_command_line(tmp_path: Path) -> None:
    photos = tree(tmp_path, SMALL_SIDE + 1)
    assert route_small_images(["fit", "--config", TRANSFER, "--data.root", photos]) is None
    tiny = tree(tmp_path, 16)
    for off in ("null", "none", "false"):
        argv = ["fit", "--config", TRANSFER, "--data.root", tiny, "--small_images", off]
        assert route_small_images(argv) is None
    # A config without the key (every dataset's own recipe), other commands, no data root.
    assert route_small_images(["fit", "--config", SMALL, "--data.root", tiny]) is None
    assert route_small_images(["predict", "--config", TRANSFER, "--data.root", tiny]) is None
    assert route_small_images(["fit", "--config", TRANSFER]) is None
    # A folder the DataModule will reject: no decision here, its own error comes later.
    assert route_small_images(["fit", "--config", TRANSFER, "--data.root", str(tmp_path)]) is None


def test_the_recipe_named_on_the_command_line_and_a_missing_one(tmp_path: Path) -> None:
    tiny = tree(tmp_path, 16)
    own = tmp_path / "mine.yaml"
    own.write_text(Path(SMALL).read_text())
    argv = ["fit", "--config", TRANSFER, "--data.root", tiny, "--small_images", str(own)]
    route = route_small_images(argv)
    assert route is not None and route.argv[2] == str(own)
    with pytest.raises(ConfigError, match=r"--small_images: no such config file: .*nothere"):
        route_small_images([*argv[:-1], str(tmp_path / "nothere.yaml")])
    broken = tmp_path / "broken.yaml"
    broken.write_text("small_images: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: small_images: no such config file"):
        route_small_images(["fit", "--config", str(broken), "--data.root", tiny])


def test_fit_runs_the_small_image_recipe_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = tree(tmp_path, 16)
    cli = run_command(["fit", "--config", TRANSFER, "--data.root", tiny, *quick(tmp_path, "small")])
    assert isinstance(cli.model, CNNClassifier)
    assert cli.datamodule.image_size == 32  # small_cnn.yaml's, not transfer's auto size
    cli = run_command(
        [
            "fit",
            "--config",
            TRANSFER,
            "--data.root",
            tiny,
            "--small_images",
            "null",
            *quick(tmp_path, "transfer"),
        ]
    )
    assert isinstance(cli.model, TransferClassifier)
    # An option only the transfer recipe has: one line that says what happened, exit 2.
    code = main(
        [
            "fit",
            "--config",
            TRANSFER,
            "--data.root",
            tiny,
            "--model.init_args.backbone",
            "efficientnet_lite1",
            *quick(tmp_path, "hint"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "hands them to" in err and "--small_images null" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
