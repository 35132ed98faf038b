"""Does SDRM's multi-level MMD penalty hide triggered inputs from the class-residual baseline?

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python tools/scratch/class_residual_vs_sdrm.py EPOCHS LAM[,LAM...] SEED[,SEED...]``

Digits, 2x2 white patch, target 0, 10% poisoned, as examples/06_sdrm.py: for each seed the same start model is
trained with SDRM at each lambda (0 = regular backdoor training) on the penultimate layer ``relu3`` and the two
convolutional levels. ClassResidualDetector (default: ``relu3``, target FRR 0.05) is fitted on the first half of
the test split and scored on the second half plus its triggered non-target images. Prints BA, ASR, the MMD^2
between clean 0s and triggered inputs at ``relu3``, and the detector's F2, AUROC and realised FRR.
"""
import sys

import numpy as np

from art_backdoor_ext._torch import extract_features
from art_backdoor_ext.attacks import SDRM
from art_backdoor_ext.attacks.triggers import patch_trigger
from art_backdoor_ext.datasets import load_digits
from art_backdoor_ext.defences import ClassResidualDetector
from art_backdoor_ext.functional.metrics import f_beta, roc_auc
from art_backdoor_ext.functional.mmd import mmd2_numpy
from art_backdoor_ext.models import build_model, make_classifier
from art_backdoor_ext.training import evaluate_attack


def main(epochs: int, lams: list[float], seeds: list[int]) -> None:
    data = load_digits(test_fraction=0.5)
    trigger = patch_trigger(pattern=np.ones((2, 2), np.float32), location="bottom-right")
    half = len(data.x_test) // 2
    x_def, y_def = data.x_test[:half], data.y_test[:half]
    x_eval, y_eval = data.x_test[half:], data.y_test[half:]
    x_trig = trigger(x_eval[y_eval != 0])
    x_all = np.concatenate([x_eval, x_trig])
    is_poison = np.r_[np.zeros(len(x_eval), bool), np.ones(len(x_trig), bool)]
    rows = []
    for seed in seeds:
        for lam in lams:
            attack = SDRM(make_classifier(build_model("digits-cnn", random_state=seed)), perturbation=trigger,
                          target=0, poison_ratio=0.1, layers=["relu1", "relu2", "relu3"], lam=lam,
                          nb_epochs=epochs, batch_size=128, learning_rate=3e-3, random_state=seed)
            model = attack.poison_estimator(data.x_train, data.y_train)
            ba, asr = evaluate_attack(model, x_eval, y_eval, trigger, target=0)
            zeros = x_eval[y_eval == 0]
            mmd = mmd2_numpy(extract_features(model, zeros, ["relu3"])["relu3"],
                             extract_features(model, x_trig[:len(zeros)], ["relu3"])["relu3"])
            det = ClassResidualDetector(model, random_state=seed)
            det.fit(x_def, y_def)
            report, flagged = det.detect(x_all)
            row = {"seed": seed, "lam": lam, "BA": round(ba, 3), "ASR": round(asr, 3), "MMD2 relu3": round(mmd, 4),
                   "F2": round(f_beta(flagged, is_poison, beta=2.0), 3),
                   "AUROC": round(roc_auc(np.asarray(report["scores"]), is_poison), 3),
                   "FRR": round(float(flagged[~is_poison].mean()), 3)}
            rows.append(row)
            print(row, flush=True)
    for lam in lams:
        group = [r for r in rows if r["lam"] == lam]
        print(f"lam {lam}: " + ", ".join(f"{k} {np.mean([r[k] for r in group]):.3f}"
                                         for k in ("BA", "ASR", "MMD2 relu3", "F2", "AUROC", "FRR")))


if __name__ == "__main__":
    main(int(sys.argv[1]), [float(v) for v in sys.argv[2].split(",")], [int(v) for v in sys.argv[3].split(",")])
