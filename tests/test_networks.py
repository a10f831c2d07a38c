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
