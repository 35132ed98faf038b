"""
Feature squeezing as a detector (Xu, Evans and Qi, 2018): an input whose prediction moves when its features are
squeezed is flagged.

ART has feature squeezing only as preprocessors (``FeatureSqueezing``: bit-depth reduction;
``SpatialSmoothing``: median filter) that change what the classifier sees. :class:`FeatureSqueezingDetector`
reuses those two squeezers and implements the paper's detector: the L1 distance between the classifier's
probability vector on the input and on each squeezed version, the maximum over squeezers as the joint score
(Section 5.1, "joint detection"), and a threshold on clean inputs at ``target_frr`` (the paper picks it at a 5%
false positive rate on legitimate examples).

The paper's third squeezer, non-local means smoothing, is not in ART and not offered here.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from art.defences.preprocessor import FeatureSqueezing, SpatialSmoothing
from art.estimators.classification import PyTorchClassifier

from art_backdoor_ext._validation import Instance, Interval, Options
from art_backdoor_ext.defences.sample._calibrated import CalibratedDetector
from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.functional.detection import l1_distance

logger = logging.getLogger(__name__)

__all__ = ["FeatureSqueezingDetector"]

_MAX_BIT_DEPTH = 16


class FeatureSqueezingDetector(CalibratedDetector):
    """
    Implementation of feature-squeezing detection (Xu, Evans and Qi, 2018): the largest L1 distance between the
    prediction on an input and on its squeezed versions (bit-depth reduction, median smoothing) is compared with a
    threshold set on clean inputs.

    | Paper link: https://arxiv.org/abs/1704.01155

    :param classifier: The ART ``PyTorchClassifier``; inputs NCHW in its ``clip_values`` (needed by bit-depth
        reduction). Its model may output logits or probabilities (see ``output``). It is never modified.
    :param bit_depths: Bit depths of ART's ``FeatureSqueezing`` squeezers, one squeezer each (paper: 1 for MNIST,
        5 for CIFAR-10 and ImageNet).
    :param median_sizes: Window sizes of ART's ``SpatialSmoothing`` median squeezers, one squeezer each (paper:
        2x2 for MNIST and CIFAR-10, 2x2 and 3x3 for ImageNet).
    :param target_frr: False rejection rate the threshold is set for on the clean inputs given to :meth:`fit`
        (paper: 5%).
    :param threshold_method: ``"quantile"`` (the empirical quantile, as in the paper), ``"normal"`` or
        ``"conformal"`` (the split-conformal rank: expected FRR on new clean inputs at most ``target_frr``).
    :param output: What the model returns: ``"auto"``, ``"logits"`` or ``"probabilities"``.
    :param batch_size: Forward-pass batch size.
    :param verbose: Unused (the detector is a few forward passes); kept for a uniform interface.

    Example::

        fs = FeatureSqueezingDetector(classifier, bit_depths=(1,), median_sizes=(2,))
        fs.fit(x_clean)                           # defender's held-out clean inputs, NCHW float32 in [0, 1]
        report, is_backdoor = fs.detect(x)        # is_backdoor[i] True: x[i] judged backdoored
        fs.distances(x)                           # {"bit-depth-1": (N,), "median-2x2": (N,)}
    """

    higher_is_suspicious = True
    _parameter_constraints: dict[str, list[Any]] = {
        "bit_depths": [Instance((tuple, list), "a tuple of ints")],
        "median_sizes": [Instance((tuple, list), "a tuple of ints")],
        "target_frr": [Interval(float, 0, 1, closed="neither")],
        "threshold_method": [Options(("quantile", "normal", "conformal"))],
        "output": [Options(("auto", "logits", "probabilities"))],
        "batch_size": [Interval(int, 1, None)],
        "verbose": [Instance(bool)],
    }
    defence_params = list(_parameter_constraints)

    def __init__(
        self,
        classifier: PyTorchClassifier,
        bit_depths: tuple[int, ...] | list[int] = (1,),
        median_sizes: tuple[int, ...] | list[int] = (2,),
        target_frr: float = 0.05,
        verbose: bool = False,
        *,
        threshold_method: str = "quantile",
        output: str = "auto",
        batch_size: int = 256,
    ) -> None:
        super().__init__(classifier)
        self.bit_depths = bit_depths
        self.median_sizes = median_sizes
        self.target_frr = target_frr
        self.threshold_method = threshold_method
        self.output = output
        self.batch_size = batch_size
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        checks = (("bit_depths", Interval(int, 1, _MAX_BIT_DEPTH)), ("median_sizes", Interval(int, 2, None)))
        for name, rule in checks:
            bad = [v for v in getattr(self, name) if not rule.accepts(v)]
            if bad:
                raise InvalidParameterError(f"FeatureSqueezingDetector: every entry of {name} must be "
                                            f"{rule.describe()}, got {bad}")
        if not self.bit_depths and not self.median_sizes:
            raise InvalidParameterError("FeatureSqueezingDetector needs at least one squeezer: bit_depths and "
                                        "median_sizes are both empty")
        if self.bit_depths and self.classifier.clip_values is None:
            raise InvalidParameterError("FeatureSqueezingDetector: bit-depth reduction needs the classifier's "
                                        "clip_values (the value range to quantise), got clip_values=None")

    # ------------------------------------------------------------------ public API
    def distances(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """
        L1 distance between the prediction on each input and on each squeezed version.

        :param x: Inputs NCHW float32 in the classifier's ``clip_values``.
        :return: Squeezer name -> float64 ``(N,)``, in the order bit depths, then median sizes.
        """
        return self._distances(self._check_x(x))

    # ------------------------------------------------------------------ steps
    def _squeezers(self) -> dict[str, Any]:
        clip = self._clip
        squeezers: dict[str, Any] = {}  # name -> ART Preprocessor (x -> (x_squeezed, None))
        for bits in self.bit_depths:
            squeezers[f"bit-depth-{bits}"] = FeatureSqueezing(clip_values=clip, bit_depth=int(bits))
        for size in self.median_sizes:
            squeezers[f"median-{size}x{size}"] = SpatialSmoothing(window_size=int(size), channels_first=True,
                                                                  clip_values=clip)
        return squeezers

    def _distances(self, x: np.ndarray) -> dict[str, np.ndarray]:
        reference = self._probabilities(x)
        out = {}
        for name, squeeze in self._squeezers().items():
            squeezed, _ = squeeze(x)
            out[name] = l1_distance(reference, self._probabilities(np.asarray(squeezed, dtype=np.float32)))
        return out

    def _prepare(self, x: np.ndarray) -> None:
        """Nothing to store: the squeezers are fixed functions."""

    def _score(self, x: np.ndarray, *, calibration: bool) -> np.ndarray:
        return np.max(np.stack(list(self._distances(x).values())), axis=0)

    def _report_extra(self) -> dict[str, Any]:
        return {"score": "max over squeezers of the L1 distance between predictions; high = backdoored",
                "squeezers": list(self._squeezers())}
