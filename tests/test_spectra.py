import math

import pytest
import torch

from sinecompress.report.spectra import EPS, effective_rank, rank_measures, singular_values, sparkline
from sinecompress.report.sweep import omega_sweep, random_factors


def with_spectrum(s, m, n, seed=0):
    """An m×n matrix whose singular values are exactly ``s`` (random orthogonal bases)."""
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    d = torch.zeros(m, n, dtype=torch.float64)
    for i, x in enumerate(s):
        d[i, i] = x
    return (q1 @ d @ q2.T).float()


def test_known_spectrum_gives_known_ranks():
    s = [10.0, 5.0, 1.0]
    w = with_spectrum(s, 40, 30)
    sp = singular_values(w)
    assert sp.exact
    assert torch.allclose(sp.sv[:3], torch.tensor(s, dtype=torch.float64), rtol=1e-5)
    assert sp.numerical_rank() == 3
    assert sp.stable_rank() == pytest.approx((100 + 25 + 1) / 100, rel=1e-4)
    p = torch.tensor(s) / sum(s)
    assert sp.effective_rank() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-4)
    assert sp.energy(1) == pytest.approx(100 / 126, rel=1e-5)
    assert sp.energy(3) == pytest.approx(1.0, abs=1e-6)


def test_flat_spectrum_is_full_rank_in_every_measure():
    sp = singular_values(torch.eye(20))
    assert sp.numerical_rank() == 20
    assert sp.effective_rank() == pytest.approx(20, rel=1e-6)
    assert sp.stable_rank() == pytest.approx(20, rel=1e-6)


def test_tolerance_rules():
    w = with_spectrum([1.0, 1e-2, 1e-5], 50, 50)
    sp = singular_values(w)
    assert sp.tolerance() == pytest.approx(50 * EPS * 1.0, rel=1e-4)  # numpy's matrix_rank rule
    assert sp.numerical_rank() == 3  # 1e-5 > 50·1.19e-7 ≈ 6e-6
    assert sp.numerical_rank(rtol=1e-3) == 2
    assert sp.numerical_rank(rtol=1e-1) == 1


def test_zero_matrix():
    m = rank_measures(torch.zeros(8, 5))
    assert m == {"numerical_rank": 0, "effective_rank": 0.0, "stable_rank": 0.0}


def test_gram_spectrum_matches_lapack_svd():
    w = torch.randn(300, 70) @ torch.randn(70, 90)  # rank 70, wide and tall variants
    for x in (w, w.T):
        ours = singular_values(x).sv
        ref = torch.linalg.svdvals(x.double())
        assert (ours - ref).abs().max() / ref[0] < 1e-6
        assert singular_values(x).numerical_rank() == 70


def test_partial_spectrum_is_flagged_and_keeps_exact_stable_rank():
    w = with_spectrum([0.97**i for i in range(200)], 300, 200, seed=1)
    full = singular_values(w, exact=True)
    part = singular_values(w, exact=False, top=20)
    assert not part.exact and part.sv.numel() == 20
    assert part.numerical_rank() == 20 and part.numerical_rank_is_lower_bound()
    assert not full.numerical_rank_is_lower_bound()
    assert part.effective_rank() is None  # entropy needs every σ: not guessed
    assert part.stable_rank() == pytest.approx(full.stable_rank(), rel=1e-3)
    assert part.energy(10) == pytest.approx(full.energy(10), rel=1e-3)
    assert part.energy(50) is None


def test_effective_rank_ignores_zeros():
    assert effective_rank(torch.tensor([2.0, 2.0, 0.0, 0.0])) == pytest.approx(2.0)


def test_sparkline_shape():
    line = sparkline([1.0, 0.5, 1e-3, 1e-9], width=24)
    assert len(line) == 4 and line[0] == "█" and line[-1] == "▁"
    assert len(sparkline([1.0 / (i + 1) for i in range(300)], width=24)) == 24


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_theorem1_rank_grows_with_omega(seed):
    u, v = random_factors(128, 96, 4, seed=seed)
    phase = u @ v.T
    assert singular_values(phase).numerical_rank() == 4
    omegas = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    spectra = [singular_values(torch.sin(w * phase)) for w in omegas]
    ranks = [s.numerical_rank() for s in spectra]
    effs = [s.effective_rank() for s in spectra]
    assert ranks == sorted(ranks) and ranks[0] < ranks[2] < ranks[-1], ranks
    assert all(a < b for a, b in zip(effs, effs[1:4])), effs  # rising until it saturates
    assert ranks[0] > 4 and ranks[-1] == 96  # above k even at small ω; full rank at high ω


def test_omega_sweep_random_schema_and_direction():
    sw = omega_sweep(shape=(64, 48), rank=3, omegas=[100, 1, 10], seed=0)
    assert set(sw) == {"schema_version", "tool_version", "source", "layer", "factors", "shape", "rank", "seed",
                       "layer_omega", "tolerance", "uv", "omegas"}
    assert [p["omega"] for p in sw["omegas"]] == [1.0, 10.0, 100.0]
    assert set(sw["omegas"][0]) == {"omega", "numerical_rank", "numerical_rank_is_lower_bound",
                                    "effective_rank", "stable_rank", "singular_values"}
    assert sw["uv"]["numerical_rank"] == 3
    r = [p["numerical_rank"] for p in sw["omegas"]]
    assert r[0] < r[2] and r[2] > 3
