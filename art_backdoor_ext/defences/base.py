"""Base class for post-training model scanners and their shared result helpers.

ART has no interface for "is this trained model backdoored?" detectors, so this package adds one:
``ModelScanner.scan(x_clean, y_clean) -> report`` where the report is a dataclass with ``detected`` and
``to_dict()``. Scanners validate the classifier (ART ``PyTorchClassifier``), the clean set (channels-first
float32 in the classifier's range, integer labels, every class present with enough samples) and their
hyper-parameters from one constraint table.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from art_backdoor_ext._torch import classifier_device, scan_batch_images
from art_backdoor_ext._validation import (
    ParamsMixin,
    check_class_counts,
    check_images,
    check_labels,
    check_pytorch_classifier,
)
from art_backdoor_ext.exceptions import DataError, InvalidParameterError

__all__ = ["ModelScanner", "to_builtin", "variant_detectors"]


def variant_detectors(detector: Any, variants: Mapping[str, Mapping[str, Any]],
                      allowed: Sequence[str]) -> dict[str, Any]:
    """For ``scan_variants``: one detector of ``detector``'s class per variant, with its parameters overridden.

    :raises InvalidParameterError: no variant, an override outside ``allowed`` (it would change the optimisation)
        or an invalid value (checked by the new detector's constructor).
    """
    if not variants:
        raise InvalidParameterError("variants is empty: pass at least one name -> overrides (e.g. {'default': {}})")
    detectors = {}
    for name, overrides in variants.items():
        engine_params = sorted(set(overrides) - set(allowed))
        if engine_params:
            raise InvalidParameterError(
                f"variant {name!r} overrides {engine_params}, which change the optimisation; scan_variants may "
                f"only vary {list(allowed)}")
        detectors[name] = type(detector)(detector.classifier, **{**detector.get_params(), **overrides})
    return detectors


def to_builtin(value: Any) -> Any:
    """Convert numpy scalars/arrays (and NaN/inf) inside nested containers to JSON-safe Python values."""
    if isinstance(value, dict):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_builtin(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        f = float(value)
        return f if np.isfinite(f) else None
    return value


class ModelScanner(ParamsMixin, abc.ABC):
    """Post-training detector: decides from clean data whether ``classifier`` carries a backdoor.

    Subclasses implement :meth:`_scan` and list hyper-parameters in ``_parameter_constraints``.
    """

    min_samples_per_class = 2
    min_classes = 2
    #: Images per forward pass of the scan; None: the device's default
    #: (:func:`~art_backdoor_ext._torch.scan_batch_images`).
    batch_size: int | None = None

    def __init__(self, classifier: Any) -> None:
        check_pytorch_classifier(classifier, type(self))
        self.classifier = classifier

    @property
    def _batch_images(self) -> int:
        """Images per forward pass: ``batch_size``, or 512 on CPU and 4096 on a GPU when it is None."""
        return scan_batch_images(classifier_device(self.classifier), self.batch_size)

    def scan(self, x_clean: np.ndarray, y_clean: np.ndarray) -> Any:
        """Scan the classifier with a small clean labelled set.

        :param x_clean: Clean images (N, C, H, W), float32 in the classifier's ``clip_values``.
        :param y_clean: Integer labels (N,), every class present.
        :return: A report dataclass with ``detected`` and ``to_dict()``.
        """
        x, y = self._check_clean_set(x_clean, y_clean)
        return self._scan(x, y)

    def _check_clean_set(self, x_clean: np.ndarray, y_clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = int(self.classifier.nb_classes)
        if k < self.min_classes:
            raise DataError(f"{type(self).__name__} needs at least {self.min_classes} classes, the classifier has {k}")
        x = check_images(x_clean, name="x_clean", input_shape=self.classifier.input_shape,
                         clip_values=self.classifier.clip_values)
        y = check_labels(y_clean, n_samples=len(x), nb_classes=k, name="y_clean")
        check_class_counts(y, nb_classes=k, min_per_class=self.min_samples_per_class, name="y_clean")
        return x, y

    def _check_params(self) -> None:
        super()._check_params()
        if self.classifier.clip_values is None:
            raise InvalidParameterError(
                f"{type(self).__name__} needs a classifier with clip_values (the valid input range bounds the "
                "reverse-engineered perturbations), got clip_values=None"
            )

    @abc.abstractmethod
    def _scan(self, x: np.ndarray, y: np.ndarray) -> Any:
        """Run the scan on validated data."""

    @staticmethod
    def _json(report: Any) -> str:
        return json.dumps(report.to_dict())
