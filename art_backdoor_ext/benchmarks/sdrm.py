"""Benchmark ``sdrm``: what SDRM (Xia et al., 2022) does to MMD^2 and to difference-based detectors.

For every trigger (patch, blend, SIG, warp) one start model is trained three ways with
:class:`~art_backdoor_ext.attacks.SDRM`: regular backdoor training (RBT, ``lam=0``), SDRM-L (the last hidden
level constrained) and SDRM-A (all three levels), ``lam=0.3``, target 0, ``r = |U| / |D| = 0.1``. Then, on
test data, as the paper does (section 6):

- BA, ASR, and the time per epoch (the first, warm-up epoch left out);
- Table 2: MMD^2 (GMK2 kernel, bandwidth scaled by the mean pairwise distance, unbiased) at three levels between
  clean target-class and triggered inputs that the model classifies as the target, with the intra-class
  (two disjoint clean target-class sets) and the minimum inter-class baselines;
- Fig. 5-7: F1 of AC, SS and SR on sets of N inputs classified as the target, half clean and half triggered
  (r' = 1.0), shuffled, at each level; plus ART's ``ActivationDefence`` and ``SpectralSignatureDefense`` exactly
  as ART users call them (last layer, defaults; a few clean images of the other classes go along because ART
  crashes on empty classes, and are not scored);
- speed: seconds per epoch of the three modes, measured in alternation.

Two F1 scores per detector, because at r' = 1.0 a detector's own decision rule is ill-posed (nothing tells which
half is the poison, and the centred spectral score is symmetric between two equal clusters):

- ``f1_best`` (the separability the detector relies on; the paper's protocol for SR): the best F1 over all
  thresholds of SR's reconstruction loss, over all thresholds of SS's signed projection on the top singular
  vector (either side), and over AC's two KMeans clusters. Flagging everything scores 2/3, so about 0.67 is
  chance level;
- ``f1``: the detector's own decision: ART's AC/SS with their defaults, our SS and SR flagging the top half of
  their scores (``expected_poison_fraction=0.5``; SS with ``eps_multiplier=1``).

SR's subspace (90% energy) comes from clean target-class test images held out of every evaluated set (1% of the
test set, at least 10).

fast: digits split 50/50 (so that the target class has enough test images), DigitsCNN, N in {50, 100}.
full: Fashion-MNIST, the BadNets CNN, N in {100, 500}.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np

from art_backdoor_ext._seeding import numpy_global_seed
from art_backdoor_ext.benchmarks import BenchmarkReport, register_benchmark, seeded_victim_setup
from art_backdoor_ext.exceptions import DataError

logger = logging.getLogger(__name__)

PROFILES: dict[str, dict[str, Any]] = {
    "fast": {
        "dataset": "digits",
        "test_fraction": 0.5,
        "arch": "digits-cnn",
        "train": None,
        "attacks": ["badnets", "blend", "sig", "warp"],
        "levels": ["relu1", "relu2", "relu3"],
        "lam": 0.3,
        "nb_epochs": 200,
        "batch_size": 128,
        "learning_rate": 3e-3,
        "n_eval": [50, 100],
        "mmd_size": 40,
        "n_models": 1,
        "speed_rounds": 5,
        "speed_epochs": 4,
    },
    "full": {
        "dataset": "fashion-mnist",
        "arch": "badnets-cnn",
        "train": None,
        "attacks": ["badnets", "blend", "sig", "warp"],
        "levels": ["relu1", "relu2", "relu3"],
        "lam": 0.3,
        "nb_epochs": 20,
        "batch_size": 256,
        "learning_rate": 1e-3,
        "n_eval": [100, 500],
        "mmd_size": 500,
        "n_models": 1,
        "speed_rounds": 2,
        "speed_epochs": 3,
    },
}

TARGET = 0
POISON_RATIO = 0.1
MODES = ("RBT", "SDRM-L", "SDRM-A")


def _load(cfg: dict[str, Any]) -> Any:
    from art_backdoor_ext.datasets import load_dataset, load_digits

    if cfg["dataset"] == "digits":
        return load_digits(test_fraction=cfg["test_fraction"])
    return load_dataset(cfg["dataset"])


def _mode_settings(mode: str, cfg: dict[str, Any]) -> tuple[float, list[str]]:
    levels = cfg["levels"]
    return {"RBT": (0.0, levels), "SDRM-L": (cfg["lam"], levels[-1:]), "SDRM-A": (cfg["lam"], levels)}[mode]


def _pca_2d(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pooled = np.concatenate([a, b]).astype(np.float64)
    centred = pooled - pooled.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    points = centred @ vt[:2].T
    return points[: len(a)], points[len(a):]


class _Victim:
    """One trained model and the test sets the measurements use."""

    def __init__(self, classifier: Any, trigger: Any, data: Any, cfg: dict[str, Any], seed: int) -> None:
        from art_backdoor_ext._torch import predict_logits

        rng = np.random.default_rng(seed)
        x_test, y_test = data.x_test, data.y_test
        predicted = predict_logits(classifier, x_test).argmax(1)
        clean = rng.permutation(np.flatnonzero((y_test == TARGET) & (predicted == TARGET)))
        n_reference = max(10, int(round(0.01 * len(x_test))))
        self.reference = x_test[clean[:n_reference]]
        self.clean = x_test[clean[n_reference:]]
        source = x_test[y_test != TARGET]
        triggered = trigger(source).astype(np.float32)
        hit = predict_logits(classifier, triggered).argmax(1) == TARGET
        self.triggered = triggered[rng.permutation(np.flatnonzero(hit))]
        self.others = {int(j): x_test[(y_test == j) & (predicted == j)] for j in range(data.nb_classes) if j != TARGET}
        filler = np.concatenate([np.flatnonzero(y_test == j)[:5] for j in range(data.nb_classes) if j != TARGET])
        self.filler_x, self.filler_y = x_test[filler], y_test[filler]
        self.classifier, self.cfg, self.rng = classifier, cfg, rng

    def features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        from art_backdoor_ext._torch import extract_features

        return extract_features(self.classifier, x, self.cfg["levels"])

    def mmd_rows(self) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Table 2 rows per level, and the 2-D projections (clean A vs triggered) for the Fig. 4 plot."""
        from art_backdoor_ext.functional.mmd import mmd2_numpy

        m = min(self.cfg["mmd_size"], len(self.clean) // 2, len(self.triggered))
        clean_a, clean_b = self.features(self.clean[:m]), self.features(self.clean[m:2 * m])
        adversarial = self.features(self.triggered[:m])
        others = [self.features(x[:m]) for x in self.others.values() if len(x) >= 2]
        rows, projections = [], {}
        for level in self.cfg["levels"]:
            rows.append({
                "level": level,
                "set_size": m,
                "clean_vs_triggered": mmd2_numpy(clean_a[level], adversarial[level]),
                "intra_class": mmd2_numpy(clean_a[level], clean_b[level]),
                "min_inter_class": min((mmd2_numpy(clean_a[level], o[level]) for o in others), default=None),
            })
            projections[level] = _pca_2d(clean_a[level], adversarial[level])
        return rows, projections

    def detection_rows(self, n_eval: int) -> list[dict[str, Any]]:
        """F1 of every detector on N inputs classified as the target, half clean and half triggered, shuffled.

        ``f1``: the detector's own decision (ART's AC/SS with their defaults; our SS and SR flagging the top half
        of their scores). ``f1_best``: the best F1 over the detector's thresholds (SR: reconstruction loss; SS:
        the signed projection on the top singular vector, either side) or, for AC, over its two clusters.
        """
        from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

        from art_backdoor_ext.defences import (
            MultiLayerActivationDefence,
            MultiLayerSpectralSignature,
            SubspaceReconstruction,
        )
        from art_backdoor_ext.defences.activation._scoring import spectral_projection
        from art_backdoor_ext.functional.metrics import best_f1, f_beta

        half = n_eval // 2
        if half > len(self.clean) or half > len(self.triggered):
            raise DataError(f"N={n_eval} needs {half} clean and {half} triggered inputs classified as the target; "
                            f"there are {len(self.clean)} and {len(self.triggered)}")
        x = np.concatenate([self.clean[self.rng.choice(len(self.clean), half, replace=False)],
                            self.triggered[self.rng.choice(len(self.triggered), half, replace=False)]])
        order = self.rng.permutation(len(x))
        x, is_poison = x[order], np.repeat([False, True], half)[order]
        y = np.full(len(x), TARGET)
        levels, seed = self.cfg["levels"], int(self.rng.integers(2**31))
        rows = []

        def add(detector: str, level: str, flagged: Any = None, best: float | None = None) -> None:
            f1 = None if flagged is None else f_beta(np.asarray(flagged, dtype=bool), is_poison)
            rows.append({"detector": detector, "level": level, "f1": f1, "f1_best": best})

        # ART's AC/SS crash on a class with no sample: a few clean images of every other class go along (each
        # class is analysed on its own, so they do not change the target class's decisions) and are not scored.
        x_art = np.concatenate([x, self.filler_x])
        one_hot = np.eye(self.classifier.nb_classes, dtype=np.float32)[np.concatenate([y, self.filler_y])]
        with numpy_global_seed(seed):  # ART's k-means draws from NumPy's global state
            _, art_clean = ActivationDefence(self.classifier, x_art, one_hot).detect_poison(nb_clusters=2, nb_dims=10,
                                                                                             reduce="PCA")
        add("art-ac", "last (ART)", np.asarray(art_clean)[: len(x)] == 0)
        _, art_clean = SpectralSignatureDefense(self.classifier, x_art, one_hot).detect_poison()
        add("art-ss", "last (ART)", np.asarray(art_clean)[: len(x)] == 0)

        ac = MultiLayerActivationDefence(self.classifier, x, y, layers=levels, cluster_analysis="smaller",
                                         random_state=seed).detect_poison_by_layer()
        for level, result in ac.items():  # two clusters: the flagged one and the rest
            add("ac", level, best=max(f_beta(result.is_poison, is_poison), f_beta(~result.is_poison, is_poison)))
        ss = MultiLayerSpectralSignature(self.classifier, x, y, layers=levels, expected_poison_fraction=0.5,
                                         eps_multiplier=1.0).detect_poison_by_layer()
        features = self.features(x)
        for level, result in ss.items():
            projection = spectral_projection(features[level])
            add("ss", level, result.is_poison, max(best_f1(projection, is_poison)[0],
                                                  best_f1(-projection, is_poison)[0]))
        sr = SubspaceReconstruction(self.classifier, x, y, x_clean=self.reference,
                                    y_clean=np.full(len(self.reference), TARGET), layers=levels,
                                    expected_poison_fraction=0.5).detect_poison_by_layer()
        for level, result in sr.items():
            add("sr", level, result.is_poison, best_f1(result.scores, is_poison)[0])
        return rows


def _train(mode: str, attack: str, seed: int, data: Any, cfg: dict[str, Any], verbose: bool) -> tuple[Any, Any, Any]:
    from art_backdoor_ext.attacks import SDRM
    from art_backdoor_ext.evaluation import ATTACKS, _ensure_registered

    _ensure_registered()
    classifier, x, y = seeded_victim_setup(seed, data, cfg)
    trigger = ATTACKS[attack].build(data.input_shape, seed)
    lam, layers = _mode_settings(mode, cfg)
    sdrm = SDRM(classifier, perturbation=trigger, target=TARGET, poison_ratio=POISON_RATIO, layers=layers, lam=lam,
                nb_epochs=cfg["nb_epochs"], batch_size=cfg["batch_size"], learning_rate=cfg["learning_rate"],
                random_state=seed, verbose=verbose)
    return sdrm.poison_estimator(x, y), sdrm.last_training, trigger


def _speed(data: Any, cfg: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """Epoch times of the three modes measured in alternation (so that the machine's load hits them alike),
    first epoch of every run left out."""
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    short = {**cfg, "nb_epochs": cfg["speed_epochs"]}
    for _ in range(cfg["speed_rounds"]):
        for mode in MODES:
            times[mode] += _train(mode, cfg["attacks"][0], seed, data, short, False)[1].seconds_per_epoch[1:]
    base = float(np.median(times["RBT"]))
    return [{"mode": mode, "seconds_per_epoch": float(np.median(t)), "vs_RBT": float(np.median(t)) / base,
             "epochs_timed": len(t)} for mode, t in times.items()]


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


@register_benchmark("sdrm")
def bench_sdrm(*, profile: str, random_state: int, verbose: bool, models: int | None = None) -> BenchmarkReport:
    from art_backdoor_ext.training import evaluate_attack

    cfg = dict(PROFILES[profile])
    if models is not None:
        cfg["n_models"] = models
    data = _load(cfg)
    victims, mmd, detection = [], [], []
    projections: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for attack in cfg["attacks"]:
        for seed in range(random_state, random_state + cfg["n_models"]):
            for mode in MODES:
                classifier, log, trigger = _train(mode, attack, seed, data, cfg, verbose)
                ba, asr = evaluate_attack(classifier, data.x_test, data.y_test, trigger, target=TARGET)
                victim = _Victim(classifier, trigger, data, cfg, seed)
                key = {"attack": attack, "mode": mode, "seed": seed}
                victims.append({**key, "benign_accuracy": ba, "attack_success_rate": asr,
                                "seconds_per_epoch": _mean(log.seconds_per_epoch[1:] or log.seconds_per_epoch),
                                "train_mmd_last_epoch": log.mmd[-1] if log.mmd else None})
                rows, panels = victim.mmd_rows()
                mmd += [{**key, **row} for row in rows]
                if attack == cfg["attacks"][0] and seed == random_state:
                    projections[mode] = panels
                for n_eval in cfg["n_eval"]:
                    detection += [{**key, "n": n_eval, **row} for row in victim.detection_rows(n_eval)]
                logger.info("sdrm bench %s %s seed %d: BA %.3f ASR %.3f", attack, mode, seed, ba, asr)
    report = BenchmarkReport("sdrm", profile, _tables(victims, mmd, detection, cfg))
    report.tables["speed: seconds per epoch, interleaved runs, median"] = _speed(data, cfg, random_state)
    report.notes += [
        f"dataset {data.name} ({len(data.x_train)} train / {len(data.x_test)} test), {cfg['arch']}, "
        f"{cfg['nb_epochs']} epochs of Adam (lr {cfg['learning_rate']}, batch {cfg['batch_size']}), lam "
        f"{cfg['lam']}, target {TARGET}, r = |U|/|D| = {POISON_RATIO}; levels {', '.join(cfg['levels'])}; "
        f"{cfg['n_models']} model(s) per attack and mode",
        "best F1: over all thresholds of SR's loss and of SS's signed projection (either side), over AC's two "
        "clusters (flagging everything scores 0.667: chance level); own decisions: ART's AC/SS defaults, our SS and "
        "SR flag the top half of their scores",
        "paper anchor (CIFAR-10/CelebA, PreActResNet-18, lam 0.3): AC/SS/SR F1 0.90-1.00 under RBT fall to "
        "0.60-0.70 under SDRM-A at a cost of about 0.15 points of BA and 0.1 of ASR",
    ]
    try:
        from art_backdoor_ext.plotting import plot_feature_projections

        report.figures["features"] = plot_feature_projections(
            projections, title=f"{cfg['attacks'][0]} on {data.name}: clean target class vs triggered (2-D PCA)")
    except Exception as err:  # noqa: BLE001 - matplotlib is optional; the tables do not depend on it
        report.notes.append(f"feature plot not drawn: {err}")
    return report


def _tables(victims: list[dict[str, Any]], mmd: list[dict[str, Any]], detection: list[dict[str, Any]],
            cfg: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    def by_mode(rows: list[dict[str, Any]], keys: tuple[str, ...], value: str) -> list[dict[str, Any]]:
        groups: dict[tuple[Any, ...], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for row in rows:
            if row[value] is not None:
                groups[tuple(row[k] for k in keys)][row["mode"]].append(row[value])
        return [{**dict(zip(keys, group)), **{m: _mean(v[m]) if v[m] else None for m in MODES}}
                for group, v in groups.items()]

    largest = max(cfg["n_eval"])
    at_largest = [r for r in detection if r["n"] == largest]
    summary = []
    for mode in MODES:
        mine = [r for r in victims if r["mode"] == mode]

        def f1_of(detector: str, value: str, mode: str = mode) -> float:
            return _mean([r[value] for r in at_largest if r["mode"] == mode and r["detector"] == detector])

        summary.append({
            "mode": mode,
            "benign_accuracy": _mean([r["benign_accuracy"] for r in mine]),
            "attack_success_rate": _mean([r["attack_success_rate"] for r in mine]),
            "art-ac F1": f1_of("art-ac", "f1"),
            "art-ss F1": f1_of("art-ss", "f1"),
            **{f"{d} best F1": f1_of(d, "f1_best") for d in ("ac", "ss", "sr")},
        })
    return {
        f"summary: mean over attacks, N = {largest} (best F1: mean over the three levels)": summary,
        "victims": victims,
        "MMD^2 at three levels (Table 2), mean over attacks": by_mode(mmd, ("level",), "clean_vs_triggered")
        + [{**row, "level": f"{row['level']} intra-class"} for row in by_mode(mmd, ("level",), "intra_class")]
        + [{**row, "level": f"{row['level']} min inter-class"} for row in by_mode(mmd, ("level",), "min_inter_class")],
        "MMD^2 per attack (clean vs triggered)": by_mode(mmd, ("attack", "level"), "clean_vs_triggered"),
        "detection, best F1 over thresholds or clusters (Fig. 5-7), r' = 1.0, mean over attacks": by_mode(
            detection, ("n", "detector", "level"), "f1_best"),
        "detection, F1 of the detectors' own decisions, r' = 1.0, mean over attacks": by_mode(
            detection, ("n", "detector", "level"), "f1"),
        f"detection per attack, best F1, N = {largest}": by_mode(at_largest, ("attack", "detector", "level"),
                                                                  "f1_best"),
    }
