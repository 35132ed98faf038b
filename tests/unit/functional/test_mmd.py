"""MMD^2 estimators and kernels against direct double loops, closed forms and known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.mmd import (
    gaussian_kernel,
    gaussian_mixture_kernel,
    linear_kernel,
    mmd2,
    mmd2_layers,
    mmd2_numpy,
    mmd2_pooled,
)


# ---------------------------------------------------------------------------------------------- references
def _k(a: np.ndarray, b: np.ndarray, kernel: str, sigmas: tuple[float, ...], h: float) -> float:
    if kernel == "lk":
        return float(sum(ai * bi for ai, bi in zip(a, b)))
    d2 = sum((ai - bi) ** 2 for ai, bi in zip(a, b))
    return sum(math.exp(-d2 / (2 * s * s * h)) for s in sigmas)


def _mean_sq_distance(z: np.ndarray) -> float:
    total, pairs = 0.0, 0
    for i in range(len(z)):
        for j in range(len(z)):
            if i != j:
                total += sum((a - b) ** 2 for a, b in zip(z[i], z[j]))
                pairs += 1
    return total / pairs


def _loop_mmd2(x: np.ndarray, y: np.ndarray, kernel: str, sigmas: tuple[float, ...], unbiased: bool,
               scale: bool) -> float:
    h = _mean_sq_distance(np.concatenate([x, y])) if scale else 1.0
    m, n = len(x), len(y)

    def block(a: np.ndarray, b: np.ndarray, skip_diagonal: bool) -> float:
        total = 0.0
        for i in range(len(a)):
            for j in range(len(b)):
                if skip_diagonal and i == j:
                    continue
                total += _k(a[i], b[j], kernel, sigmas, h)
        return total

    if unbiased:
        xx, yy = block(x, x, True) / (m * (m - 1)), block(y, y, True) / (n * (n - 1))
    else:
        xx, yy = block(x, x, False) / m**2, block(y, y, False) / n**2
    return xx + yy - 2 * block(x, y, False) / (m * n)


@pytest.fixture()
def xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 3)), rng.normal(0.7, 1.3, size=(5, 3))


# ---------------------------------------------------------------------------------------------- estimators
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize(("kernel", "sigmas"), [("gk", (1.5,)), ("gmk", (0.5, 1.0, 2.0)), ("lk", ())])
def test_mmd2_matches_double_loop(xy, kernel, sigmas, unbiased, scale):
    x, y = xy
    got = mmd2(torch.tensor(x), torch.tensor(y), kernel=kernel, sigmas=sigmas or None, unbiased=unbiased,
               scale_bandwidth=scale)
    assert float(got) == pytest.approx(_loop_mmd2(x, y, kernel, sigmas, unbiased, scale), rel=1e-9, abs=1e-12)


def test_default_sigmas_are_table3_gmk2_and_gk2(xy):
    x, y = xy
    gmk = mmd2(torch.tensor(x), torch.tensor(y))
    assert float(gmk) == pytest.approx(_loop_mmd2(x, y, "gmk", (0.25, 0.5, 1.0, 2.0, 4.0), True, True), rel=1e-9)
    gk = mmd2(torch.tensor(x), torch.tensor(y), kernel="gk", scale_bandwidth=False)
    assert float(gk) == pytest.approx(_loop_mmd2(x, y, "gk", (1.0,), True, False), rel=1e-9)


def test_biased_linear_mmd_is_squared_mean_difference(xy):
    x, y = xy
    got = mmd2(torch.tensor(x), torch.tensor(y), kernel="lk", unbiased=False)
    assert float(got) == pytest.approx(float(np.sum((x.mean(0) - y.mean(0)) ** 2)), rel=1e-12)


def test_same_sample_gives_zero_biased_and_about_zero_unbiased():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4))
    assert abs(mmd2_numpy(x, x, unbiased=False)) < 1e-12
    y = rng.normal(size=(200, 4))
    z = rng.normal(size=(200, 4))
    assert abs(mmd2_numpy(y, z)) < 0.02


def test_shifted_gaussians_give_more_and_more():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(150, 5))
    other = rng.normal(size=(150, 5))
    values = [mmd2_numpy(base, other + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values[0] < 0.02
    assert all(b > a + 0.05 for a, b in zip(values, values[1:])), values


def test_scaled_bandwidth_makes_gaussian_mmd_scale_invariant(xy):
    x, y = xy
    scaled = [mmd2_numpy(c * x, c * y) for c in (1.0, 10.0)]
    assert scaled[0] == pytest.approx(scaled[1], rel=1e-9)
    raw = [mmd2_numpy(c * x, c * y, scale_bandwidth=False) for c in (1.0, 10.0)]
    assert raw[0] != pytest.approx(raw[1], rel=1e-3)


def test_inputs_are_flattened():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 2, 3)), rng.normal(size=(4, 2, 3))
    assert mmd2_numpy(x, y) == pytest.approx(mmd2_numpy(x.reshape(5, 6), y.reshape(4, 6)), rel=1e-12)


def test_layers_and_pooled_match_one_pair_at_a_time():
    rng = np.random.default_rng(4)
    xs = [torch.tensor(rng.normal(size=(7, d))) for d in (3, 8)]
    ys = [torch.tensor(rng.normal(1.0, 1.0, size=(5, d))) for d in (3, 8)]
    together = mmd2_layers(xs, ys)
    assert together.shape == (2,)
    for i in range(2):
        assert float(together[i]) == pytest.approx(float(mmd2(xs[i], ys[i])), rel=1e-12)
    pooled = mmd2_pooled([torch.cat([a, b]) for a, b in zip(xs, ys)], 7)
    torch.testing.assert_close(pooled, together)


def test_mmd2_is_differentiable_and_a_gradient_step_reduces_it():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64) + 1.0
    assert torch.autograd.gradcheck(lambda a: mmd2(a, y, kernel="gmk", sigmas=(0.5, 2.0)), (x,))
    value = mmd2(x, y)
    value.backward()
    with torch.no_grad():
        moved = x - 0.5 * x.grad
    assert float(mmd2(moved, y)) < float(value.detach())


# ---------------------------------------------------------------------------------------------- kernels
def test_kernel_matrices_match_loops(xy):
    x, y = xy
    xt, yt = torch.tensor(x), torch.tensor(y)
    for i in range(len(x)):
        for j in range(len(y)):
            d2 = float(np.sum((x[i] - y[j]) ** 2))
            assert float(gaussian_kernel(xt, yt, 2.0)[i, j]) == pytest.approx(math.exp(-d2 / 8.0), rel=1e-12)
            assert float(gaussian_mixture_kernel(xt, yt, (1.0, 3.0), bandwidth=2.0)[i, j]) == pytest.approx(
                math.exp(-d2 / 4.0) + math.exp(-d2 / 36.0), rel=1e-12)
            assert float(linear_kernel(xt, yt)[i, j]) == pytest.approx(float(x[i] @ y[j]), rel=1e-12)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_input_gets_a_clear_error(xy):
    x, y = (torch.tensor(a) for a in xy)
    with pytest.raises(InvalidParameterError, match="kernel must be one of gk, gmk, lk"):
        mmd2(x, y, kernel="rbf")
    with pytest.raises(InvalidParameterError, match="sigmas must be one or more positive numbers"):
        mmd2(x, y, sigmas=(1.0, -1.0))
    with pytest.raises(InvalidParameterError, match="the Gaussian kernel takes one sigma"):
        mmd2(x, y, kernel="gk", sigmas=(1.0, 2.0))
    with pytest.raises(DataError, match="same number of features, got 3 and 2"):
        mmd2(x, y[:, :2])
    with pytest.raises(DataError, match="unbiased MMD\\^2 needs at least 2 samples on each side, got 6 and 1"):
        mmd2(x, y[:1])
    assert np.isfinite(float(mmd2(x, y[:1], unbiased=False)))
    with pytest.raises(DataError, match="must be a torch.Tensor, got ndarray \\(use mmd2_numpy"):
        mmd2(xy[0], y)
    with pytest.raises(DataError, match="same dtype"):
        mmd2(x, y.float())
    with pytest.raises(DataError, match="sample axis"):
        mmd2(x[0], y[0])
    with pytest.raises(DataError, match="every pair must have 6 and 5 points"):
        mmd2_layers([x, x[:4]], [y, y])
