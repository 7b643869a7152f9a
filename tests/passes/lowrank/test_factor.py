"""Low-rank math: Eckart–Young for plain and whitened SVD, energy ranks, Tucker-2 exactness."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.passes.lowrank.factor import (SecondMoment, Whitening, break_even_rank, energy_rank, factorize,
                                            mode_spectra, relative_errors, rows_of, tucker2)

RNG = np.random.default_rng(0)


def _anisotropic_rows(n: int, k: int) -> np.ndarray:
    """Rows whose features have very different scales (what real activations look like)."""
    scales = np.geomspace(10.0, 0.01, k)
    return RNG.standard_normal((n, k)) * scales @ np.linalg.qr(RNG.standard_normal((k, k)))[0]


def test_plain_svd_is_exact_at_full_rank_and_reports_its_residual():
    w = RNG.standard_normal((24, 16))
    lr = factorize(w)
    a, b = lr.factors(16)
    np.testing.assert_allclose(a @ b, w, atol=1e-10)
    approx = lr.approximation(5)
    assert relative_errors(w, approx, None)["weight"] == pytest.approx(lr.residual(5), rel=1e-9)


def test_whitened_svd_minimizes_output_error_not_weight_error():
    x = _anisotropic_rows(2000, 32)
    w = RNG.standard_normal((32, 24))
    moment = SecondMoment(32)
    moment.add(x)
    c = moment.matrix()
    plain, aware = factorize(w), factorize(w, Whitening.of(c, damping=1e-8))
    ep = relative_errors(w, plain.approximation(6), c)
    ea = relative_errors(w, aware.approximation(6), c)
    assert ea["output"] < 0.5 * ep["output"]  # much closer on the data ...
    assert ea["weight"] > ep["weight"]  # ... at the price of the weight error
    assert ea["output"] == pytest.approx(aware.residual(6), rel=1e-4)  # spectrum gives the output error
    y, y_hat = x @ w, x @ aware.approximation(6)
    assert np.linalg.norm(y - y_hat) / np.linalg.norm(y) == pytest.approx(ea["output"], rel=1e-6)


def test_whitening_handles_a_singular_second_moment():
    x = RNG.standard_normal((100, 8))
    x[:, 3] = 0.0  # a dead feature
    moment = SecondMoment(8)
    moment.add(x)
    wh = Whitening.of(moment.matrix())
    np.testing.assert_allclose(wh.s @ wh.s_inv, np.eye(8), atol=1e-8)


def test_second_moment_drops_non_finite_rows_and_counts_rows():
    moment = SecondMoment(2)
    moment.add(np.array([[1.0, 2.0], [np.nan, 1.0], [3.0, 0.0]]))
    assert moment.rows == 2
    np.testing.assert_allclose(moment.matrix(), [[5.0, 1.0], [1.0, 2.0]])


def test_rows_of_moves_the_channel_axis_last():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    rows = rows_of(x, 1)
    assert rows.shape == (40, 3)
    np.testing.assert_array_equal(rows[0], x[0, :, 0, 0])
    assert rows_of(x, -1).shape == (24, 5)


@pytest.mark.parametrize("energy, expected", [(0.5, 1), (0.8, 1), (0.81, 2), (0.99, 3), (1.0, 4)])
def test_energy_rank_counts_squared_singular_values(energy, expected):
    s = np.sqrt(np.array([0.8, 0.15, 0.04, 0.01]))
    assert energy_rank(s, energy) == expected


def test_break_even_rank():
    assert break_even_rank(384, 384) == 192
    assert break_even_rank(384, 1536) == pytest.approx(307.2)


def test_tucker2_recovers_an_exact_low_rank_kernel_and_its_residual():
    core = RNG.standard_normal((4, 3, 3, 3))
    w = np.einsum("abhw,oa,ib->oihw", core, RNG.standard_normal((10, 4)), RNG.standard_normal((7, 3)))
    s_out, s_in = mode_spectra(w)
    assert energy_rank(s_out, 0.999999) == 4 and energy_rank(s_in, 0.999999) == 3
    t = tucker2(w, 4, 3)
    np.testing.assert_allclose(t.approximation(), w, atol=1e-9)
    assert t.residual < 1e-6
    lossy = tucker2(w, 2, 2)
    err = np.linalg.norm(lossy.approximation() - w) / np.linalg.norm(w)
    assert lossy.residual == pytest.approx(err, rel=1e-6)


def test_tucker2_layer_weights_shapes():
    first, core, last = tucker2(RNG.standard_normal((16, 8, 3, 3)), 5, 4).layer_weights()
    assert first.shape == (4, 8, 1, 1) and core.shape == (5, 4, 3, 3) and last.shape == (16, 5, 1, 1)


def test_whitened_tucker2_is_closer_on_the_data():
    x = _anisotropic_rows(3000, 12)
    moment = SecondMoment(12)
    moment.add(x)
    c = moment.matrix()
    w = RNG.standard_normal((10, 12, 1, 1))

    def out_err(t):
        e = (w - t.approximation())[:, :, 0, 0].T
        return np.sum(e * (c @ e)) / np.sum(w[:, :, 0, 0].T * (c @ w[:, :, 0, 0].T))

    assert out_err(tucker2(w, 10, 4, Whitening.of(c, 1e-8))) < 0.5 * out_err(tucker2(w, 10, 4))
