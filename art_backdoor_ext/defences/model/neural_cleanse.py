"""Implementation of Neural Cleanse for PyTorch classifiers (Wang et al., 2019).

| Paper link: https://people.cs.uchicago.edu/~ravenben/publications/pdf/backdoor-sp19.pdf
  (IEEE S&P 2019, "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks")

ART's own ``NeuralCleanse`` only accepts Keras classifiers. This scanner reverse-engineers, for every class t,
the smallest mask-and-pattern trigger ``x' = (1 - m) x + m p`` that sends a fraction ``pi`` of the clean
samples of all *other* classes to t (Section IV-B: cross-entropy to t plus an adaptively weighted L1 norm of
the mask, Adam; the smallest mask reaching ``pi`` is kept). All K targets are optimised together by the
batched engine of :mod:`~art_backdoor_ext.defences.model.perturbation` (one problem per target, the other
classes pooled). An all-to-one backdoor makes the mask of its target class unusually small: the model is
flagged when the low-side MAD anomaly index of the smallest L1 norm exceeds ``anomaly_threshold`` (2 in the
paper, i.e. a > 95 % chance of being an outlier under a normal model).

Targets whose optimisation never reached ``pi`` are excluded from the median and MAD (their norm is not
the size of a working trigger, and, as Xiang et al. (AD, 2020) note, such values skew the median); they
are still reported, with ``reached`` False and a NaN (JSON ``null``) anomaly index.

Differences from the paper's implementation, all deliberate: the whole clean set is one batch per
iteration (no mini-batches), ``patience`` and ``early_stop_patience`` count iterations rather than epochs (a
target stops after ``early_stop_patience`` iterations without a smaller successful mask, once its cost has
gone up and down; ``None`` runs every target ``max_iter`` iterations), and every target starts from the same
random mask and pattern (drawn from ``random_state``), so that the norms differ only because of the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from art_backdoor_ext._validation import Instance, Interval
from art_backdoor_ext.defences.base import ModelScanner, to_builtin
from art_backdoor_ext.defences.model.perturbation import MaskPattern, PerturbationEngine, Problems, target_problems
from art_backdoor_ext.functional.robust import mad_anomaly_index

__all__ = ["PyTorchNeuralCleanse", "NeuralCleanseReport"]

logger = logging.getLogger(__name__)


@dataclass
class NeuralCleanseReport:
    """Result of :meth:`PyTorchNeuralCleanse.scan` (same layout as AD's report, K = number of classes).

    :ivar detected: True when the target's low-side anomaly index exceeds ``anomaly_threshold``.
    :ivar p_value: Always None (Neural Cleanse has no p-value; kept for a uniform result table).
    :ivar source: Always None (Neural Cleanse pools all other classes: it does not infer a source).
    :ivar target: The class with the largest low-side anomaly index (the putative backdoor target); None when
        no target reached ``pi``.
    :ivar flagged: Every class whose anomaly index exceeds the threshold, most anomalous first (the paper
        flags all of them as infected).
    :ivar statistics: (K,) L1 norms of the reverse-engineered masks (the smallest reaching ``pi``; the final
        mask for targets that never reached it).
    :ivar anomaly_index: (K,) low-side MAD anomaly indices over the targets that reached ``pi``; NaN for the
        others. ``inf`` when the MAD of those norms is 0 (both become ``null`` in :meth:`to_dict`).
    :ivar reached: (K,) whether the optimisation for each target reached ``pi``.
    :ivar misclassification: (K,) fraction of the pooled samples sent to each target by its kept mask.
    :ivar estimated_pattern: (1 + C, H, W) for ``target``: channel 0 the mask in [0, 1], channels 1.. the
        pattern in ``clip_values``; None when ``target`` is None.
    """

    detected: bool
    p_value: float | None
    source: int | None
    target: int | None
    flagged: list[int]
    statistics: np.ndarray
    anomaly_index: np.ndarray
    reached: np.ndarray
    misclassification: np.ndarray
    estimated_pattern: np.ndarray | None
    anomaly_threshold: float
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return to_builtin({
            "detected": self.detected, "p_value": self.p_value, "source": self.source, "target": self.target,
            "flagged": self.flagged, "statistics": self.statistics, "anomaly_index": self.anomaly_index,
            "reached": self.reached, "misclassification": self.misclassification,
            "estimated_pattern": self.estimated_pattern, "anomaly_threshold": self.anomaly_threshold,
            "seconds": self.seconds, "settings": self.settings,
        })


class PyTorchNeuralCleanse(ModelScanner):
    """
    Implementation of Neural Cleanse (Wang et al., 2019) for ART ``PyTorchClassifier``.

    | Paper link: https://people.cs.uchicago.edu/~ravenben/publications/pdf/backdoor-sp19.pdf

    :param classifier: ART ``PyTorchClassifier`` with ``clip_values`` (used as it is, preprocessing applied).
    :param target_misclassification: pi, the fraction of the other classes' samples a mask must send to its
        target to count as a trigger (Wang et al. use 0.99; the AD paper's comparison uses 0.8).
    :param init_cost: Initial weight of the L1 mask penalty (adapted per target during the optimisation).
    :param learning_rate: Adam learning rate on the (sigmoid-parametrised) mask and pattern.
    :param patience: Iterations at (below) ``pi`` before the penalty weight is raised (lowered).
    :param max_iter: Iteration cap per target.
    :param early_stop_patience: A target whose penalty weight has been raised and lowered at least once stops
        after this many iterations without shrinking its successful mask's L1 norm by more than
        ``early_stop_tolerance`` (relative); None: every target runs ``max_iter`` iterations. The scan ends when
        every target has stopped (Wang et al.'s code stops early too).
    :param early_stop_tolerance: Relative L1 decrease that counts as an improvement.
    :param anomaly_threshold: Detected when the target's low-side MAD anomaly index exceeds it (2 in the paper).
    :param max_samples_per_target: Subsample each target's pooled clean samples to at most this many (None:
        all samples of the other classes).
    :param batch_size: Images per forward pass (targets are chunked to respect it); None (default): 512 on CPU,
        4096 on a GPU (on CPU, convolutions cost more per image beyond a few hundred images).
    :param random_state: Seeds the mask/pattern initialisation and the subsampling (None: fresh each scan).
    :param verbose: Progress bars.

    Example::

        nc = PyTorchNeuralCleanse(classifier, random_state=0)
        report = nc.scan(x_clean, y_clean)   # (N, C, H, W) float32 in clip_values, e.g. 10-30 per class
        report.detected, report.target, report.anomaly_index
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "target_misclassification": [Interval(float, 0, 1, closed="right")],
        "init_cost": [Interval(float, 0, None, closed="neither")],
        "learning_rate": [Interval(float, 0, None, closed="neither")],
        "patience": [Interval(int, 1, None)],
        "max_iter": [Interval(int, 1, None)],
        "early_stop_patience": [Interval(int, 1, None), None],
        "early_stop_tolerance": [Interval(float, 0, 1, closed="left")],
        "anomaly_threshold": [Interval(float, 0, None, closed="neither")],
        "max_samples_per_target": [Interval(int, 1, None), None],
        "batch_size": [Interval(int, 1, None), None],
        "random_state": [Interval(int, 0, None), None],
        "verbose": [Instance(bool)],
    }
    min_classes = 3

    def __init__(self, classifier: Any, *, target_misclassification: float = 0.8, init_cost: float = 1e-3,
                 learning_rate: float = 0.1, patience: int = 5, max_iter: int = 500,
                 early_stop_patience: int | None = 50, early_stop_tolerance: float = 0.01,
                 anomaly_threshold: float = 2.0, max_samples_per_target: int | None = None,
                 batch_size: int | None = None, random_state: int | None = None, verbose: bool = False) -> None:
        super().__init__(classifier)
        self.target_misclassification = target_misclassification
        self.init_cost = init_cost
        self.learning_rate = learning_rate
        self.patience = patience
        self.max_iter = max_iter
        self.early_stop_patience = early_stop_patience
        self.early_stop_tolerance = early_stop_tolerance
        self.anomaly_threshold = anomaly_threshold
        self.max_samples_per_target = max_samples_per_target
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose
        self._check_params()

    # ------------------------------------------------------------------------------------------------
    def _seeds(self) -> tuple[int, int]:
        """(subsampling seed, mask/pattern initialisation seed), both derived from ``random_state``."""
        sub, init = np.random.SeedSequence(self.random_state).spawn(2)
        return int(sub.generate_state(1)[0]), int(init.generate_state(1)[0])

    def engine(self, *, seed: int | None = None) -> PerturbationEngine:
        """The configured batched engine with a fresh :class:`MaskPattern` (public so benchmarks and tests can
        run it one target at a time). ``seed``: initialisation seed; by default the one :meth:`scan` uses."""
        init_seed = self._seeds()[1] if seed is None else seed
        low, high = (float(v) for v in self.classifier.clip_values)
        parametrisation = MaskPattern(self.learning_rate, self.init_cost, self.patience, random_state=init_seed,
                                      value_range=(low, high), early_stop_patience=self.early_stop_patience,
                                      early_stop_tolerance=self.early_stop_tolerance)
        return PerturbationEngine(
            self.classifier, parametrisation, target_misclassification=self.target_misclassification,
            max_iter=self.max_iter,
            max_batch_images=self._batch_images,
            verbose=self.verbose)

    def problems(self, y: np.ndarray, *, seed: int | None = None) -> Problems:
        """One problem per target with the samples of every other class pooled (subsampled to
        ``max_samples_per_target``). ``seed``: subsampling seed; by default the one :meth:`scan` uses."""
        sub_seed = self._seeds()[0] if seed is None else seed
        return target_problems(y, int(self.classifier.nb_classes), max_samples=self.max_samples_per_target,
                               random_state=sub_seed)

    def _scan(self, x: np.ndarray, y: np.ndarray) -> NeuralCleanseReport:
        start = time.perf_counter()
        k = int(self.classifier.nb_classes)
        sub_seed, init_seed = self._seeds()
        problems = self.problems(y, seed=sub_seed)
        result = self.engine(seed=init_seed).run(x, y, problems)
        norms = np.asarray(result.size_l1, dtype=float)
        reached = np.asarray(result.reached, dtype=bool)
        anomaly = np.full(k, np.nan)
        if reached.sum() < 3:
            logger.warning("Neural Cleanse: only %d of %d targets reached pi=%.3g; the MAD is unreliable (raise "
                           "max_iter or lower target_misclassification)", int(reached.sum()), k,
                           self.target_misclassification)
        if reached.any():
            anomaly[reached] = mad_anomaly_index(norms[reached], side="low")
            target: int | None = int(np.nanargmax(anomaly))
        else:
            target = None
        order = np.argsort(-np.where(np.isnan(anomaly), -np.inf, anomaly), kind="stable")
        flagged = [int(t) for t in order if anomaly[t] > self.anomaly_threshold]
        report = NeuralCleanseReport(
            detected=bool(target is not None and anomaly[target] > self.anomaly_threshold), p_value=None,
            source=None, target=target, flagged=flagged, statistics=norms, anomaly_index=anomaly,
            reached=reached, misclassification=np.asarray(result.misclassification, dtype=float),
            estimated_pattern=None if target is None else np.asarray(result.perturbations[target]),
            anomaly_threshold=float(self.anomaly_threshold), seconds=time.perf_counter() - start,
            settings={k_: v for k_, v in self.get_params().items() if k_ != "verbose"})
        logger.info("Neural Cleanse: target %s, anomaly index %.3g (detected=%s) in %.1fs", report.target,
                    anomaly[target] if target is not None else float("nan"), report.detected, report.seconds)
        return report
