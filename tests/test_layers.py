import math

import pytest
import torch
from torch import nn

from sinecompress import LowRankLinear, SineLowRankLinear, sine_weight


def reference_weight(layer: SineLowRankLinear) -> torch.Tensor:
    d = lambda t: t.detach().double()  # noqa: E731
    w = d(layer.amp).reshape(-1, 1) * torch.sin(layer.omega * d(layer.u) @ d(layer.v).T)
    if layer.lin_u is not None:
        w = w + d(layer.lin_u) @ d(layer.lin_v).T
    return w


@pytest.mark.parametrize("amplitude,linear_rank", [("row", 0), ("scalar", 0), ("row", 3)])
def test_sine_layer_matches_float64_reference(amplitude, linear_rank):
    torch.manual_seed(0)
    # rank is the total: a sine part of rank 4 plus the linear part
    layer = SineLowRankLinear(12, 10, rank=4 + linear_rank, omega=30.0, amplitude=amplitude, linear_rank=linear_rank)
    assert layer.u.shape == (10, 4) and (layer.lin_u is None) == (linear_rank == 0)
    with torch.no_grad():
        layer.amp.uniform_(0.5, 1.5)
        layer.bias.normal_()
        if linear_rank:
            layer.lin_u.normal_()
            layer.lin_v.normal_()
    x = torch.randn(5, 12)
    w64 = reference_weight(layer)
    expected = x.double() @ w64.T + layer.bias.detach().double()
    torch.testing.assert_close(layer.dense_weight().double(), w64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-4, atol=1e-4)


def test_sine_raises_rank_at_same_parameter_count():
    torch.manual_seed(0)
    layer = SineLowRankLinear(64, 64, rank=2, omega=200.0)
    assert torch.linalg.matrix_rank(layer.u.detach() @ layer.v.detach().T) == 2
    assert torch.linalg.matrix_rank(layer.dense_weight().detach()) > 10


def test_phase_is_fp32_under_bf16():
    torch.manual_seed(0)
    layer = SineLowRankLinear(32, 16, rank=4, omega=500.0).to(torch.bfloat16)
    ref = reference_weight(layer)  # from the same bf16 factors, in float64
    w = layer.dense_weight(dtype=torch.float32)
    # With a bf16 phase the error at ω·UVᵀ ~ 10² would be of order one; fp32 keeps it tiny.
    assert (w.double() - ref).abs().max() < 1e-3
    naive = layer.amp.reshape(-1, 1) * torch.sin(layer.omega * (layer.u @ layer.v.T))  # bf16 phase
    assert (naive.double() - ref).abs().max() > 10 * (w.double() - ref).abs().max()


def test_autocast_keeps_fp32_phase():
    torch.manual_seed(0)
    layer = SineLowRankLinear(32, 16, rank=4, omega=500.0)
    x = torch.randn(3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = sine_weight(layer.u, layer.v, layer.omega, layer.amp, dtype=torch.float32)
    torch.testing.assert_close(w, layer.dense_weight(), rtol=0, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert torch.isfinite(y).all()


def test_to_dtype_and_backward():
    layer = SineLowRankLinear(8, 6, rank=2, omega=10.0).to(torch.float64)
    assert layer.u.dtype == torch.float64
    y = layer(torch.randn(4, 8, dtype=torch.float64))
    y.sum().backward()
    assert layer.u.grad is not None and layer.amp.grad is not None


def test_fixed_amplitude_is_a_buffer_not_a_parameter():
    layer = SineLowRankLinear(16, 8, rank=2, omega=100.0, amplitude="scalar", learn_amplitude=False)
    assert sum(p.numel() for p in layer.parameters()) == 2 * (16 + 8) + 8  # factors + bias
    assert math.isclose(float(layer.amp), 1 / math.sqrt(16))


def test_bad_arguments():
    with pytest.raises(ValueError):
        SineLowRankLinear(4, 4, rank=0, omega=1.0)
    with pytest.raises(ValueError):
        SineLowRankLinear(4, 4, rank=1, omega=float("nan"))
    with pytest.raises(ValueError):
        SineLowRankLinear(4, 4, rank=1, omega=-1.0)
    with pytest.raises(ValueError, match="linear_rank < rank"):  # the sine part keeps at least one rank
        SineLowRankLinear(4, 4, rank=2, omega=1.0, linear_rank=2)


def test_from_linear_beats_small_angle_start_and_lowrank_matches_svd():
    torch.manual_seed(0)
    lin = nn.Linear(48, 40)
    w = lin.weight.detach()
    lr = LowRankLinear.from_linear(lin, rank=6)
    s = torch.linalg.svdvals(w)
    eckart_young = float(s[6:].square().sum().sqrt() / s.square().sum().sqrt())
    got = float(torch.linalg.norm(lr.dense_weight().detach() - w) / torch.linalg.norm(w))
    assert abs(got - eckart_young) < 1e-4
    sine = SineLowRankLinear.from_linear(lin, rank=6, omega=50.0, linear_rank=3, steps=200)  # 3 linear + 3 sine
    err = float(torch.linalg.norm(sine.dense_weight().detach() - w) / torch.linalg.norm(w))
    assert err < 1.0
    x = torch.randn(7, 48)
    torch.testing.assert_close(sine(x), x @ sine.dense_weight().T + lin.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_compile():
    torch.manual_seed(0)
    layers = [SineLowRankLinear(16, 8, rank=2, omega=50.0), LowRankLinear(16, 8, rank=2)]
    x = torch.randn(4, 16)
    for layer in layers:
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), layer(x))
