"""models: the template base (hyperparameters, configure_network, keyword-only), LR helpers, pooling."""

from __future__ import annotations

import inspect
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lit_vision.models import CNNClassifier, ImageClassifier
from lit_vision.networks import GlobalPool
from lit_vision.optim import optimizer_lr
from lit_vision.transfer import TransferClassifier

TINY = "test_efficientnet"


def test_base_saves_every_argument_of_the_concrete_class() -> None:
    model = CNNClassifier(
        3, channels=(4,), hidden=0, scale_lr="sqrt", optimizer=partial(torch.optim.SGD, lr=0.1)
    )
    params = set(inspect.signature(CNNClassifier.__init__).parameters) - {
        "self",
        "optimizer",
        "scheduler",
    }
    assert set(model.hparams) == params
    assert model.hparams["channels"] == (4,) and model.hparams["scale_lr"] == "sqrt"
    assert model.scale_lr == "sqrt"
    assert isinstance(model.net.pool, GlobalPool) and model.net.head[-1].in_features == 4


def test_scale_lr_set_after_construction_reaches_the_hparams() -> None:
    """What the CLI does today (``model.scale_lr = ...``) is recorded in the checkpoint."""
    model = CNNClassifier(3, channels=(4,), hidden=0)
    assert model.scale_lr == "none"
    model.scale_lr = "linear"
    assert model.hparams["scale_lr"] == "linear"


@pytest.mark.parametrize("cls", [ImageClassifier, CNNClassifier, TransferClassifier])
def test_arguments_after_num_classes_are_keyword_only(cls: type) -> None:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert params[0].name == "num_classes"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    base = set(inspect.signature(ImageClassifier.__init__).parameters)
    assert base <= set(
        inspect.signature(cls.__init__).parameters
    )  # compile, input_norm, scale_lr...
    with pytest.raises(TypeError):
        CNNClassifier(3, ["a", "b", "c"])


def test_subclass_setting_net_itself_still_works() -> None:
    class Own(ImageClassifier):
        def __init__(self, num_classes: int, width: int = 4) -> None:
            super().__init__(num_classes, mean=(0.5, 0.5, 0.5))
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    model = Own(2)
    assert model.hparams["width"] == 4 and model.hparams["mean"] == (0.5, 0.5, 0.5)
    assert model(torch.zeros(1, 3, 4, 4, dtype=torch.uint8)).shape == (1, 2)


def test_optimizer_lr_reads_the_factory_without_building_one() -> None:
    assert optimizer_lr(torch.optim.Adam) == pytest.approx(1e-3)
    assert optimizer_lr(partial(torch.optim.AdamW, lr=0.3, weight_decay=0.1)) == 0.3

    def instantiator(cls: type, *args, **kwargs):  # LightningCLI's OptimizerCallable shape
        return cls(*args, **kwargs)

    assert optimizer_lr(partial(instantiator, torch.optim.SGD, lr=0.05, momentum=0.9)) == 0.05
    assert optimizer_lr(partial(instantiator, torch.optim.RMSprop)) == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="no default lr"):
        optimizer_lr(lambda params: torch.optim.SGD(params, lr=0.1))


def test_transfer_classifier_takes_compile_input_norm_and_reads_its_head_lr() -> None:
    model = TransferClassifier(
        3,
        backbone=TINY,
        pretrained=False,
        compile=True,
        input_norm="image",
        optimizer=partial(torch.optim.AdamW, lr=0.2),
        backbone_lr_scale=0.5,
    )
    assert model.compile and model.input_norm == "image" and model.hparams["compile"] is True
    assert model.head_lr() == 0.2 and model.param_groups()[1]["lr"] == pytest.approx(0.1)
    assert model.default_image_size == model.net.data_config()["input_size"][-1]
    assert model.hparams["mean"] is None  # None in the config: the backbone's own, not frozen in


@pytest.mark.parametrize("grid", [1, 2, 3])
def test_pooling_names_follow_timm_and_keep_the_concatenation_layout(grid: int) -> None:
    x = torch.randn(2, 5, 7, 7)
    avg = F.adaptive_avg_pool2d(x, grid).flatten(1)
    mx = F.adaptive_max_pool2d(x, grid).flatten(1)
    cat = GlobalPool("catavgmax", grid)
    torch.testing.assert_close(cat(x), torch.cat([avg, mx], dim=1))  # the old ``avgmax`` layout
    torch.testing.assert_close(GlobalPool("avgmax", grid)(x), 0.5 * (avg + mx))
    torch.testing.assert_close(GlobalPool("avg", grid)(x), avg)
    torch.testing.assert_close(GlobalPool("max", grid)(x), mx)
    assert cat.multiplier == 2 * grid**2 and GlobalPool("avgmax", grid).multiplier == grid**2
    with pytest.raises(ValueError, match="pooling must be one of"):
        GlobalPool("mean")


def test_local_contrast_ignores_lighting_and_evens_out_shadows() -> None:
    from lit_vision.contrast import local_contrast

    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(2, 3, 32, 32, generator=g)
    out = local_contrast(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the same scene darker and flatter (a*x + b) comes out the same
    assert torch.allclose(local_contrast(0.4 * x + 0.1), out, atol=1e-4)
    # a shadow over the left half (a fifth of the light): the texture there keeps more of its
    # strength than under per-image standardisation (a fifth), within the floor that keeps
    # flat regions from being blown up (the image's mean local spread)
    shadowed = x.clone()
    shadowed[..., :16] = 0.2 * x[..., :16]
    norm = local_contrast(shadowed)
    ratio = float(norm[..., 2:12].std() / norm[..., 20:30].std())
    assert 0.25 < ratio < 1.0
    # a flat image stays finite (zero): no division by a vanishing neighbourhood spread
    assert torch.equal(local_contrast(torch.full((1, 3, 8, 8), 0.5)), torch.zeros(1, 3, 8, 8))


def test_equalize_luminance_maps_luminance_to_its_rank() -> None:
    from lit_vision.contrast import equalize_luminance

    g = torch.Generator().manual_seed(0)
    gray = 0.2 + 0.3 * torch.rand(2, 1, 8, 8, generator=g)  # dim, low contrast: no clamping
    x = gray.expand(2, 3, 8, 8) + 0.01 * torch.rand(2, 3, 8, 8, generator=g)
    out = equalize_luminance(x)
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    lum = (out * w).sum(1).flatten(1)
    # uniform over [0, 1] whatever the input's brightness, and in the input's pixel order
    assert torch.allclose(lum.sort(1).values, torch.linspace(0, 1, 64).expand(2, 64), atol=0.02)
    assert torch.equal(lum.argsort(1), (x * w).sum(1).flatten(1).argsort(1))
    # a darker photo of the same scene gets the same luminance
    darker = (equalize_luminance(x * 0.5) * w).sum(1).flatten(1)
    assert torch.allclose(darker, lum, atol=0.02)
