"""Parameter-constraint checks and input checks with clear messages.

Hyper-parameters are validated from one constraint table per class (``_parameter_constraints``), used by
both ``__init__`` and ``set_params`` (the scikit-learn pattern). Input checks turn the mistakes users make
most often (NHWC data, float64, one-hot labels, values out of range, a missing class) into a
:class:`~art_backdoor_ext.exceptions.DataError` that says what was expected and what was received.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from art_backdoor_ext.exceptions import DataError, EstimatorError, InvalidParameterError

__all__ = [
    "Interval",
    "Options",
    "Instance",
    "validate_parameters",
    "ParamsMixin",
    "check_pytorch_classifier",
    "check_images",
    "check_labels",
    "check_class_counts",
    "seed_from",
]


# ---------------------------------------------------------------------------------------------- constraints
@dataclass(frozen=True)
class Interval:
    """A numeric range. ``kind`` is ``int``, ``float`` (accepts ints too) or ``numbers.Real``."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # "both", "left", "right", "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        number = float(value)
        if not np.isfinite(number):
            return False
        left_ok = self.low is None or (number >= self.low if self.closed in ("both", "left") else number > self.low)
        right_ok = self.high is None or (
            number <= self.high if self.closed in ("both", "right") else number < self.high
        )
        return bool(left_ok and right_ok)

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else repr(self.low)
        high = "inf" if self.high is None else repr(self.high)
        return f"{'an int' if self.kind is int else 'a number'} in {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return any(value == option and type(value) is type(option) for option in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Instance:
    """An instance of a type (or a callable when ``kind`` is ``callable``)."""

    kind: Any
    label: str | None = None

    def accepts(self, value: Any) -> bool:
        if self.kind is callable:
            return callable(value)
        return isinstance(value, self.kind)

    def describe(self) -> str:
        if self.label:
            return self.label
        if self.kind is callable:
            return "a callable"
        names = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        return "an instance of " + " or ".join(k.__name__ for k in names)


Constraint = Interval | Options | Instance | None  # None in a list means "None is allowed"


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_parameters(owner: str, params: Mapping[str, Any], constraints: Mapping[str, Sequence[Any]]) -> None:
    """Check every ``params[name]`` against ``constraints[name]`` (a list of alternatives).

    :raises InvalidParameterError: for an unknown name or a value no alternative accepts.
    """
    for name, value in params.items():
        if name not in constraints:
            valid = ", ".join(sorted(constraints))
            raise InvalidParameterError(f"{owner} got an unknown parameter {name!r}; valid parameters: {valid}")
        alternatives = constraints[name]
        if value is None and None in alternatives:
            continue
        if any(c is not None and c.accepts(value) for c in alternatives):
            continue
        expected = " or ".join(c.describe() if c is not None else "None" for c in alternatives)
        raise InvalidParameterError(f"{owner}: {name} must be {expected}, got {_describe(value)}")


class ParamsMixin:
    """Keyword-only hyper-parameters stored unmodified and validated from ``_parameter_constraints``.

    Subclasses list their hyper-parameters in ``_parameter_constraints``; ``get_params``/``set_params`` and
    ``__repr__`` are derived from it. ``set_params`` on an unknown name raises.
    """

    _parameter_constraints: dict[str, list[Any]] = {}

    def _validate_own_parameters(self) -> None:
        params = {name: getattr(self, name) for name in self._parameter_constraints}
        validate_parameters(type(self).__name__, params, self._parameter_constraints)

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._parameter_constraints}

    def set_params(self, **kwargs: Any) -> None:
        """Set validated hyper-parameters; when a value or a cross-parameter check is rejected, every parameter
        keeps its previous value."""
        validate_parameters(type(self).__name__, kwargs, self._parameter_constraints)
        previous = self.get_params()
        try:
            for name, value in kwargs.items():
                setattr(self, name, value)
            self._check_params()
        except Exception:
            for name, value in previous.items():
                setattr(self, name, value)
            raise

    def _check_params(self) -> None:
        self._validate_own_parameters()

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={_describe(v)}" for k, v in self.get_params().items() if k != "classifier")
        return f"{type(self).__name__}({inner})"


# ---------------------------------------------------------------------------------------------- estimators
def check_pytorch_classifier(estimator: Any, owner: type | str) -> None:
    """Raise ART's ``EstimatorError`` unless ``estimator`` is an ART ``PyTorchClassifier``."""
    from art.estimators.classification import PyTorchClassifier

    if not isinstance(estimator, PyTorchClassifier):
        owner_cls = owner if isinstance(owner, type) else type(owner, (), {})
        raise EstimatorError(owner_cls, [PyTorchClassifier], estimator)


# ---------------------------------------------------------------------------------------------- images
def check_images(
    x: Any,
    *,
    name: str = "x",
    input_shape: Sequence[int] | None = None,
    clip_values: tuple[float, float] | None = (0.0, 1.0),
    allow_float64: bool = False,
) -> np.ndarray:
    """Check a batch of channels-first images and return it as float32 (a new array when cast).

    :param x: Array of shape (N, C, H, W) (or ``(N,) + input_shape``).
    :param input_shape: The classifier's input shape (C, H, W) without the batch axis.
    :param clip_values: Valid value range; values outside raise.
    :param allow_float64: Cast float64 to float32 instead of raising.
    :raises DataError: wrong type, layout, dtype or range.
    """
    if not isinstance(x, np.ndarray):
        raise DataError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim < 2:
        raise DataError(f"{name} must have a batch axis first, got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{name} is empty (shape {x.shape})")
    if input_shape is not None:
        expected = tuple(int(s) for s in input_shape)
        got = tuple(x.shape[1:])
        if got != expected:
            if len(expected) == 3 and got == (expected[1], expected[2], expected[0]):
                raise DataError(
                    f"{name} has shape {x.shape} (channels-last, NHWC) but the classifier expects "
                    f"channels-first (N, {expected[0]}, {expected[1]}, {expected[2]}); "
                    f"use np.transpose({name}, (0, 3, 1, 2))"
                )
            raise DataError(
                f"{name} has shape {x.shape} but the classifier expects (N, {', '.join(map(str, expected))})"
            )
    if x.dtype == np.float64 and not allow_float64:
        raise DataError(
            f"{name} has dtype float64 but the classifier's model runs in float32; pass {name}.astype(np.float32)"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{name} must hold floating-point pixel values, got dtype {x.dtype}")
    out = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(out)):
        raise DataError(f"{name} contains NaN or infinite values")
    if clip_values is not None:
        low, high = float(clip_values[0]), float(clip_values[1])
        x_min, x_max = float(out.min()), float(out.max())
        tol = 1e-6 * max(1.0, abs(high - low))
        if x_min < low - tol or x_max > high + tol:
            hint = " (did you forget to divide by 255?)" if x_max > 1.5 and high <= 1.0 else ""
            raise DataError(
                f"{name} has values in [{x_min:.4g}, {x_max:.4g}] but the classifier's clip_values are "
                f"[{low:.4g}, {high:.4g}]{hint}"
            )
    return out


# ---------------------------------------------------------------------------------------------- labels
def check_labels(
    y: Any,
    *,
    n_samples: int,
    nb_classes: int,
    name: str = "y",
    allow_one_hot: bool = False,
) -> np.ndarray:
    """Return integer labels of shape (N,), checking length and range.

    :param allow_one_hot: Accept (N, K) one-hot labels (ART's convention for ``detect_poison``) and convert them.
    :raises DataError: one-hot labels where integers are expected, wrong length, labels out of range.
    """
    if not isinstance(y, np.ndarray):
        y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        if not allow_one_hot:
            raise DataError(
                f"{name} looks one-hot (shape {y.shape}) but integer class labels of shape ({y.shape[0]},) are "
                f"expected; pass np.argmax({name}, axis=1)"
            )
        if y.shape[1] != nb_classes:
            raise DataError(f"{name} is one-hot with {y.shape[1]} columns but the classifier has {nb_classes} classes")
        y = np.argmax(y, axis=1)
    elif y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{name} must be a vector of integer labels, got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise DataError(f"{name} has {y.shape[0]} labels but there are {n_samples} samples")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"{name} must hold integer class labels, got non-integer floats")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= nb_classes):
        raise DataError(
            f"{name} has labels in [{labels.min()}, {labels.max()}] but the classifier has {nb_classes} classes "
            f"(valid labels 0..{nb_classes - 1})"
        )
    return labels


def check_class_counts(
    y: np.ndarray, *, nb_classes: int, min_per_class: int, name: str = "y", classes: Iterable[int] | None = None
) -> np.ndarray:
    """Require at least ``min_per_class`` samples of every class; return the per-class counts."""
    counts = np.bincount(y, minlength=nb_classes)
    wanted = range(nb_classes) if classes is None else classes
    missing = [c for c in wanted if counts[c] == 0]
    if missing:
        raise DataError(
            f"{name} has no samples of class(es) {missing}; every one of the {nb_classes} classes is needed"
        )
    few = {c: int(counts[c]) for c in wanted if counts[c] < min_per_class}
    if few:
        raise DataError(f"{name} needs at least {min_per_class} samples per class but has too few for class(es) {few}")
    return counts


def check_callable(fn: Any, name: str) -> Callable[..., Any]:
    """Raise unless ``fn`` is callable."""
    if not callable(fn):
        raise InvalidParameterError(f"{name} must be callable, got {_describe(fn)}")
    return fn


def seed_from(random_state: int | np.random.Generator | None) -> int:
    """An integer seed from a ``random_state`` parameter: the int itself, a draw from the generator, or fresh
    entropy for ``None`` (never the global RNGs)."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> 1)
    return int(random_state)
