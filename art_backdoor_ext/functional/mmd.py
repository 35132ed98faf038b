"""Maximum Mean Discrepancy (Gretton et al., 2012) as used by SDRM (Xia et al., 2022), differentiable in torch.

| Paper link (SDRM): https://arxiv.org/abs/2111.05077
| Paper link (MMD): https://jmlr.org/papers/v13/gretton12a.html

For samples ``X`` (m, D) and ``Y`` (n, D) and a kernel ``k``:

- unbiased estimator (SDRM Eq. 3, the U-statistic; the diagonal terms ``k(x, x)`` are left out, as the
  normalisation ``1 / (m (m - 1))`` of Eq. 3 implies)::

      MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
                - 2 sum_{i, j} k(x_i, y_j) / (m n)

  it can be slightly negative when the two distributions are equal; it needs ``m, n >= 2``;
- biased estimator (the V-statistic): the same with the diagonals kept and ``1 / m^2``, ``1 / n^2``; it is
  ``>= 0`` and exactly 0 for identical samples.

Kernels (SDRM Table 3): Gaussian ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2 h))`` (``"gk"``), Gaussian mixture
``sum_sigma exp(-||a - b||^2 / (2 sigma^2 h))`` (``"gmk"``, a sum, so its MMD^2 reaches ``2 * len(sigmas)``)
and linear ``k(a, b) = <a, b>`` (``"lk"``). ``h = 1`` unless ``scale_bandwidth=True``: then ``h`` is the mean
squared distance over all pairs of distinct points of the pooled sample ``X u Y`` (the bandwidth heuristic of
the DAN/SDRM reference code), which makes the Gaussian kernels invariant to the scale of the features; ``h``
stays in the autograd graph. Table 3's settings are in :data:`TABLE3_KERNELS`.

Inputs with more than two dimensions are flattened to (N, -1). Pure torch: no models, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from art_backdoor_ext.exceptions import DataError, InvalidParameterError

__all__ = [
    "KERNELS",
    "DEFAULT_SIGMAS",
    "TABLE3_KERNELS",
    "pairwise_sq_distances",
    "gaussian_kernel",
    "gaussian_mixture_kernel",
    "linear_kernel",
    "resolve_sigmas",
    "mmd2",
    "mmd2_layers",
    "mmd2_pooled",
    "mmd2_numpy",
]

KERNELS = ("gk", "gmk", "lk")

#: Bandwidths used when ``sigmas`` is None: Table 3's GK2 and GMK2.
DEFAULT_SIGMAS: dict[str, tuple[float, ...]] = {"gk": (1.0,), "gmk": (0.25, 0.5, 1.0, 2.0, 4.0), "lk": ()}

#: SDRM Table 3: name -> (kernel, sigmas).
TABLE3_KERNELS: dict[str, tuple[str, tuple[float, ...]]] = {
    "GK1": ("gk", (0.5,)),
    "GK2": ("gk", (1.0,)),
    "GK3": ("gk", (2.0,)),
    "GMK1": ("gmk", (0.5, 1.0, 2.0)),
    "GMK2": ("gmk", (0.25, 0.5, 1.0, 2.0, 4.0)),
    "GMK3": ("gmk", (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)),
    "GMK4": ("gmk", (1 / 3, 1.0, 3.0)),
    "GMK5": ("gmk", (1 / 9, 1 / 3, 1.0, 3.0, 9.0)),
    "GMK6": ("gmk", (1 / 27, 1 / 9, 1 / 3, 1.0, 3.0, 9.0, 27.0)),
    "LK": ("lk", ()),
}


def _as_matrix(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor, got {type(t).__name__} (use mmd2_numpy for numpy arrays)")
    if t.ndim < 2:
        raise DataError(f"{name} must have a sample axis and at least one feature axis, got shape {tuple(t.shape)}")
    return t.flatten(1)


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a_i - b_j||^2`` for (m, D) and (n, D) tensors as an (m, n) tensor, clamped at 0.

    Computed as ``|a|^2 + |b|^2 - 2 a b^T`` (no (m, n, D) intermediate), which is differentiable everywhere.
    """
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return sq.clamp_min(0.0)


def _check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    ok = all(isinstance(s, int | float | np.floating | np.integer) and not isinstance(s, bool) for s in sigmas)
    values = tuple(float(s) for s in sigmas) if ok else ()
    if not values or not all(np.isfinite(s) and s > 0 for s in values):
        raise InvalidParameterError(f"sigmas must be one or more positive numbers, got {tuple(sigmas)!r}")
    return values


def resolve_sigmas(kernel: str, sigmas: float | Sequence[float] | None) -> tuple[float, ...]:
    """The bandwidths ``kernel`` will use: ``sigmas`` checked, or the kernel's default; ``()`` for ``"lk"``.

    :raises InvalidParameterError: unknown kernel, a non-positive sigma, or several sigmas for ``"gk"``.
    """
    if kernel not in KERNELS:
        raise InvalidParameterError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if kernel == "lk":
        return ()
    if sigmas is None:
        return DEFAULT_SIGMAS[kernel]
    if isinstance(sigmas, bool) or not isinstance(sigmas, int | float | Sequence):
        raise InvalidParameterError(f"sigmas must be a positive number or a sequence of them, got {sigmas!r}")
    chosen = _check_sigmas((sigmas,) if isinstance(sigmas, int | float) else tuple(sigmas))
    if kernel == "gk" and len(chosen) != 1:
        raise InvalidParameterError(f"the Gaussian kernel takes one sigma, got {chosen!r}; use kernel='gmk'")
    return chosen


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, sigma: float, *, bandwidth: float | torch.Tensor = 1.0
                    ) -> torch.Tensor:
    """``exp(-||a_i - b_j||^2 / (2 sigma^2 bandwidth))`` as an (m, n) tensor."""
    return gaussian_mixture_kernel(a, b, (sigma,), bandwidth=bandwidth)


def gaussian_mixture_kernel(a: torch.Tensor, b: torch.Tensor, sigmas: Sequence[float], *,
                            bandwidth: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Sum over ``sigmas`` of Gaussian kernels, as an (m, n) tensor."""
    d2 = pairwise_sq_distances(_as_matrix(a, "a"), _as_matrix(b, "b"))
    return _gaussian_from_distances(d2, _check_sigmas(sigmas), bandwidth)


def linear_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a_i, b_j>`` as an (m, n) tensor."""
    return _as_matrix(a, "a") @ _as_matrix(b, "b").T


def _gaussian_from_distances(d2: torch.Tensor, sigmas: tuple[float, ...], bandwidth: float | torch.Tensor
                             ) -> torch.Tensor:
    """Sum of Gaussian kernels for (..., m, n) squared distances; ``bandwidth`` broadcasts over the leading axes
    (a tensor of shape (...,) or a number). All sigmas in one vectorised pass."""
    scales = 2.0 * torch.tensor(sigmas, dtype=d2.dtype, device=d2.device) ** 2  # (S,)
    h = torch.as_tensor(bandwidth, dtype=d2.dtype, device=d2.device)
    denominators = scales.view(-1, 1, 1) * h.reshape(h.shape + (1, 1, 1))  # (..., S, 1, 1)
    return torch.exp(-d2.unsqueeze(-3) / denominators).sum(-3)


def _kernel_matrices(zs: Sequence[torch.Tensor], kernel: str, sigmas: tuple[float, ...], scale_bandwidth: bool
                     ) -> torch.Tensor:
    """(L, N, N) kernel matrices of L pooled samples of N points each (dimensions may differ between them)."""
    grams = torch.stack([z @ z.T for z in zs])
    if kernel == "lk":
        return grams
    n = grams.shape[-1]
    norms = torch.diagonal(grams, dim1=-2, dim2=-1)
    d2 = (norms[..., :, None] + norms[..., None, :] - 2.0 * grams).clamp_min(0.0)
    d2 = d2.masked_fill(torch.eye(n, dtype=torch.bool, device=d2.device), 0.0)
    bandwidth: float | torch.Tensor = 1.0
    if scale_bandwidth:
        bandwidth = (d2.sum((-2, -1)) / max(n * (n - 1), 1)).clamp_min(1e-12)
    return _gaussian_from_distances(d2, sigmas, bandwidth)


def _estimate(k: torch.Tensor, m: int, unbiased: bool) -> torch.Tensor:
    """MMD^2 from (L, m + n, m + n) pooled kernel matrices whose first m points are the first sample; (L,)."""
    n = k.shape[-1] - m
    kxx, kyy, kxy = k[:, :m, :m], k[:, m:, m:], k[:, :m, m:]
    if unbiased:
        xx = (kxx.sum((-2, -1)) - torch.diagonal(kxx, dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))
        yy = (kyy.sum((-2, -1)) - torch.diagonal(kyy, dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    else:
        xx, yy = kxx.mean((-2, -1)), kyy.mean((-2, -1))
    return xx + yy - 2.0 * kxy.mean((-2, -1))


def mmd2_layers(
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    *,
    kernel: str = "gmk",
    sigmas: float | Sequence[float] | None = None,
    unbiased: bool = True,
    scale_bandwidth: bool = True,
) -> torch.Tensor:
    """Squared MMD of several pairs of samples at once, e.g. the same inputs' features at several layers.

    Every ``xs[i]`` must have the same number of points m and every ``ys[i]`` the same n; the feature
    dimension may differ from pair to pair. The work after the Gram matrices is done in one vectorised pass,
    which is what makes SDRM's multi-level penalty cheap. Parameters as :func:`mmd2`.

    :return: (L,) tensor, ``mmd2(xs[i], ys[i])`` at position i.
    """
    chosen = resolve_sigmas(kernel, sigmas)
    if len(xs) != len(ys) or len(xs) == 0:
        raise DataError(f"xs and ys must be non-empty and of equal length, got {len(xs)} and {len(ys)}")
    pooled = []
    m = n = -1
    for i, (x, y) in enumerate(zip(xs, ys)):
        a, b = _as_matrix(x, f"xs[{i}]"), _as_matrix(y, f"ys[{i}]")
        if a.shape[1] != b.shape[1]:
            raise DataError(f"x and y must have the same number of features, got {a.shape[1]} and {b.shape[1]}")
        if a.dtype != b.dtype:
            raise DataError(f"x and y must have the same dtype, got {a.dtype} and {b.dtype}")
        if i == 0:
            m, n = a.shape[0], b.shape[0]
        elif (a.shape[0], b.shape[0]) != (m, n):
            raise DataError(f"every pair must have {m} and {n} points, pair {i} has {a.shape[0]} and {b.shape[0]}")
        pooled.append(torch.cat([a, b], dim=0))
    return mmd2_pooled(pooled, m, kernel=kernel, sigmas=chosen, unbiased=unbiased, scale_bandwidth=scale_bandwidth)


def mmd2_pooled(
    pooled: Sequence[torch.Tensor],
    m: int,
    *,
    kernel: str = "gmk",
    sigmas: float | Sequence[float] | None = None,
    unbiased: bool = True,
    scale_bandwidth: bool = True,
) -> torch.Tensor:
    """:func:`mmd2_layers` for pooled samples: ``pooled[i]`` (m + n, ...) holds the first sample in its first m
    rows and the second in the rest (saves the concatenation when the caller gathers both with one index).

    :return: (L,) tensor.
    """
    chosen = resolve_sigmas(kernel, sigmas)
    if len(pooled) == 0:
        raise DataError("pooled must hold at least one sample")
    zs = [_as_matrix(z, f"pooled[{i}]") for i, z in enumerate(pooled)]
    total = zs[0].shape[0]
    if any(z.shape[0] != total for z in zs):
        raise DataError(f"every pooled sample must have the same number of points, got {[z.shape[0] for z in zs]}")
    needed = 2 if unbiased else 1
    if min(m, total - m) < needed:
        raise DataError(f"the {'unbiased' if unbiased else 'biased'} MMD^2 needs at least {needed} samples on "
                        f"each side, got {m} and {total - m}")
    return _estimate(_kernel_matrices(zs, kernel, chosen, scale_bandwidth), m, unbiased)


def mmd2(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kernel: str = "gmk",
    sigmas: float | Sequence[float] | None = None,
    unbiased: bool = True,
    scale_bandwidth: bool = True,
) -> torch.Tensor:
    """Squared MMD between the samples ``x`` (m, ...) and ``y`` (n, ...), differentiable.

    :param x: First sample; flattened to (m, D).
    :param y: Second sample; flattened to (n, D), same D and dtype.
    :param kernel: ``"gk"`` (Gaussian), ``"gmk"`` (Gaussian mixture) or ``"lk"`` (linear).
    :param sigmas: Bandwidth(s); ``None`` takes :data:`DEFAULT_SIGMAS` of the kernel. Ignored by ``"lk"``.
    :param unbiased: Eq. 3's unbiased U-statistic (needs m, n >= 2); ``False`` gives the biased V-statistic.
    :param scale_bandwidth: Multiply ``sigma^2`` by the mean pairwise squared distance of the pooled sample.
    :return: 0-d tensor.

    Example::

        import torch
        from art_backdoor_ext.functional.mmd import mmd2
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(100, 5, generator=g), torch.randn(100, 5, generator=g) + 1.0
        mmd2(a, b)                                   # about 0.5 (GMK2, scaled bandwidth)
        mmd2(a, torch.randn(100, 5, generator=g))    # about 0 (same distribution)
    """
    return mmd2_layers([x], [y], kernel=kernel, sigmas=sigmas, unbiased=unbiased, scale_bandwidth=scale_bandwidth)[0]


def mmd2_numpy(x: np.ndarray, y: np.ndarray, **kwargs: object) -> float:
    """:func:`mmd2` for numpy arrays, computed in float64; returns a Python float."""
    a = torch.as_tensor(np.asarray(x, dtype=np.float64))
    b = torch.as_tensor(np.asarray(y, dtype=np.float64))
    with torch.no_grad():
        return float(mmd2(a, b, **kwargs))  # type: ignore[arg-type]
