"""Coordinate MLPs: encoding, activations, and the three hidden-layer methods."""

import math

import pytest
import torch
from torch import nn

from sinecompress.errors import UsageError
from sinecompress.nn.layers import LowRankLinear, SineLowRankLinear
from sinecompress.scratch.convert import count_params
from sinecompress.scratch.fields import CoordinateMLP, FourierEncoding, Gaussian


def test_fourier_encoding_values():
    enc = FourierEncoding(2, 3)
    x = torch.tensor([[0.25, -0.5]])
    y = enc(x)
    assert enc.out_dim == 2 * 7 == y.shape[-1]
    assert torch.equal(y[0, :2], x[0])
    # sin(2^l π p) for p = 0.25: l=0 → sin(π/4); l=1 → sin(π/2) = 1.
    assert y[0, 2].item() == pytest.approx(math.sin(math.pi / 4), abs=1e-6)
    assert y[0, 3].item() == pytest.approx(1.0, abs=1e-6)


def test_gaussian_activation():
    g = Gaussian(sigma=0.5)
    x = torch.tensor([0.0, 0.5, -1.0])
    torch.testing.assert_close(g(x), torch.exp(-0.5 * (x / 0.5) ** 2))
    with pytest.raises(UsageError, match="sigma"):
        Gaussian(0)


@pytest.mark.parametrize("method,cls", [("dense", nn.Linear), ("lowrank", LowRankLinear),
                                        ("sine", SineLowRankLinear)])
@pytest.mark.parametrize("activation", ["relu", "gaussian"])
def test_forward_backward_each_method(method, cls, activation):
    torch.manual_seed(0)
    f = CoordinateMLP(2, 3, width=32, hidden_layers=3, n_freqs=4, activation=activation,
                      sigma=0.5, method=method, rank=2, omega=400)
    assert all(type(h) is cls for h in f.hidden)
    assert type(f.first) is nn.Linear and type(f.last) is nn.Linear  # input/output stay dense
    xy = torch.rand(17, 2) * 2 - 1
    out = f(xy)
    assert out.shape == (17, 3) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    grads = [p.grad for p in f.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if method != "dense":
        assert len(f.plan) == 3 and f.plan[0]["rank"] == 2


def test_parameter_count_by_method():
    width, k, enc = 64, 5, 2 * (2 * 6 + 1)
    base = (enc * width + width) + 4 * width + (width * 3 + 3)  # first + hidden biases + last
    dense = CoordinateMLP(2, 3, width=width, hidden_layers=4, n_freqs=6)
    lowrank = CoordinateMLP(2, 3, width=width, hidden_layers=4, n_freqs=6, method="lowrank", rank=k)
    sine = CoordinateMLP(2, 3, width=width, hidden_layers=4, n_freqs=6, method="sine", rank=k, omega=800)
    assert count_params(dense) == base + 4 * width * width
    assert count_params(lowrank) == count_params(sine) == base + 4 * k * 2 * width


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    xy = torch.rand(256, 2) * 2 - 1
    target = torch.sin(3 * xy[:, :1]) * torch.cos(2 * xy[:, 1:])
    f = CoordinateMLP(2, 1, width=32, hidden_layers=2, n_freqs=3, method="sine", rank=1, omega=400)
    opt = torch.optim.Adam(f.parameters(), lr=1e-3)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = (f(xy) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_bad_field_settings():
    with pytest.raises(UsageError, match="method"):
        CoordinateMLP(2, 1, method="svd")
    with pytest.raises(UsageError, match="rank"):
        CoordinateMLP(2, 1, method="sine", omega=10)
    with pytest.raises(UsageError, match="omega"):
        CoordinateMLP(2, 1, method="sine", rank=1)
    with pytest.raises(UsageError, match="activation"):
        CoordinateMLP(2, 1, activation="tanh")
