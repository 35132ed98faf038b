"""
STRIP: a sample-level backdoor detector from the entropy of predictions on superimposed inputs (Gao et al., 2019).

A triggered input keeps its (target) prediction when other images are superimposed on it, because the trigger
dominates; a clean input's prediction becomes random. :class:`STRIP` superimposes ``n_perturbations`` random clean
images from the defender's held-out set on each input, computes the Shannon entropy (base 2) of each copy's
predicted distribution and averages them (the paper's normalised entropy ``H = (1/N) sum_n H_n``); low entropy
means backdoored. The threshold is set on the clean entropy distribution at ``target_frr``.

What differs from ART's ``art.defences.transformer.poisoning.STRIP`` (ART 1.20.1), and why:

- ART computes ``scipy.stats.entropy(predictions, axis=0)``, the entropy of each class's scores *across the N
  copies*, and sums it over classes; STRIP's entropy is that of each copy's class distribution (``axis=1``),
  averaged over copies. This implementation uses the paper's axis.
- ART swaps the classifier's ``__class__`` for a mixin (the caller's object is changed); this detector only reads
  the classifier.
- ART passes the raw outputs to ``entropy``, which is undefined for logits (negative values); here outputs are
  turned into probabilities (softmax for logits; ``output="auto"`` detects which).
- ART draws from NumPy's global random state; here every draw comes from ``random_state``, and scoring the same
  input twice gives the same entropy (the draws are fixed at ``fit``).
- ART blends ``0.5 * x + 0.5 * x_clean``, which halves a patch trigger's contrast; the default here adds the two
  images and clips (the authors' released code), which keeps the trigger at full strength (``"average"`` offers
  ART's blend).
- The clean calibration inputs are superimposed only with *other* clean inputs (never with themselves).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from art.estimators.classification import PyTorchClassifier

from art_backdoor_ext._progress import progress
from art_backdoor_ext._validation import Instance, Interval, Options, seed_from
from art_backdoor_ext.defences.sample._calibrated import CalibratedDetector
from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.functional.detection import prediction_entropy

logger = logging.getLogger(__name__)

__all__ = ["STRIP"]


class STRIP(CalibratedDetector):
    """
    Implementation of STRIP (Gao, Xu, Wang, Chen, Ranasinghe and Nepal, 2019): inputs whose predictions stay
    confident when random clean images are superimposed on them are flagged as backdoored.

    | Paper link: https://arxiv.org/abs/1902.06531

    :param classifier: The (possibly backdoored) ART ``PyTorchClassifier``; inputs NCHW in its ``clip_values``. Its
        model may output logits or probabilities (see ``output``). It is never modified.
    :param n_perturbations: N, the number of clean images superimposed on each input (paper: 100; 20 is usually
        enough).
    :param superimposition: ``"add"``: ``x + x_clean`` clipped to ``clip_values`` (the authors' released code adds
        the two images, ``cv2.addWeighted(x, 1, x_clean, 1, 0)``); ``"average"``: ``alpha * x + (1 - alpha) *
        x_clean`` (the linear blend ART uses; it halves the trigger's contrast).
    :param alpha: Weight of the input in ``"average"`` superimposition.
    :param target_frr: False rejection rate the threshold is set for on the clean inputs given to :meth:`fit`
        (paper: 1%).
    :param threshold_method: ``"normal"`` (the paper: the ``target_frr`` quantile of a normal fit to the clean
        entropies), ``"quantile"`` (the empirical quantile) or ``"conformal"`` (the split-conformal rank: expected FRR
        on new clean inputs at most ``target_frr``, :func:`~art_backdoor_ext.functional.detection.threshold_at_frr`).
    :param output: What the model returns: ``"auto"``, ``"logits"`` or ``"probabilities"``.
    :param batch_size: Superimposed copies per forward pass.
    :param random_state: Seed or generator of the superimposed images' draws.
    :param verbose: Progress bars.

    Example::

        strip = STRIP(classifier, n_perturbations=100, target_frr=0.01, random_state=0)  # needs clip_values
        strip.fit(x_clean)                        # defender's held-out clean inputs, NCHW float32 in [0, 1]
        report, is_backdoor = strip.detect(x)     # is_backdoor[i] True: x[i] judged backdoored
        entropy = strip.score(x)                  # (N,), low = suspicious
    """

    higher_is_suspicious = False
    _parameter_constraints: dict[str, list[Any]] = {
        "n_perturbations": [Interval(int, 1, None)],
        "superimposition": [Options(("average", "add"))],
        "alpha": [Interval(float, 0, 1, closed="neither")],
        "target_frr": [Interval(float, 0, 1, closed="neither")],
        "threshold_method": [Options(("normal", "quantile", "conformal"))],
        "output": [Options(("auto", "logits", "probabilities"))],
        "batch_size": [Interval(int, 1, None)],
        "random_state": [Interval(int, 0, None), Instance(np.random.Generator), None],
        "verbose": [Instance(bool)],
    }
    defence_params = list(_parameter_constraints)

    def __init__(
        self,
        classifier: PyTorchClassifier,
        n_perturbations: int = 100,
        target_frr: float = 0.01,
        random_state: int | np.random.Generator | None = None,
        verbose: bool = False,
        *,
        superimposition: str = "add",
        alpha: float = 0.5,
        threshold_method: str = "normal",
        output: str = "auto",
        batch_size: int = 1024,
    ) -> None:
        super().__init__(classifier)
        self.n_perturbations = n_perturbations
        self.superimposition = superimposition
        self.alpha = alpha
        self.target_frr = target_frr
        self.threshold_method = threshold_method
        self.output = output
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        if self.superimposition == "add" and self.classifier.clip_values is None:
            raise InvalidParameterError("STRIP: superimposition='add' (the default) clips to the classifier's "
                                        "clip_values, but the classifier has clip_values=None; use "
                                        "superimposition='average'")

    # ------------------------------------------------------------------ steps
    def _prepare(self, x: np.ndarray) -> None:
        self._pool = np.array(x, dtype=np.float32, copy=True)
        self._seed = seed_from(self.random_state)

    def _draws(self, n: int, calibration: bool) -> np.ndarray:
        """Indices into the clean pool, (n, N); calibration input i never draws itself."""
        rng = np.random.default_rng([self._seed, int(calibration)])
        size = len(self._pool) - 1 if calibration else len(self._pool)
        idx = rng.integers(0, size, size=(n, self.n_perturbations))
        if calibration:
            idx += idx >= np.arange(n)[:, None]
        return idx

    def _superimpose(self, x: np.ndarray, overlays: np.ndarray) -> np.ndarray:
        if self.superimposition == "average":
            return (self.alpha * x + (1.0 - self.alpha) * overlays).astype(np.float32)
        low, high = self._clip  # type: ignore[misc]  # checked in _check_params
        return np.clip(x + overlays, low, high).astype(np.float32)

    def _score(self, x: np.ndarray, *, calibration: bool) -> np.ndarray:
        n_copies = self.n_perturbations
        idx = self._draws(len(x), calibration)
        per_chunk = max(1, self.batch_size // n_copies)
        entropies = np.empty(len(x), dtype=np.float64)
        starts = range(0, len(x), per_chunk)
        for start in progress(starts, verbose=self.verbose, desc="STRIP", total=len(starts)):
            stop = min(start + per_chunk, len(x))
            chunk = x[start:stop]
            overlays = self._pool[idx[start:stop].reshape(-1)]
            copies = self._superimpose(np.repeat(chunk, n_copies, axis=0), overlays)
            h = prediction_entropy(self._probabilities(copies))
            entropies[start:stop] = h.reshape(stop - start, n_copies).mean(axis=1)
        return entropies

    def _report_extra(self) -> dict[str, Any]:
        return {"score": "mean entropy (bits) of N superimposed copies; low = backdoored",
                "n_perturbations": self.n_perturbations, "superimposition": self.superimposition}
