"""Fits on small layers: each method beats its warm start, wsvd is the closed form, seeds are deterministic."""

from __future__ import annotations

import pytest
import torch

from sinecompress.fit.sine import (
    WhitenedSquare,
    fast_bf16,
    fit_calibrated,
    fit_hybrid,
    fit_sine,
    gram_dtype_on,
    gram_square,
    phase_factors,
)
from sinecompress.fit.svd import rel_error, truncated_svd, truncated_svd_by_gram
from sinecompress.fit.whiten import (
    activation_error,
    chol,
    gram_whitened_svd,
    shifted_target,
    whitened_error,
    whitened_svd,
)


def _layer(m=48, n=32, tokens=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g) / n**0.5
    # Anisotropic inputs, as real activations are: a few directions carry most of the energy.
    x = torch.randn(tokens, n, generator=g) * torch.logspace(0, -2, n)
    return w, x, (x.T @ x).double()


def test_wsvd_equals_closed_form():
    w, _, gram = _layer()
    L = chol(gram, 1e-6)
    u, v = whitened_svd(w, L, 6)
    # Eckart–Young in the whitened space: the error is the tail of W L's singular values.
    s = torch.linalg.svdvals(w.double() @ L)
    expected = float((s[6:] ** 2).sum().sqrt() / (s**2).sum().sqrt())
    assert abs(whitened_error(u @ v.T, w, L) - expected) < 1e-4
    assert torch.linalg.matrix_rank(u @ v.T) == 6


@pytest.mark.parametrize("shape", [(48, 32), (32, 48), (2100, 24)])  # the last: W L by three blocks of rows
def test_the_gram_route_gives_the_whitened_svds_factors_and_error(shape):
    w, _, gram = _layer(*shape)
    L = chol(gram)
    u, v = whitened_svd(w, L, 6)
    gu, gv, gerr = gram_whitened_svd(w, gram, 6)
    assert torch.allclose(gu @ gv.T, u @ v.T, atol=1e-5)
    assert torch.allclose(gu.norm(dim=0), u.norm(dim=0), rtol=1e-4)  # the same balanced split
    assert activation_error(u @ v.T, w, gram) == pytest.approx(whitened_error(u @ v.T, w, L), rel=1e-5)
    # the error read off the eigenvalues is the error measured from the Gram
    assert gerr == pytest.approx(activation_error(gu @ gv.T, w, gram), rel=1e-4)


def test_the_gram_routes_leave_directions_a_weight_lacks_empty():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 3, generator=g) @ torch.randn(3, 60, generator=g)  # rank 3, asked for 6
    _, _, gram = _layer(60, 60)
    for u, v in (gram_whitened_svd(w, gram, 6)[:2], gram_whitened_svd(w.T.contiguous(), gram[:40, :40], 6)[:2],
                 truncated_svd_by_gram(w, 6), truncated_svd_by_gram(w.T, 6)):
        assert torch.count_nonzero(u[:, 3:]) == 0 and torch.count_nonzero(v[:, 3:]) == 0
    u, v = truncated_svd_by_gram(w, 6)
    assert rel_error(u @ v.T, w) < 1e-5


@pytest.mark.parametrize("transpose", [False, True])
def test_the_large_exact_svd_matches_lapacks(transpose):
    w, _, _ = _layer(300, 40)
    w = w.T if transpose else w
    uu, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    u, v = truncated_svd_by_gram(w, 10, rows=64)  # several row blocks
    assert torch.allclose((u @ v.T).double(), (uu[:, :10] * s[:10]) @ vh[:10], atol=1e-5)
    assert torch.allclose(u.norm(dim=0).double() ** 2, s[:10], rtol=1e-4)


def test_top_eigen_keeps_the_largest_rank_eigenpairs_in_descending_order():
    from sinecompress.fit.svd import top_eigen

    a = torch.randn(30, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    k_mat = a.T @ a
    s = torch.linalg.svdvals(a)
    for rank in (0, 3, 8, 12):
        evecs, root, _ = top_eigen(k_mat, rank)
        kept = min(rank, 8)
        assert evecs.shape == (8, kept)
        assert torch.allclose(root ** 2, s[:kept], rtol=1e-10)


def test_the_large_exact_svd_writes_its_factors_in_the_dtype_asked_for():
    w, _, _ = _layer(300, 40)
    u32, v32 = truncated_svd_by_gram(w.to(torch.bfloat16), 10, rows=64)
    u, v = truncated_svd_by_gram(w.to(torch.bfloat16), 10, rows=64, dtype=torch.bfloat16)
    assert u.dtype == v.dtype == torch.bfloat16
    torch.testing.assert_close(u, u32.to(torch.bfloat16), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(v, v32.to(torch.bfloat16), rtol=1e-2, atol=1e-2)
    for exact in (True, False):  # the small routes (LAPACK, randomized) give the same dtype
        su, sv = truncated_svd(w, 10, exact=exact, dtype=torch.bfloat16)
        assert su.dtype == sv.dtype == torch.bfloat16


def test_wsvd_beats_svd_on_activations_and_svd_beats_wsvd_on_weights():
    w, _, gram = _layer()
    L = chol(gram)
    su, sv = truncated_svd(w, 6)
    wu, wv = whitened_svd(w, L, 6)
    assert whitened_error(wu @ wv.T, w, L) < whitened_error(su @ sv.T, w, L)
    assert rel_error(su @ sv.T, w) <= rel_error(wu @ wv.T, w) + 1e-6


def test_hybrid_fit_improves_on_its_warm_start():
    w, _, gram = _layer()
    f = fit_hybrid(w, chol(gram), rank=8, linear_rank=5, omega=100.0, steps=60, seed=0)  # sine part 3
    assert f["act_error"] < f["start_act_error"]
    assert f["u"].shape == (48, 3) and f["lin_u"].shape == (48, 5) and f["amp"].shape == (48,)


def test_residual_phase_start_points_along_the_residual_at_about_one_radian():
    w, _, gram = _layer()
    L = chol(gram)
    wu, wv = whitened_svd(w, L, 8)
    ru, rv = whitened_svd(w - wu[:, :5] @ wv[:, :5].T, L, 3)  # the residual's own whitened SVD ...
    assert torch.allclose(wu[:, 5:] @ wv[:, 5:].T, ru @ rv.T, atol=1e-5)  # ... is the next components of W's
    u, v = phase_factors(wu[:, 5:], wv[:, 5:], omega=100.0)
    assert abs(float((100.0 * u @ v.T).std()) - 1.0) < 1e-3  # real phase, not the small-angle trap
    at_start = {p: fit_hybrid(w, L, 8, 5, 100.0, steps=0, phase=p) for p in ("residual", "random")}
    # before any step, the residual start lowers the linear part's error about twice as much as random phase
    gain = {p: f["start_act_error"] - f["act_error"] for p, f in at_start.items()}
    assert gain["residual"] > 1.5 * gain["random"] > 0
    assert phase_factors(torch.zeros(6, 2), torch.zeros(4, 2), 100.0) is None


def test_truncated_gram_square_is_exact_when_the_dropped_eigenvalues_are_equal():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    lam = torch.tensor([9.0, 5.0, 3.0] + [0.5] * 9, dtype=torch.float64)  # top 3, then a flat tail
    G = (q * lam) @ q.T
    e = torch.randn(7, 12, generator=g)
    exact = float(WhitenedSquare.apply(e, G.float()))
    assert float(gram_square(G)(e)) == pytest.approx(exact, rel=1e-5)
    assert float(gram_square(G, 3)(e)) == pytest.approx(exact, rel=1e-5)
    assert float(gram_square(G, 2)(e)) != pytest.approx(exact, rel=1e-3)  # a real eigenvalue dropped


def test_a_truncated_gram_fit_reports_its_exact_error():
    w, _, gram = _layer()
    f = fit_calibrated(w, gram, "sine", 8, 5, 100.0, steps=20, seed=0, gram_rank=8)
    w_hat = f["lin_u"] @ f["lin_v"].T + f["amp"][:, None] * torch.sin(100.0 * f["u"] @ f["v"].T)
    assert f["act_error"] == pytest.approx(activation_error(w_hat, w, gram), rel=1e-3)


def test_a_bfloat16_gram_fit_reports_its_exact_error_and_fits_as_well_as_float32():
    w, _, gram = _layer()
    f32 = fit_calibrated(w, gram, "sine", 8, 4, 100.0, steps=60, seed=0, gram_dtype=torch.float32)
    f16 = fit_calibrated(w, gram, "sine", 8, 4, 100.0, steps=60, seed=0, gram_dtype=torch.bfloat16)
    w_hat = f16["lin_u"] @ f16["lin_v"].T + f16["amp"][:, None] * torch.sin(100.0 * f16["u"] @ f16["v"].T)
    assert f16["act_error"] == pytest.approx(activation_error(w_hat, w, gram), rel=1e-3)  # measured in float32
    assert f16["act_error"] == pytest.approx(f32["act_error"], rel=0.05)
    assert f16["act_error"] < f16["start_act_error"]
    assert f16["wsvd_act_error"] == f32["wsvd_act_error"]  # the fallback's yardstick is always exact


def test_a_bfloat16_gram_square_is_close_to_float32_and_its_gradient_stays_float32():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(40, 40, generator=g, dtype=torch.float64)
    G = G @ G.T
    e = torch.randn(9, 40, generator=g, requires_grad=True)
    value = gram_square(G, dtype=torch.bfloat16)(e)
    value.backward()
    assert float(value) == pytest.approx(float(gram_square(G)(e)), rel=2e-2)
    assert value.dtype == e.grad.dtype == torch.float32


def test_fast_bf16_is_false_where_there_is_nothing_to_multiply():
    assert fast_bf16("meta") is False and gram_dtype_on("meta") == torch.float32
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    assert fast_bf16("cpu") is (probe is not None and bool(probe()))
    assert gram_dtype_on("cpu") == (torch.bfloat16 if fast_bf16("cpu") else torch.float32)


def test_fast_bf16_honours_a_onednn_isa_cap_below_avx512_bf16(monkeypatch):
    # Under ONEDNN_MAX_CPU_ISA=AVX2 oneDNN multiplies bfloat16 on a reference kernel, far slower than float32.
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    native = probe is not None and bool(probe())
    for cap, allowed in [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True), ("all", True)]:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert fast_bf16("cpu") is (native and allowed), cap
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # oneDNN's older name for the same cap
    assert fast_bf16("cpu") is False and gram_dtype_on("cpu") == torch.float32


def test_weight_space_sine_fit_improves_on_its_svd_start():
    w, _, _ = _layer()
    u, v = truncated_svd(w, 5)
    f = fit_sine(w, 8, 100.0, linear_rank=5, steps=60, seed=0)  # total rank 8: 5 linear + 3 sine
    assert f["rel_error"] < rel_error(u @ v.T, w)


def test_fits_are_deterministic_for_a_seed():
    w, _, gram = _layer()
    a = fit_calibrated(w, gram, "sine", 8, 5, 100.0, steps=20, seed=3)
    b = fit_calibrated(w, gram, "sine", 8, 5, 100.0, steps=20, seed=3)
    for k in ("u", "v", "amp", "lin_u", "lin_v"):
        assert torch.equal(a[k], b[k])
    assert a["act_error"] == b["act_error"]


def test_shifted_target_recovers_the_original_outputs():
    w, x, _ = _layer(tokens=2000)
    x_shift = x + 0.05 * torch.randn_like(x) * x.std(0)
    g_s = (x_shift.T @ x_shift).double()
    cross = (x_shift.T @ x).double()
    w_star = shifted_target(w, g_s, cross, damp=1e-8)
    # W* applied to the shifted inputs reproduces the original outputs better than W itself does.
    y = x @ w.T
    assert torch.linalg.norm(x_shift @ w_star.T - y) < torch.linalg.norm(x_shift @ w.T - y)


@pytest.mark.parametrize("calibrated", [True, False])
def test_omega_is_a_gauge_of_the_compression_fits(calibrated):
    """Why --omega auto searches nothing: ω = 30 and ω = 300 end at the same error, up to float rounding
    and Adam's ε (under 1 % of what the fit itself gains from its start)."""
    w, _, gram = _layer()

    def fit(om, steps):
        if calibrated:
            return fit_calibrated(w, gram, "sine", 8, 5, om, steps=steps, seed=0)["act_error"]
        return fit_sine(w, 8, om, linear_rank=5, steps=steps, seed=0)["rel_error"]

    start, low, high = fit(100.0, 0), fit(30.0, 60), fit(300.0, 60)
    assert max(low, high) < start
    assert abs(low - high) < 0.01 * (start - max(low, high))


def test_whitened_square_matches_autograd_of_the_whitened_norm():
    """The fit's loss: one E·G product gives ‖E L‖² and its gradient, equal to autograd on ‖E L‖²."""
    from sinecompress.fit.sine import WhitenedSquare

    _, _, gram = _layer()
    L = chol(gram)
    e = torch.randn(6, gram.shape[0], dtype=torch.float64, requires_grad=True)
    (g_ref,) = torch.autograd.grad(((e @ L) ** 2).sum(), e)
    value = WhitenedSquare.apply(e, L @ L.T)
    (g,) = torch.autograd.grad(value, e)
    assert float(value) == pytest.approx(float(((e @ L) ** 2).sum()), rel=1e-10)
    assert torch.allclose(g, g_ref, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: WhitenedSquare.apply(x, L @ L.T), (e,))


def test_a_float32_gram_gives_the_float64_fit_across_column_blocks():
    from sinecompress.fit.whiten import activation_error, gram_whitened_svd

    torch.manual_seed(0)
    x = torch.randn(3000, 1500, dtype=torch.float64) * torch.linspace(0.1, 3, 1500, dtype=torch.float64)
    g64 = x.T @ x
    w = torch.randn(40, 1500)  # wide: W G Wᵀ, with G read in two column blocks
    u64, v64, _ = gram_whitened_svd(w, g64, 12)
    u32, v32, _ = gram_whitened_svd(w, g64.float(), 12)
    assert torch.allclose(u32 @ v32.T, u64 @ v64.T, rtol=0, atol=1e-5 * float((u64 @ v64.T).abs().max()))
    e64, e32 = activation_error(u64 @ v64.T, w, g64), activation_error(u64 @ v64.T, w, g64.float())
    assert e32 == pytest.approx(e64, rel=1e-6)
