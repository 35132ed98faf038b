"""Normalisations of AD's class-pair perturbation sizes for the natural closeness of the classes (this project).

| Paper link: https://arxiv.org/abs/1908.10498 (the sizes come from AD's Algorithm 1; the normalisations are
  this project's, measured in docs/order-statistic.md)

On Fashion-MNIST some *source* classes are easy to move to any target (sneakers: mostly dark images) and some
pairs are naturally close (coat -> pullover), so a clean model's smallest pair is an outlier of AD's null as
often as a backdoor pair is. Dividing each size by the median size of its source's other pairs removes the
first effect; dividing further by the clean margin of the pair (how confidently the model separates the two classes
on clean data) or by the distance of the two classes' mean images (how close they are in the data, no model
involved) weakens the second.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from art_backdoor_ext._validation import check_class_counts, check_labels
from art_backdoor_ext.exceptions import DataError, InvalidParameterError

__all__ = ["NORMALISED_STATISTICS", "class_mean_distances", "clean_margins", "normalised_statistics",
           "smallest_size_source", "source_normalised_statistics"]

#: The size-like statistics :func:`normalised_statistics` computes.
NORMALISED_STATISTICS = ("source-normalised", "source-normalised-margin", "source-normalised-distance")


def normalised_statistics(sizes: ArrayLike, statistic: str, *, x: ArrayLike | None = None,
                          y: ArrayLike | None = None, outputs: ArrayLike | None = None) -> np.ndarray:
    """One of this project's normalised AD statistics, from a scan's sizes and its clean set.

    ``"source-normalised"``: :func:`source_normalised_statistics`; ``"source-normalised-margin"``: that over the
    square root of :func:`clean_margins` (needs ``outputs`` and ``y``); ``"source-normalised-distance"``: that
    over :func:`class_mean_distances` (needs ``x`` and ``y``). Sizes below 1e-12 are raised to it first.

    :return: K x K size-like statistic (small = suspicious), NaN diagonal.
    :raises InvalidParameterError: an unknown ``statistic`` or a missing input it needs.
    """
    if statistic not in NORMALISED_STATISTICS:
        raise InvalidParameterError(f"statistic must be one of {NORMALISED_STATISTICS}, got {statistic!r}")
    out = source_normalised_statistics(np.maximum(np.asarray(sizes, dtype=np.float64), 1e-12))
    if statistic == "source-normalised-margin":
        if outputs is None or y is None:
            raise InvalidParameterError("statistic='source-normalised-margin' needs the clean outputs and labels")
        out = out / np.sqrt(clean_margins(outputs, y))
    elif statistic == "source-normalised-distance":
        if x is None or y is None:
            raise InvalidParameterError("statistic='source-normalised-distance' needs the clean images and labels")
        out = out / class_mean_distances(x, y)
    return out


def source_normalised_statistics(sizes: ArrayLike) -> np.ndarray:
    """Divide each pair's size by the median size of the *other* pairs of its source:
    ``d_st / median_{u != s, t} d_su``.

    A backdoor shortens one pair (or, multi-source, one pair per source) and leaves the rest of its source's
    row alone; an easy source (one that every target reaches cheaply) has its whole row scaled down, which this
    divides out. The pair itself is left out of its normaliser: with it, one value per row would equal 1
    exactly and the row would be pulled towards its median, which makes an order-statistic null flag clean
    matrices (tests/unit/functional/test_pair_normalisation.py). The result is size-like (small = suspicious).

    :param sizes: K x K sizes (rows source, columns target), ``K >= 3``, diagonal ignored, off-diagonal finite
        and ``> 0``.
    :return: K x K float64 with a NaN diagonal.
    :raises DataError: not a square K >= 3 matrix, NaN/inf or non-positive off-diagonal sizes.

    >>> d = np.array([[np.nan, 1.0, 3.0, 5.0], [2.0, np.nan, 4.0, 4.0], [5.0, 5.0, np.nan, 5.0],
    ...               [1.0, 1.0, 1.0, np.nan]])
    >>> source_normalised_statistics(d)[0].tolist()
    [nan, 0.25, 1.0, 2.5]
    """
    arr = _sizes(sizes)
    k = len(arr)
    others = np.repeat(arr[:, None, :], k, axis=1)  # others[s, t] = row s
    others[np.arange(k)[:, None], np.arange(k)[None, :], np.arange(k)[None, :]] = np.nan  # drop u = t
    out = arr / np.nanmedian(others, axis=2)
    np.fill_diagonal(out, np.nan)
    return out


def clean_margins(outputs: ArrayLike, y: ArrayLike, *, quantile: float = 0.5, floor: float = 1e-3) -> np.ndarray:
    """Per class pair (s, t): the ``quantile`` over the clean samples of class s of ``z_s - z_t``.

    ``z`` are the classifier's outputs: logits as they are, or log-probabilities when the outputs are
    probabilities (non-negative rows summing to 1), so that the margin is a log-odds either way. A pair whose
    typical clean source sample is already close to (or across) the target boundary gets a small margin; values
    are floored at ``floor`` so that they can divide.

    :param outputs: (N, K) classifier outputs on the clean set.
    :param y: (N,) integer labels in ``[0, K)``; every class present.
    :param quantile: in [0, 1]; 0.5 (the median) by default.
    :param floor: smallest margin returned (> 0).
    :return: K x K float64, NaN diagonal.
    :raises DataError: shapes that do not match, one-hot or non-integer labels, labels out of range, a class
        without samples.

    >>> z = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0], [0.0, 0.5, 1.0]])
    >>> clean_margins(z, np.array([0, 1, 2]))[0].tolist()
    [nan, 2.0, 3.0]
    """
    z = np.asarray(outputs, dtype=np.float64)
    if z.ndim != 2:
        raise DataError(f"outputs must be (N, K) classifier outputs, got shape {z.shape}")
    k = z.shape[1]
    labels = check_labels(y, n_samples=len(z), nb_classes=k)
    check_class_counts(labels, nb_classes=k, min_per_class=1)
    if not 0.0 <= quantile <= 1.0 or floor <= 0:
        raise DataError(f"quantile must be in [0, 1] and floor > 0, got {quantile} and {floor}")
    if (z >= 0).all() and np.allclose(z.sum(axis=1), 1.0, atol=1e-4):
        z = np.log(np.maximum(z, 1e-30))
    out = np.full((k, k), np.nan)
    for s in range(k):
        zs = z[labels == s]
        out[s] = np.quantile(zs[:, [s]] - zs, quantile, axis=0)
    np.fill_diagonal(out, np.nan)
    return np.maximum(out, floor)


def class_mean_distances(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """L2 distance between the mean clean images of every two classes (a model-free closeness of the pair).

    :param x: (N, ...) clean samples (any layout; flattened).
    :param y: (N,) integer labels ``0..K-1``, every class present.
    :return: K x K float64, symmetric, NaN diagonal.
    :raises DataError: shapes that do not match, labels that are not 0..K-1 with every class present, two
        classes with identical means (a distance of 0 cannot divide).

    >>> class_mean_distances(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]), np.array([0, 1, 2]))[0].tolist()
    [nan, 5.0, 1.0]
    """
    arr = np.asarray(x, dtype=np.float64)
    flat = arr.reshape(len(arr), -1)
    labels = check_labels(y, n_samples=len(flat), nb_classes=int(np.max(y)) + 1 if len(flat) else 1)
    k = int(labels.max()) + 1
    check_class_counts(labels, nb_classes=k, min_per_class=1)
    means = np.stack([flat[labels == c].mean(axis=0) for c in range(k)])
    out = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=-1)
    np.fill_diagonal(out, np.nan)
    if (out[~np.eye(k, dtype=bool)] <= 0).any():
        raise DataError("two classes have identical mean images; their distance cannot normalise a size")
    return out


def smallest_size_source(sizes: ArrayLike, target: int) -> int:
    """The source whose common perturbation to ``target`` is smallest: ``argmin_s d(v_st)`` over ``s != target``.

    A normalised statistic decides *whether* a target is backdoored; naming the source from it can go wrong when a
    global trigger also moves classes that look like its source (the AD paper's "collateral damage", Fig. 7), and
    the normalisation favours such a class when it is hard to move elsewhere or far from the target in the data.
    Within the detected target's column the raw size compares like with like: the class that the least
    perturbation sends to the target.

    :param sizes: (K, K) sizes, row source and column target (the diagonal is ignored; 0 is a pair the model
        already confuses at ``pi`` without any perturbation).
    :param target: The detected target class.
    :raises DataError: not a K x K matrix with K >= 3, a target outside 0..K-1, or a size in the target's column
        that is not finite or negative.
    """
    arr = _square(sizes)
    if not 0 <= int(target) < len(arr):
        raise DataError(f"target must be a class index in 0..{len(arr) - 1}, got {target}")
    column = np.delete(arr[:, int(target)], int(target))
    if not np.isfinite(column).all() or (column < 0).any():
        raise DataError(f"the sizes into target {target} must be finite and >= 0, got {column.tolist()}")
    source = int(np.argmin(column))  # first smallest; indices past the target shift by one
    return source + int(source >= int(target))


def _square(sizes: ArrayLike) -> np.ndarray:
    """A float64 copy of ``sizes``, checked to be a K x K matrix with K >= 3."""
    arr = np.array(sizes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 3:
        raise DataError(f"sizes must be a square K x K matrix with K >= 3, got shape {arr.shape}")
    return arr


def _sizes(sizes: ArrayLike) -> np.ndarray:
    arr = _square(sizes)
    off = ~np.eye(len(arr), dtype=bool)
    if not np.isfinite(arr[off]).all() or (arr[off] <= 0).any():
        raise DataError("sizes must be finite and > 0 off the diagonal")
    np.fill_diagonal(arr, np.nan)
    return arr
