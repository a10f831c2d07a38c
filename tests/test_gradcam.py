"""Grad-CAM: the heatmap finds the evidence, overlays from `predict --explain`, the TensorBoard grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_split_tree
from PIL import Image
from test_predict import fit_tiny

from lit_vision.__main__ import main
from lit_vision.evaluation import WorstMistakes, worst_heatmaps
from lit_vision.explain import overlay_name
from lit_vision.figures import worst_images_figure
from lit_vision.gradcam import ExplainError, heatmaps, target_layer
from lit_vision.models import CNNClassifier
from lit_vision.networks import SimpleCNN, TransferNet

SIZE, PATCH = 24, 8
CORNERS = [(0, 0), (0, SIZE - PATCH), (SIZE - PATCH, 0), (SIZE - PATCH, SIZE - PATCH)]
DECIDING = 1  # the top-right corner's colour is the class; the other corners are distractors


def corner_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise with a red or blue patch in every corner; the top-right patch's colour is the class."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 128, (n, 3, SIZE, SIZE))).astype(np.uint8)
    y = rng.integers(0, 2, n)
    for i in range(n):
        for k, (r, c) in enumerate(CORNERS):
            colour = y[i] if k == DECIDING else rng.integers(0, 2)
            rgb = [220, 30, 30] if colour == 0 else [30, 30, 220]
            x[i, :, r : r + PATCH, c : c + PATCH] = np.array(rgb, np.uint8)[:, None, None]
    return torch.from_numpy(x), torch.from_numpy(y)


def test_heatmap_peaks_in_the_corner_that_decides_the_class() -> None:
    torch.manual_seed(0)
    x, y = corner_images(384, seed=0)
    model = CNNClassifier(
        num_classes=2,
        class_names=["red", "blue"],
        channels=[8, 16],
        convs_per_block=1,
        hidden=0,
        dropout=0.0,
        block_dropout=0.0,
        pool_grid=2,  # the head can tell the quadrants apart
        channels_last=False,
    )
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(150):
        i = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    opt.zero_grad(set_to_none=True)
    xt, yt = corner_images(48, seed=1)
    with torch.no_grad():
        assert (model(xt).argmax(1) == yt).float().mean() >= 0.95  # it learned the rule
    cams = heatmaps(model, xt, yt)
    assert cams.shape == (48, SIZE, SIZE) and cams.max() <= 1.0 and cams.min() >= 0.0
    h = SIZE // 2
    quadrants = np.stack(
        [
            q.sum(axis=(1, 2))
            for q in (cams[:, :h, :h], cams[:, :h, h:], cams[:, h:, :h], cams[:, h:, h:])
        ],
        axis=1,
    )
    # The deciding (top-right) quadrant holds the most evidence, well over a quarter of it...
    assert (quadrants.argmax(axis=1) == DECIDING).mean() >= 0.95
    assert (quadrants[:, DECIDING] / quadrants.sum(axis=1)).mean() >= 0.4
    # ...and the heatmap's peak lies there (measured: 43 of 48 at this seed).
    peaks = [np.unravel_index(c.argmax(), c.shape) for c in cams]
    assert np.mean([r < h and c >= h for r, c in peaks]) >= 0.8
    assert all(p.grad is None for p in model.parameters())  # explaining trains nothing


def test_target_layer_is_the_last_convolutional_stage() -> None:
    cnn = SimpleCNN(3, channels=(8, 16), convs_per_block=2)
    layer = target_layer(cnn)
    layers = list(cnn.features)
    last_conv = max(i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d))
    assert layer is layers[last_conv + 2]  # conv, BatchNorm, ReLU: the ReLU, before pooling
    assert isinstance(layer, torch.nn.ReLU)
    net = TransferNet("efficientnet_lite0", 3)
    assert target_layer(net) is net.features
    with pytest.raises(ExplainError):
        target_layer(torch.nn.Linear(3, 3))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("gradcam")
    tree = make_split_tree(base / "data", test=0)
    return tree, fit_tiny(tree, base / "run", epochs=1)


def test_predict_explain_writes_one_overlay_per_readable_image(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tree, ckpt = trained
    folder = tmp_path / "in"
    folder.mkdir()
    files = sorted((tree / "val").rglob("*.png"))
    for i, f in enumerate(files):
        (folder / f"{i:02d}_{f.name}").write_bytes(f.read_bytes())
    (folder / "zz_broken.png").write_bytes(b"not a png")
    explain = tmp_path / "why"
    args = ["predict", "--ckpt", str(ckpt), "--input", str(folder), "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "p.csv"), "--explain", str(explain)]) == 0
    written = sorted(p.name for p in explain.iterdir())
    inputs = sorted(folder.iterdir())
    assert written == [overlay_name(i, str(p)) for i, p in enumerate(inputs[:-1])]
    img = np.asarray(Image.open(explain / written[0]))
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    assert f"{len(files)} Grad-CAM overlay(s)" in capsys.readouterr().out
    # A folder with files in it is refused before any work, unless --overwrite.
    assert main([*args, "--output", str(tmp_path / "q.csv"), "--explain", str(explain)]) == 2
    assert "--explain" in capsys.readouterr().err and not (tmp_path / "q.csv").exists()
    assert (
        main([*args, "--output", str(tmp_path / "r.csv"), "--explain", str(tmp_path / "p.csv")])
        == 2
    )


def test_worst_misclassified_grid_shows_heatmaps_beside_images() -> None:
    model = CNNClassifier(num_classes=3, class_names=["a", "b", "c"], channels=[8, 16]).eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    worst = WorstMistakes(4)
    with torch.inference_mode():  # as inside a validation loop
        worst.add(images, torch.randn(5, 3) * 5, torch.tensor([0, 1, 2, 0, 1]))
        overlays = worst_heatmaps(model, worst.items)
    assert overlays is not None and len(overlays) == len(worst.items)
    assert overlays[0].shape == (32, 32, 3)
    w = worst.items
    fig = worst_images_figure(
        [x[1] for x in w],
        [x[2] for x in w],
        [x[3] for x in w],
        [x[4] for x in w],
        ["a", "b", "c"],
        "t",
        overlays,
    )
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 2 * len(w)  # each image, then its heatmap
