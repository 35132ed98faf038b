"""White-box MBDS with feature maps taken relative to the predicted class: does it generalise across triggers?

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python tools/scratch/mbds_class_residuals.py PROFILE SEED [VICTIMS [LAYER]]``

For each attack of ``bench mbds`` (BadNets, Blended, Jumbo) and VICTIMS victims (seeds SEED + 100 + 10 i + v, as
``bench mbds --seed SEED`` draws them, redraws included), fits the victim-initialised white-box MBDS exactly as
the benchmark does and scores the victim's test inputs several ways (F2, AUROC and realised FRR each):

- ``extractor``: the library's MBDS (feature map standardised per channel with the extractor's clean statistics);
- ``class``: the same shadow models, but every feature map (meta-training and test) is taken relative to the clean
  mean map of the class its extractor *predicts* (per element), divided by the within-class per-channel spread,
  and a new meta-classifier is trained on these residuals (same filters, balance and epochs);
- ``class energy``, ``class r+energy``: the same meta-classifier on the squared residuals, and on both stacked;
  ``..., all clean``: misclassified clean samples kept as negatives (the paper's filter 1 drops them);
- ``residual norm``: no meta-classifier: the mean squared class residual of the victim's map at the MBDS layer (a
  diagonal Mahalanobis distance to the predicted class), and ``residual norm relu3`` the same at the penultimate
  layer ``relu3`` (both reference CNNs name it so);
- ``union class + relu3 norm``: flagged by either ``class`` or ``residual norm relu3``, each at FRR 0.025.

Thresholds: split-conformal rank on the same calibration part, target FRR 0.05. Prints F2 and AUROC per victim.
"""
import copy
import sys
import time

import numpy as np
import torch

from art_backdoor_ext._torch import preprocess
from art_backdoor_ext.attacks.jumbo import JumboContamination
from art_backdoor_ext.benchmarks import mbds as bench
from art_backdoor_ext.defences.sample import MBDS
from art_backdoor_ext.defences.sample._meta import module_features, train_meta_classifier
from art_backdoor_ext.defences.sample.mbds import _balance, _threshold
from art_backdoor_ext.functional.metrics import f_beta, roc_auc

EPS = 1e-6


def class_stats(f: torch.Tensor, labels: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean map (K, C, H, W) and the within-class per-channel std (C,)."""
    f = f.double()
    overall = f.mean(0)
    means = torch.stack([f[torch.as_tensor(labels == c)].mean(0) if (labels == c).any() else overall
                         for c in range(k)])
    resid = f - means[torch.as_tensor(labels)]
    std = resid.transpose(0, 1).reshape(f.shape[1], -1).std(1, unbiased=False)
    return means.float(), std.float()


def relative(f: torch.Tensor, pred: np.ndarray, means: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (f - means[torch.as_tensor(pred)]) / (std[None, :, None, None] + EPS)


TRANSFORMS = {
    "class": lambda r: r,
    "class energy": lambda r: r.pow(2),
    "class r+energy": lambda r: torch.cat([r, r.pow(2)], 1),
    "class r+energy, all clean": lambda r: torch.cat([r, r.pow(2)], 1),
}


def one_victim(attack: str, seed: int, ctx: dict) -> dict:
    """Fit the victim-initialised MBDS for one victim and score it every way (see the module doc)."""
    cfg, data, k, layer, seed0 = ctx["cfg"], ctx["data"], ctx["k"], ctx["layer"], ctx["seed0"]
    x_att, y_att, x_test, y_test, xr, yr = (ctx[n] for n in ("x_att", "y_att", "x_test", "y_test", "xr", "yr"))
    cpu = torch.device("cpu")
    start = time.perf_counter()
    clf, trigger, target, vrow = bench._victim(attack, seed, cfg, data, x_att, y_att, x_test, y_test)
    template = copy.deepcopy(clf.model).cpu()
    det = MBDS(clf, model_factory=lambda _i: copy.deepcopy(template),
               n_shadow_models=cfg["victim_init_shadows"], shadow_epochs=cfg["shadow_epochs"],
               shadow_learning_rate=cfg["shadow_lr"], meta_epochs=cfg["meta_epochs"],
               random_state=seed0 + 1, feature_layer=layer)
    det.fit(xr, yr)
    seeds = det._seeds()
    idx_shadow, idx_meta, idx_cal = det._split(yr, seeds[0])
    jumbo = JumboContamination(distribution=det.distribution, nb_classes=k, channels_first=True,
                               clip_values=det._clip, random_state=seeds[1])
    settings = [d.setting for d in jumbo.generate_shadow_datasets(xr[idx_shadow], yr[idx_shadow],
                                                                   det.n_shadow_models)]
    xm, ym = xr[idx_meta], yr[idx_meta]
    feats, labels, correct = [], [], []
    for model, setting in zip(det._shadow, settings):
        tgt = int(setting.target)
        f_clean, p_clean = module_features(model, xm, det._layer, batch_size=256, device=cpu)
        ok = p_clean == ym
        means, std = class_stats(f_clean[torch.as_tensor(ok)], ym[ok], k)
        xp = setting.apply(xm[ym != tgt], channels_first=True)
        f_p, p_p = module_features(model, xp, det._layer, batch_size=256, device=cpu)
        fired = p_p == tgt
        feats += [relative(f_clean, p_clean, means, std),
                  relative(f_p[torch.as_tensor(fired)], p_p[fired], means, std)]
        labels += [np.zeros(len(ok)), np.ones(int(fired.sum()))]
        correct += [ok, np.ones(int(fired.sum()), bool)]
    features, is_poison, correct = torch.cat(feats), np.concatenate(labels), np.concatenate(correct)
    metas = {}
    for name, transform in TRANSFORMS.items():
        if name.endswith("all clean"):  # misclassified clean samples kept as negatives
            bal = _balance(is_poison, np.random.default_rng(seeds[3]))
        else:  # the paper's filter 1
            kept = np.flatnonzero(correct)
            bal = kept[_balance(is_poison[kept], np.random.default_rng(seeds[3]))]
        tf = transform(features[torch.as_tensor(bal)])
        metas[name] = (transform, train_meta_classifier(
            tf, is_poison[bal], shape=(tf.shape[1], *det._shape[1:]), nb_epochs=cfg["meta_epochs"],
            batch_size=128, learning_rate=1e-3, seed=seeds[4], device=cpu))

    def victim(x):
        return module_features(clf.model, x, det._layer, batch_size=256, device=cpu,
                               forward=lambda m, t: m(preprocess(clf, t)))

    fv, pv = victim(xm)
    okv = pv == ym
    vmeans, vstd = class_stats(fv[torch.as_tensor(okv)], ym[okv], k)

    def class_score(x, name):
        f, p = victim(x)
        transform, meta = metas[name]
        with torch.no_grad():
            return meta(transform(relative(f, p, vmeans, vstd))).double().numpy()  # logits: no saturation

    def norm_score(x):
        f, p = victim(x)
        return relative(f, p, vmeans, vstd).pow(2).mean((1, 2, 3)).double().numpy()

    def penultimate(x):
        return module_features(clf.model, x, "relu3", batch_size=256, device=cpu,
                               forward=lambda m, t: m(preprocess(clf, t)))

    f3, p3 = penultimate(xm)
    ok3 = p3 == ym
    means3, std3 = class_stats(f3[torch.as_tensor(ok3)], ym[ok3], k)

    def norm_relu3(x):
        f, p = penultimate(x)
        return relative(f, p, means3, std3).pow(2).mean((1, 2, 3)).double().numpy()

    x_trig = trigger(x_test[y_test != target])
    x_eval = np.concatenate([x_test, x_trig])
    is_p = np.r_[np.zeros(len(x_test), bool), np.ones(len(x_trig), bool)]
    out = {"attack": attack, "seed": vrow["seed"], "ASR": round(vrow["ASR"], 3)}
    fns = {"extractor": lambda x: det.score(x, feature_source="victim"), "residual norm": norm_score,
           "residual norm relu3": norm_relu3}
    fns.update({name: (lambda x, name=name: class_score(x, name)) for name in TRANSFORMS})
    for name, fn in fns.items():
        thr = _threshold(fn(xr[idx_cal]), 0.05)
        s = fn(x_eval)
        flagged = s > thr
        out[name] = (round(f_beta(flagged, is_p, beta=2.0), 3), round(roc_auc(s, is_p), 3),
                     round(float(flagged[~is_p].mean()), 3))
    union = np.zeros(len(x_eval), bool)
    for fn in (fns["class"], norm_relu3):  # either flags, each at FRR 0.025
        union |= fn(x_eval) > _threshold(fn(xr[idx_cal]), 0.025)
    out["union class + relu3 norm"] = (round(f_beta(union, is_p, beta=2.0), 3), float("nan"),
                                       round(float(union[~is_p].mean()), 3))
    out["s"] = round(time.perf_counter() - start)
    return out


def main(profile: str, seed0: int, n_victims: int, layer: str | None) -> None:
    cfg = dict(bench.PROFILES[profile])
    data, (xr, yr), (x_att, y_att), (x_test, y_test) = bench.benchmark_data(cfg, seed0)
    k = data.nb_classes
    ctx = {"cfg": cfg, "data": data, "k": k, "layer": layer, "seed0": seed0, "x_att": x_att, "y_att": y_att,
           "x_test": x_test, "y_test": y_test, "xr": xr, "yr": yr}
    rows = []
    for i, attack in enumerate(bench.ATTACKS):
        for v in range(n_victims):
            seed = seed0 + 100 + 10 * i + v
            out = one_victim(attack, seed, ctx)
            rows.append(out)
            print(out, flush=True)
    for name in ("extractor", "residual norm", "residual norm relu3", *TRANSFORMS, "union class + relu3 norm"):
        for attack in bench.ATTACKS:
            vals = [r[name] for r in rows if r["attack"] == attack]
            print(f"{name:14s} {attack:8s} F2 {np.mean([v[0] for v in vals]):.3f} "
                  f"AUROC {np.mean([v[1] for v in vals]):.3f} FRR {np.mean([v[2] for v in vals]):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2,
         sys.argv[4] if len(sys.argv) > 4 else None)
