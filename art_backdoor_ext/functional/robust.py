"""Implementation of the detection inference of AD (Xiang, Miller, Kesidis, 2020) and the MAD anomaly index.

| Paper link: https://arxiv.org/abs/1908.10498 (IEEE TNNLS 2020), "Detection of Backdoors in Trained
  Classifiers Without Access to the Training Set", Section 3.1.3 (robust null, Eq. 4) and Section 3.3 (Eq. 7).

Conventions: a K x K matrix holds one statistic per (source, target) class pair, rows are sources and
columns targets; the diagonal is meaningless (NaN) and ignored. Reciprocals ``r = 1 / size`` are used so
that backdoor pairs (unusually small perturbations) are *large* values in the right tail of the null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.gamma_fit import fit_truncated_gamma_many

__all__ = [
    "MAD_CONSISTENCY", "GammaNull", "OrderStatisticResult", "reciprocal_statistics", "asymmetry_statistics",
    "fit_truncated_gamma", "order_statistic_pvalue", "confusion_correction", "mad_anomaly_index",
]  # fmt: skip

#: Consistency constant making the MAD an unbiased estimate of the standard deviation of a Gaussian.
MAD_CONSISTENCY = 1.4826


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _square_matrix(x: ArrayLike, name: str, min_k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Return ``x`` as a float K x K array and its off-diagonal values (row-major)."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{name} must be a numeric K x K matrix, got {type(x).__name__}") from err
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise DataError(f"{name} must be a square K x K matrix (one entry per pair), got shape {arr.shape}")
    if arr.shape[0] < min_k:
        raise InvalidParameterError(
            f"{name} must cover at least K={min_k} classes, got K={arr.shape[0]}"
            + ("; with fewer than 3 classes no null can be fitted" if min_k == 3 else "")
        )
    values = arr[~np.eye(arr.shape[0], dtype=bool)]
    if np.isnan(values).any():
        raise DataError(f"{name} has NaN off the diagonal; only the diagonal (s == t) may be NaN")
    return arr, values


def _n_exclude(n_exclude: int | None, k: int) -> int:
    """How many extreme statistics to set aside before fitting a null: ``K - 1`` by default (one target)."""
    n_stat = k * (k - 1)
    n_ex = k - 1 if n_exclude is None else n_exclude
    if isinstance(n_ex, bool) or not isinstance(n_ex, (int, np.integer)) or not 1 <= n_ex <= n_stat - 2:
        raise InvalidParameterError(f"n_exclude must be an int in [1, {n_stat - 2}], got {n_ex!r}")
    return int(n_ex)


def _vector(x: ArrayLike, name: str, min_size: int = 1) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size < min_size:
        raise DataError(f"{name} must hold at least {min_size} value(s), got {arr.size}")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} must be finite, got NaN or infinite values")
    return arr


def reciprocal_statistics(sizes: ArrayLike) -> np.ndarray:
    """Turn a K x K matrix of perturbation sizes ``d(v_st)`` into the AD statistics ``r_st = 1 / d(v_st)``.

    :param sizes: K x K sizes (L1 norm, L2 norm, energy...), rows = source, columns = target; the diagonal is
        ignored. Off-diagonal sizes must be finite and ``>= 0``. A size of 0 means the pair is already
        (group-)misclassified without any perturbation; its reciprocal is ``+inf`` (the most extreme value).
    :return: K x K float64 reciprocals with a NaN diagonal.
    :raises DataError: not square, NaN/inf or negative off-diagonal sizes.

    >>> float(reciprocal_statistics(np.array([[np.nan, 2.0], [0.5, np.nan]]))[0, 1])
    0.5
    """
    arr, values = _square_matrix(sizes, "sizes")
    if not np.isfinite(values).all():
        raise DataError("sizes must be finite off the diagonal (cap unreachable pairs at the size bound)")
    if (values < 0).any():
        raise DataError(f"sizes must be >= 0, got minimum {values.min():.6g}")
    off = ~np.eye(arr.shape[0], dtype=bool)
    out = np.full(arr.shape, np.nan)
    with np.errstate(divide="ignore"):
        out[off] = 1.0 / values
    return out


def asymmetry_statistics(sizes: ArrayLike) -> np.ndarray:
    """Divide each pair's size by the size of the reverse pair: ``a_st = d(v_st) / d(v_ts)``.

    Naturally confusable classes (T-shirt and shirt, 1 and 8) need small perturbations *in both directions*;
    a backdoor makes one direction small and leaves the reverse alone. The result is a size-like matrix (small =
    suspicious) for :func:`reciprocal_statistics`; a pair as easy as its reverse gets 1.

    :param sizes: K x K sizes (rows source, columns target), diagonal ignored, off-diagonal finite and ``> 0``.
    :return: K x K float64 with a NaN diagonal; ``a_ts = 1 / a_st``.
    :raises DataError: not square, NaN/inf or non-positive off-diagonal sizes.

    >>> asymmetry_statistics(np.array([[np.nan, 1.0], [4.0, np.nan]]))[0, 1]
    np.float64(0.25)
    """
    arr, values = _square_matrix(sizes, "sizes")
    if not np.isfinite(values).all() or (values <= 0).any():
        raise DataError("sizes must be finite and > 0 off the diagonal for the asymmetry statistic")
    out = arr / arr.T
    np.fill_diagonal(out, np.nan)
    return out


@dataclass(frozen=True)
class GammaNull:
    """Unconditional Gamma null ``G_R`` (shape ``k``, scale ``theta``) learned from a truncated sample.

    :param shape: Gamma shape ``k > 0``.
    :param scale: Gamma scale ``theta > 0`` (same unit as the statistics).
    :param truncation: truncation point the fit conditioned on: an upper bound for AD's reciprocals (``inf``:
        untruncated fit), a lower bound for sizes (``variable="size"``, see
        :mod:`~art_backdoor_ext.functional.size_null`).
    :param n_fit: number of statistics the fit used.
    :param variable: ``"reciprocal"`` (AD Eq. 4: the null of 1/d) or ``"size"`` (the null of d).
    """

    shape: float
    scale: float
    truncation: float = math.inf
    n_fit: int = 0
    variable: str = "reciprocal"

    def cdf(self, r: ArrayLike) -> np.ndarray:
        """Unconditional null CDF ``G_R(r)``."""
        return np.asarray(stats.gamma.cdf(np.asarray(r, dtype=np.float64), self.shape, scale=self.scale))

    def sf(self, r: ArrayLike) -> np.ndarray:
        """Unconditional null survival function ``1 - G_R(r)``, accurate far in the tail."""
        return np.asarray(stats.gamma.sf(np.asarray(r, dtype=np.float64), self.shape, scale=self.scale))

    def log_cdf(self, r: ArrayLike) -> np.ndarray:
        """``log G_R(r)``, through ``log1p(-sf)`` in the right tail so that it does not round to 0."""
        sf = self.sf(r)
        with np.errstate(divide="ignore"):
            return np.where(sf < 0.5, np.log1p(-np.minimum(sf, 0.5)), np.log(np.maximum(1.0 - sf, 0.0)))

    def to_dict(self) -> dict[str, float | int | str | None]:
        """Plain-Python dict for ``json.dumps`` (an infinite truncation becomes ``None``)."""
        return {
            "shape": float(self.shape),
            "scale": float(self.scale),
            "truncation": _json_float(self.truncation),
            "n_fit": int(self.n_fit),
            "variable": self.variable,
        }


def fit_truncated_gamma(values: ArrayLike, truncation: float = math.inf) -> GammaNull:
    """Maximum-likelihood Gamma fit to a sample observed only on ``(0, truncation]`` (AD Section 3.1.3).

    Maximises ``sum_i log g(r_i) - n log G(truncation)``, the likelihood of the conditional density
    ``g_R(r | r <= truncation)``. Its parameters *are* those of the unconditional null ``g_R``: the returned
    :class:`GammaNull` is that unconditional distribution. Optimised by
    :func:`~art_backdoor_ext.functional.gamma_fit.fit_truncated_gamma_many` (damped Newton over
    ``(log k, log mean)`` on data scaled to unit mean; the shape is bounded to ``[1e-3, 1e4]``), the solver the
    bootstraps use for many samples at once, so a sample gets the same fit either way.

    :param values: 1-D sample, finite, ``> 0`` and ``<= truncation``, not all equal, at least 2 values.
    :param truncation: right truncation point ``> 0``; ``inf`` gives the ordinary (untruncated) MLE.
    :raises DataError: invalid sample or a fit that did not produce a finite likelihood.
    :raises InvalidParameterError: truncation is NaN or ``<= 0``.
    """
    x = _vector(values, "values", min_size=2)
    truncation = float(truncation)
    if math.isnan(truncation) or truncation <= 0:
        raise InvalidParameterError(f"truncation must be > 0 (or inf for no truncation), got {truncation}")
    if (x <= 0).any():
        raise DataError(f"Gamma null values must be > 0, got minimum {x.min():.6g}")
    if (x > truncation).any():
        raise DataError(f"values must be <= truncation={truncation:.6g}, got maximum {x.max():.6g}")
    if np.ptp(x) == 0:
        raise DataError("values are all equal; a Gamma null cannot be fitted to a degenerate sample")
    shapes, scales = fit_truncated_gamma_many(x[None, :], [truncation])
    if not np.isfinite(shapes[0]):
        raise DataError("truncated Gamma fit failed (no finite likelihood); the sample may be degenerate")
    shape, scale, n = float(shapes[0]), float(scales[0]), x.size
    return GammaNull(shape=shape, scale=scale, truncation=truncation, n_fit=n)


@dataclass(frozen=True)
class OrderStatisticResult:
    """Result of :func:`order_statistic_pvalue`.

    :param p_value: ``P_null[max R >= r_max] = 1 - G_R(r_max)^n_statistics`` (Eq. 4).
    :param r_max: the largest reciprocal statistic.
    :param source: source class (row) of ``r_max``.
    :param target: target class (column) of ``r_max``.
    :param null: the learned unconditional null.
    :param n_statistics: ``K (K - 1)``, the number of class-pair statistics.
    :param robust: whether the null was the conditional (truncated) fit or the naive full fit.
    """

    p_value: float
    r_max: float
    source: int
    target: int
    null: GammaNull
    n_statistics: int
    robust: bool

    @property
    def pair(self) -> tuple[int, int]:
        """``(source, target)`` of the most extreme statistic."""
        return self.source, self.target

    def to_dict(self) -> dict[str, object]:
        """Plain-Python dict for ``json.dumps`` (an infinite ``r_max`` becomes ``None``)."""
        return {
            "p_value": float(self.p_value),
            "r_max": _json_float(self.r_max),
            "source": int(self.source),
            "target": int(self.target),
            "null": self.null.to_dict(),
            "n_statistics": int(self.n_statistics),
            "robust": bool(self.robust),
        }


def order_statistic_pvalue(
    reciprocals: ArrayLike, *, n_exclude: int | None = None, robust: bool = True
) -> OrderStatisticResult:
    """Order-statistic p-value of the largest reciprocal under a robustly learned Gamma null (AD Eq. 4).

    With ``robust=True`` (the paper's method) the ``K(K-1)`` off-diagonal statistics are sorted, the
    ``n_exclude`` largest (default ``K - 1``: at most one target class can be attacked) are set aside,
    and the null is the Gamma whose density truncated at the smallest of those excluded values maximises
    the likelihood of the remaining ``(K-1)^2`` statistics. With ``robust=False`` the null is the naive
    untruncated fit to all ``K(K-1)`` statistics (paper Table 5: it degrades detection). The p-value is
    computed as ``-expm1(n log G(r_max))`` so that tiny p-values do not round to 0.

    :param reciprocals: K x K reciprocals (see :func:`reciprocal_statistics`), ``K >= 3``; diagonal ignored;
        off-diagonal values ``> 0``, ``+inf`` allowed (zero-size perturbation, p-value 0).
    :param n_exclude: how many of the largest statistics to exclude from the fit (robust mode only),
        ``1 <= n_exclude <= K(K-1) - 2``.
    :param robust: conditional (truncated) null fit, or naive full fit.
    :return: :class:`OrderStatisticResult`; ties for the maximum go to the first pair in row-major order.
    :raises InvalidParameterError: ``K < 3`` or a bad ``n_exclude``.
    :raises DataError: NaN or non-positive off-diagonal values, or too many infinite ones to fit a null.

    >>> rng = np.random.default_rng(0)
    >>> r = rng.gamma(4.0, 1.0, size=(10, 10)); r[3, 7] = 40.0
    >>> res = order_statistic_pvalue(r)
    >>> res.pair, res.p_value < 1e-3
    ((3, 7), True)
    """
    arr, values = _square_matrix(reciprocals, "reciprocals", min_k=3)
    if (values <= 0).any():
        raise DataError(f"reciprocals must be > 0 off the diagonal, got minimum {values.min():.6g}")
    k = arr.shape[0]
    n_stat = k * (k - 1)
    if robust:
        n_ex = _n_exclude(n_exclude, k)
        ordered = np.sort(values)
        fit_values, truncation = ordered[: n_stat - int(n_ex)], float(ordered[n_stat - int(n_ex)])
    else:
        if n_exclude is not None:
            raise InvalidParameterError("n_exclude only applies to robust=True, got robust=False")
        fit_values, truncation = values, math.inf
    if not np.isfinite(fit_values).all():
        raise DataError(
            "too many infinite reciprocals (zero-size perturbations) to fit a null: "
            f"{int(np.isinf(values).sum())} of {n_stat}"
        )
    null = fit_truncated_gamma(fit_values, truncation)
    flat = int(np.argmax(np.where(np.eye(k, dtype=bool), -np.inf, arr)))
    source, target = divmod(flat, k)
    r_max = float(arr[source, target])
    p_value = float(np.clip(-np.expm1(n_stat * float(null.log_cdf(r_max))), 0.0, 1.0))
    return OrderStatisticResult(p_value, r_max, source, target, null, n_stat, bool(robust))


def _profile_residual(d: np.ndarray, rho: np.ndarray, d0: float, order: int) -> float:
    """Inner minimum of Eq. 7 over ``{a_m}`` for a fixed shift ``d0`` (columns scaled for conditioning)."""
    x = (d + d0) / (float(d.max()) + d0)
    design = np.stack([x**m for m in range(1, order + 1)], axis=1)
    coef = np.linalg.lstsq(design, rho, rcond=None)[0]
    return float(np.sum((design @ coef - rho) ** 2))


def confusion_correction(
    trace_sizes: ArrayLike,
    trace_misclassification: ArrayLike,
    *,
    order: int = 3,
    target_fraction: float | None = None,
) -> float:
    """Confusion compensation ``d_st^(0)`` of AD Eq. 7 for one class pair.

    Eq. 7 is ``argmin_{d0} min_{a} sum_tau [sum_{m=1..M} a_m (d_tau + d0)^m - rho_tau]^2`` over the trace
    ``(d_tau, rho_tau)`` of Algorithm 1 (size of ``v^(tau)``, fraction of class ``s`` classified to ``t``).
    Reading: the polynomial has no constant term, so it passes through the origin; ``d0`` shifts the trace
    to the right until an order-M polynomial through ``(0, 0)`` fits it best. ``d0`` is thus the
    perturbation size that, on the fitted size -> misclassification curve, would be needed to produce the
    pair's natural confusion ``rho_0`` from zero; the corrected statistic is ``1 / (d(v_st*) + d0)``.

    Solved exactly: polynomials ``sum_m a_m (d + d0)^m`` are the degree-M polynomials with a root at ``-d0``,
    so any real root of the unconstrained least-squares fit ``q(d)`` attains the global minimum; the root at
    or left of 0 nearest the origin is returned (``d0 >= 0``). If ``q`` has none (possible for even M or a
    saturating trace), the profile of Eq. 7 is minimised numerically over ``d0 in [0, 10 max(d)]``.
    ``rho_0 == 0`` returns 0 (no correction), as in the paper.

    :param trace_sizes: 1-D sizes ``d(v^(tau))``, ``tau = 0..T``, finite, ``>= 0``, starting at 0.
    :param trace_misclassification: 1-D fractions ``rho^(tau)`` in ``[0, 1]``, same length.
    :param order: polynomial order ``M >= 1`` (paper: 3); the trace needs at least ``M + 1`` distinct sizes.
    :param target_fraction: optional ``pi`` in ``(0, 1]``; the trace is cut after the first ``rho >= pi``
        (the paper's ``T``).
    :return: ``d_st^(0) >= 0`` as a float.
    :raises InvalidParameterError: bad ``order`` or ``target_fraction``.
    :raises DataError: bad trace.

    >>> d = np.linspace(0.0, 1.0, 6)
    >>> round(confusion_correction(d, 0.5 * (d + 0.2), order=1), 6)
    0.2
    """
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise InvalidParameterError(f"order must be an int >= 1, got {order!r}")
    if target_fraction is not None and not 0.0 < float(target_fraction) <= 1.0:
        raise InvalidParameterError(f"target_fraction must be in (0, 1], got {target_fraction!r}")
    d = _vector(trace_sizes, "trace_sizes")
    rho = _vector(trace_misclassification, "trace_misclassification")
    if d.shape != rho.shape:
        raise DataError(f"trace_sizes has {d.size} values but trace_misclassification has {rho.size}")
    if (d < 0).any():
        raise DataError(f"trace_sizes must be >= 0, got minimum {d.min():.6g}")
    if d[0] != 0:
        raise DataError(f"trace_sizes must start at 0 (the unperturbed point v^(0) = 0), got {d[0]:.6g}")
    if ((rho < 0) | (rho > 1)).any():
        raise DataError("trace_misclassification must hold fractions in [0, 1]")
    if target_fraction is not None:
        reached = np.flatnonzero(rho >= float(target_fraction))
        if reached.size:
            d, rho = d[: reached[0] + 1], rho[: reached[0] + 1]
    if rho[0] == 0:
        return 0.0
    if np.unique(d).size < order + 1:
        raise DataError(f"an order-{order} fit needs {order + 1} distinct sizes, got {np.unique(d).size}")
    roots = np.polynomial.Polynomial.fit(d, rho, deg=int(order)).trim().roots()
    real = roots[np.abs(roots.imag) <= 1e-8 * np.maximum(1.0, np.abs(roots))].real
    candidates = -real[real <= 0]
    if candidates.size:
        return float(candidates.min())
    upper = 10.0 * float(d.max())
    grid = np.linspace(0.0, upper, 401)
    profile = np.array([_profile_residual(d, rho, g, int(order)) for g in grid])
    best = int(np.argmin(profile))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    res = optimize.minimize_scalar(
        lambda g: _profile_residual(d, rho, g, int(order)), bounds=(lo, hi), method="bounded"
    )
    return float(res.x) if res.fun <= profile[best] else float(grid[best])


def mad_anomaly_index(values: ArrayLike, *, side: Literal["low", "high", "both"] = "low") -> np.ndarray:
    """Anomaly index ``|x - median| / (1.4826 * MAD)`` as used by Neural Cleanse (Wang et al., 2019).

    | Paper link: https://doi.org/10.1109/SP.2019.00031 (Neural Cleanse flags an index > 2 on the small-norm
      side, ``side="low"``).

    :param values: 1-D finite statistics (e.g. per-class trigger norms).
    :param side: ``"low"`` keeps deviations below the median (others get 0), ``"high"`` above, ``"both"`` all.
    :return: float64 indices, same length. If ``MAD == 0`` values on ``side`` that differ from the median get
        ``inf`` and the others 0 (any deviation from a constant majority is infinitely anomalous).
    :raises InvalidParameterError: unknown ``side``.
    :raises DataError: empty, non-1-D or non-finite values.
    """
    if side not in ("low", "high", "both"):
        raise InvalidParameterError(f"side must be 'low', 'high' or 'both', got {side!r}")
    x = _vector(values, "values")
    deviation = x - np.median(x)
    mad = float(np.median(np.abs(deviation)))
    if side == "low":
        deviation = np.where(deviation < 0, -deviation, 0.0)
    elif side == "high":
        deviation = np.where(deviation > 0, deviation, 0.0)
    else:
        deviation = np.abs(deviation)
    if mad > 0:
        return deviation / (MAD_CONSISTENCY * mad)
    return np.where(deviation > 0, np.inf, 0.0)
