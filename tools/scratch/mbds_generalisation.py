"""Where MBDS's black-box mode loses a trigger: on the shadow models that learnt it, or on the others.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python tools/scratch/mbds_generalisation.py PROFILE N_SHADOWS [N_NEW]``

Fits MBDS as ``bench mbds --profile PROFILE`` does (fit seed 1, the benchmark's reserve) with N_SHADOWS shadow
models, then reports AUROCs of the meta-classifier on the test split (clean against triggered non-target images;
no victim is involved: black-box scores depend on the input only):

- own: each shadow model's own setting, scored through that shadow model only (what the meta-classifier was
  trained on, on unseen images): the in-distribution quality; also restricted to the triggered images that
  shadow model sends to its target (the meta-classifier's positives pass that filter);
- others: the same settings, scored through the mean of the *other* shadow models (a trigger no extractor learnt:
  the black-box situation at test time);
- new Jumbo: N_NEW fresh settings (seeds 5000+), scored through the mean of all shadow models;
- the benchmark's BadNets patch and Blended noise (seed 110), through the mean of all shadow models.
"""
import sys

import numpy as np
import torch

from art_backdoor_ext.attacks.jumbo import JumboDistribution
from art_backdoor_ext.benchmarks import mbds as bench
from art_backdoor_ext.datasets import load_dataset, split_for_defence
from art_backdoor_ext.defences.sample._meta import meta_probabilities, module_features
from art_backdoor_ext.defences.sample.mbds import _normalise
from art_backdoor_ext.functional.metrics import roc_auc
from art_backdoor_ext.models import build_model, make_classifier


def main(profile: str, n_shadows: int, n_new: int) -> None:
    cfg = bench.PROFILES[profile]
    data = load_dataset(cfg["dataset"])
    split = split_for_defence(data.x_train, data.y_train, reserved_fraction=cfg["reserve"],
                              attacker_fraction=cfg["attacker"], random_state=0)
    x_test, y_test = data.x_test, data.y_test
    if cfg["test"] is not None:
        keep = np.random.default_rng(7).choice(len(x_test), cfg["test"], replace=False)
        x_test, y_test = x_test[keep], y_test[keep]
    det = bench._mbds(make_classifier(build_model(cfg["arch"], random_state=1)), cfg, n_shadows, 1)
    det.fit(split.x_reserved, split.y_reserved)
    print({k: v for k, v in det.fit_report_.items() if "mean" in k or k == "reserve_split"}, flush=True)
    settings = [d.setting for d in _shadow_datasets(det, split)]

    def per_shadow(x: np.ndarray, with_predictions: bool = False):  # (n_shadows, N) meta scores [, predictions]
        rows, predictions = [], []
        for i, model in enumerate(det._shadow):
            feats, pred = module_features(model, x, det._layer, batch_size=det.batch_size, device=torch.device("cpu"))
            rows.append(meta_probabilities(det._meta, _normalise(feats, det._shadow_mean[i], det._shadow_std[i]),
                                           batch_size=det.batch_size))
            predictions.append(pred)
        return (np.stack(rows), np.stack(predictions)) if with_predictions else np.stack(rows)

    clean = per_shadow(x_test)
    own, own_fired, others = [], [], []
    for i, s in enumerate(settings):
        xt = s.apply(x_test[y_test != s.target], channels_first=True)
        trig, pred = per_shadow(xt, with_predictions=True)
        own.append(_auc(clean[i], trig[i]))
        fired = pred[i] == s.target  # the shadow model's own backdoor fired on these
        if fired.any():
            own_fired.append(_auc(clean[i], trig[i][fired]))
        rest = np.arange(len(settings)) != i
        others.append(_auc(clean[rest].mean(0), trig[rest].mean(0)))
    print(f"own setting, own extractor: AUROC mean {np.mean(own):.3f} (min {np.min(own):.3f}, max {np.max(own):.3f})")
    print(f"own setting, own extractor, only the triggered images its backdoor sends to the target: AUROC mean "
          f"{np.mean(own_fired):.3f} (min {np.min(own_fired):.3f}, {len(own_fired)} settings)")
    print(f"own setting, other extractors' mean: AUROC mean {np.mean(others):.3f} (min {np.min(others):.3f}, "
          f"max {np.max(others):.3f})")
    clean_mean = clean.mean(0)
    new = []
    for seed in range(5000, 5000 + n_new):
        s = JumboDistribution().sample(data.input_shape, nb_classes=data.nb_classes, random_state=seed)
        new.append(_auc(clean_mean, per_shadow(s.apply(x_test[y_test != s.target], channels_first=True)).mean(0)))
    print(f"{n_new} new Jumbo settings, all extractors' mean: AUROC mean {np.mean(new):.3f} (min {np.min(new):.3f}, "
          f"max {np.max(new):.3f})")
    for attack, seed in (("BadNets", 100), ("Blended", 110)):
        trigger, target, _ = bench._trigger(attack, seed, data.input_shape, data.nb_classes)
        print(f"{attack}: AUROC {_auc(clean_mean, per_shadow(trigger(x_test[y_test != target])).mean(0)):.3f}")


def _shadow_datasets(det, split):
    """The fit's jumbo settings, drawn again exactly as MBDS.fit draws them."""
    from art_backdoor_ext.attacks.jumbo import JumboContamination

    seeds = det._seeds()
    idx_shadow, _, _ = det._split(split.y_reserved, seeds[0])
    jumbo = JumboContamination(distribution=det.distribution, nb_classes=int(det.classifier.nb_classes),
                               channels_first=True, clip_values=det._clip, random_state=seeds[1])
    return jumbo.generate_shadow_datasets(split.x_reserved[idx_shadow], split.y_reserved[idx_shadow],
                                          det.n_shadow_models)


def _auc(clean: np.ndarray, triggered: np.ndarray) -> float:
    return roc_auc(np.r_[clean, triggered], np.r_[np.zeros(len(clean), bool), np.ones(len(triggered), bool)])


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 20)
