"""An order-statistic null on the perturbation *sizes* themselves (this project's alternative to AD's Eq. 4).

| Paper link: https://arxiv.org/abs/1908.10498 (AD, Section 3.1.3: the robust conditional null and Eq. 4 that
  this mirrors)

AD fits a Gamma to the *reciprocals* r = 1/d of the class-pair sizes and asks how extreme the largest one is.
When the sizes themselves are Gamma- or log-normally distributed (as a homogeneous set of pairs plausibly is),
their reciprocals have a heavier right tail than any Gamma, and Eq. 4 flags many clean matrices (simulation in
tools/scratch/ad_null_calibration.py, theta = 0.05, K = 10: 55% of i.i.d. Gamma(20) size matrices, 46% of
log-normal ones; this null: 7.5% and 2.5%, and 0% where the reciprocals are exactly Gamma, which is the paper's
assumption and where Eq. 4 flags 13.5%). This module fits the Gamma to the sizes instead, mirroring the
paper's robust procedure on the other tail: the K - 1 *smallest* sizes are set aside, the Gamma is fitted by
maximum likelihood to the remaining (K-1)^2 sizes, left-truncated at the largest size set aside, and the
smallest size gets p = 1 - (1 - G(d_min))^(K(K-1)).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.robust import GammaNull, OrderStatisticResult, _n_exclude, _square_matrix

__all__ = ["fit_left_truncated_gamma", "size_order_statistic_pvalue"]


def fit_left_truncated_gamma(values: ArrayLike, truncation: float = 0.0) -> GammaNull:
    """Maximum-likelihood Gamma fit to a sample observed only on ``[truncation, inf)``.

    Maximises ``sum_i log g(d_i) - n log(1 - G(truncation))``; the returned :class:`GammaNull` is the
    unconditional distribution (``variable="size"``, its ``truncation`` a lower bound).

    :param values: 1-D sample, finite, ``>= truncation`` and ``> 0``, not all equal, at least 2 values.
    :param truncation: lower truncation point ``>= 0`` (0: the ordinary MLE).
    :raises DataError: invalid sample, or a fit without a finite likelihood.
    :raises InvalidParameterError: truncation NaN, negative or infinite.

    >>> rng = np.random.default_rng(0)
    >>> d = rng.gamma(5.0, 2.0, size=20000)
    >>> null = fit_left_truncated_gamma(d[d >= 8.0], truncation=8.0)
    >>> abs(null.shape - 5.0) < 0.3, abs(null.scale - 2.0) < 0.15
    (True, True)
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    truncation = float(truncation)
    if not math.isfinite(truncation) or truncation < 0:
        raise InvalidParameterError(f"truncation must be finite and >= 0, got {truncation}")
    if x.size < 2 or not np.isfinite(x).all() or (x <= 0).any():
        raise DataError("values must hold at least 2 finite values > 0")
    if (x < truncation).any():
        raise DataError(f"values must be >= truncation={truncation:.6g}, got minimum {x.min():.6g}")
    if np.ptp(x) == 0:
        raise DataError("values are all equal; a Gamma null cannot be fitted to a degenerate sample")
    unit = float(x.mean())
    z, c = x / unit, truncation / unit
    mean_z, mean_log_z = float(z.mean()), float(np.log(z).mean())

    def neg_loglik(p: np.ndarray) -> float:
        k = math.exp(p[0])
        theta = math.exp(p[1]) / k
        ll = (k - 1.0) * mean_log_z - mean_z / theta - k * math.log(theta) - float(special.gammaln(k))
        if c > 0:
            upper = float(special.gammaincc(k, c / theta))
            if upper <= 0:
                return 1e300
            ll -= math.log(upper)
        return -ll if math.isfinite(ll) else 1e300

    k0 = float(np.clip(mean_z**2 / float(z.var()), 1e-2, 1e3))
    res = optimize.minimize(neg_loglik, np.array([math.log(k0), math.log(mean_z)]), method="L-BFGS-B",
                            bounds=[(math.log(1e-3), math.log(1e4)), (-30.0, 30.0)])
    if not np.isfinite(res.fun) or res.fun >= 1e300:
        raise DataError(f"left-truncated Gamma fit failed ({res.message}); the sample may be degenerate")
    shape = math.exp(float(res.x[0]))
    return GammaNull(shape=shape, scale=math.exp(float(res.x[1])) / shape * unit, truncation=truncation,
                     n_fit=int(x.size), variable="size")


def size_order_statistic_pvalue(sizes: ArrayLike, *, n_exclude: int | None = None) -> OrderStatisticResult:
    """Order-statistic p-value of the *smallest* size under a Gamma null fitted to the sizes.

    The ``n_exclude`` smallest off-diagonal sizes (default ``K - 1``: at most one target class attacked) are
    set aside; the Gamma is fitted to the others, left-truncated at the largest size set aside; then
    ``p = P_null[min of K(K-1) sizes <= d_min] = 1 - (1 - G(d_min))^(K(K-1))``, computed as
    ``-expm1(n log1p(-G(d_min)))`` so that tiny p-values do not round to 0.

    :param sizes: K x K sizes (or any size-like statistic, small = suspicious), ``K >= 3``, diagonal ignored,
        off-diagonal finite and ``>= 0`` (a zero size gets p = 0).
    :param n_exclude: ``1 <= n_exclude <= K(K-1) - 2``.
    :return: :class:`~art_backdoor_ext.functional.robust.OrderStatisticResult` with ``r_max = 1 / d_min``;
        ``null`` is the Gamma over sizes (``variable="size"``).
    :raises InvalidParameterError: ``K < 3`` or a bad ``n_exclude``.
    :raises DataError: NaN, infinite or negative off-diagonal sizes; too many zero sizes to fit a null.

    >>> rng = np.random.default_rng(0)
    >>> d = rng.gamma(20.0, 0.15, size=(10, 10)); d[3, 7] = 0.5
    >>> res = size_order_statistic_pvalue(d)
    >>> res.pair, res.p_value < 1e-3
    ((3, 7), True)
    """
    arr, values = _square_matrix(sizes, "sizes", min_k=3)
    if not np.isfinite(values).all() or (values < 0).any():
        raise DataError("sizes must be finite and >= 0 off the diagonal")
    k = arr.shape[0]
    n_stat = k * (k - 1)
    n_ex = _n_exclude(n_exclude, k)
    ordered = np.sort(values)
    fit_values, truncation = ordered[n_ex:], float(ordered[n_ex - 1])
    if (fit_values <= 0).any():
        raise DataError(f"too many zero sizes to fit a null: {int((values == 0).sum())} of {n_stat}")
    null = fit_left_truncated_gamma(fit_values, truncation)
    flat = int(np.argmin(np.where(np.eye(k, dtype=bool), np.inf, arr)))
    source, target = divmod(flat, k)
    d_min = float(arr[source, target])
    cdf = float(special.gammainc(null.shape, d_min / null.scale))
    p_value = float(np.clip(-np.expm1(n_stat * math.log1p(-min(cdf, 1.0 - 1e-300))), 0.0, 1.0))
    r_max = math.inf if d_min == 0 else 1.0 / d_min
    return OrderStatisticResult(p_value, r_max, source, target, null, n_stat, True)
