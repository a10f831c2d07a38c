"""Plain networks: shapes, and every parameter receives a gradient."""

from __future__ import annotations

import pytest
import torch

from lit_vision.models import CNNClassifier
from lit_vision.networks import SimpleCNN


@pytest.mark.parametrize("pooling", ["avg", "max", "avgmax", "catavgmax"])
@pytest.mark.parametrize("hidden", [0, 32])
def test_simple_cnn_every_parameter_gets_a_gradient(pooling: str, hidden: int) -> None:
    net = SimpleCNN(
        5, channels=(8, 16), convs_per_block=2, pooling=pooling, hidden=hidden, dropout=0.1
    )
    out = net(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 5)
    out.logsumexp(1).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_classifier_accepts_uint8_and_float_identically() -> None:
    model = CNNClassifier(3, channels=(8,), hidden=0).eval()
    x8 = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(model(x8), model(x8.float() / 255))


def test_early_pool_halves_the_work_with_the_same_weights() -> None:
    from lit_vision.networks import SimpleCNN

    late = SimpleCNN(5, channels=(8, 16), convs_per_block=2, pool_grid=2, hidden=0)
    early = SimpleCNN(
        5, channels=(8, 16), convs_per_block=2, pool_grid=2, hidden=0, early_pool=True
    )
    assert [p.shape for p in late.parameters()] == [p.shape for p in early.parameters()]
    kinds = [type(m).__name__ for m in early.features]
    # each block: conv -> pool -> BN -> ReLU, then its other convs at half resolution
    assert kinds[:6] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d"]
    x = torch.randn(2, 3, 32, 32)
    assert early(x).shape == late(x).shape == (2, 5)
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
        for m in early.features
        if isinstance(m, torch.nn.Conv2d)
    ]
    early(x)
    for h in hooks:
        h.remove()
    assert sizes == [32, 16, 16, 8]  # the second conv of each block runs after the pooling


def test_dirac_start_passes_the_input_through_and_fixed_bn_scale_stays_one() -> None:
    net = SimpleCNN(5, channels=(8, 16), convs_per_block=2, dirac=True, bn_scale=False)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(convs[0](x)[:, :3], x)  # the first 3 of 8 filters: identity
    y = torch.randn(2, 8, 12, 12)
    torch.testing.assert_close(convs[1](y), y)  # 8 -> 8: all of them
    assert convs[2].weight[8:].abs().sum() > 0  # 8 -> 16: filters 8-15 keep a random start
    bns = [m for m in net.features if isinstance(m, torch.nn.BatchNorm2d)]
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(not bn.weight.requires_grad and bn.weight.grad is None for bn in bns)
    assert all(bn.bias.grad is not None for bn in bns)
    plain = SimpleCNN(5, channels=(8, 16), convs_per_block=2)
    assert not torch.allclose(plain.features[0](x)[:, :3], x)
    assert all(
        m.weight.requires_grad for m in plain.features if isinstance(m, torch.nn.BatchNorm2d)
    )
