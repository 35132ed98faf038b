"""Save, per `bench mbds` victim, everything needed to study score fusions offline (no decision is made here).

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python tools/scratch/mbds_fusion_scores.py PROFILE SEED OUT_DIR [VICTIMS]``

Draws the reserve, attacker share, test subset and victims exactly as ``bench mbds --profile PROFILE --seed SEED``
(victim seeds SEED + 100 + 10 i + v, redraws included), fits the white-box MBDS with shadow models fine-tuned from
the victim exactly as the benchmark's ``victim, victim-init shadows`` row does, and writes ``OUT_DIR/ATTACK-SEED.npz``
with: the victim's features at MBDS's layer (``feature``, ``pool2`` on the BadNets CNN) and at the
penultimate layer (``penultimate``, ``relu3``) and logits on the reserve and on the evaluation inputs (clean
test images, then triggered copies of the non-target ones), MBDS's victim-mode scores on both (and, where the
library has it, the ``victim+residual`` mode's scores on the evaluation inputs and its threshold), the MBDS reserve
split (shadow / meta / calibration indices), ``is_poison``, ``effective`` (triggered inputs the victim sends to its
target) and the reserve labels. ``OUT_DIR/ATTACK-SEED.pt`` holds the victim's state_dict.
"""
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from art_backdoor_ext._torch import extract_features
from art_backdoor_ext.benchmarks import mbds as bench
from art_backdoor_ext.defences.activation.multilayer import penultimate_layer
from art_backdoor_ext.defences.sample import MBDS


def main(profile: str, seed0: int, out: Path, n_victims: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(bench.PROFILES[profile])
    data, (xr, yr), (x_att, y_att), (x_test, y_test) = bench.benchmark_data(cfg, seed0)
    shadow_seed = seed0 + 1
    for i, attack in enumerate(bench.ATTACKS):
        for v in range(n_victims):
            start = time.perf_counter()
            clf, trigger, target, victim = bench._victim(attack, seed0 + 100 + 10 * i + v, cfg, data, x_att, y_att,
                                                         x_test, y_test)
            x_trig = trigger(x_test[y_test != target]).astype(np.float32)
            x_eval = np.concatenate([x_test, x_trig])
            is_poison = np.r_[np.zeros(len(x_test), bool), np.ones(len(x_trig), bool)]
            template = copy.deepcopy(clf.model).cpu()
            det = MBDS(clf, model_factory=lambda _i, t=template: copy.deepcopy(t),
                       n_shadow_models=cfg["victim_init_shadows"], shadow_epochs=cfg["shadow_epochs"],
                       shadow_learning_rate=cfg["shadow_lr"], meta_epochs=cfg["meta_epochs"],
                       random_state=shadow_seed)
            det.fit(xr, yr)
            idx_shadow, idx_meta, idx_cal = det._split(yr, det._split_seed)
            layers = {"feature": det._layer, "penultimate": penultimate_layer(clf.model)}
            reserve = extract_features(clf, xr, sorted(set(layers.values())), include_logits=True)
            evaluation = extract_features(clf, x_eval, sorted(set(layers.values())), include_logits=True)
            for part in (reserve, evaluation):
                part.update({key: part[layer] for key, layer in layers.items()})
                for layer in set(layers.values()) - set(layers):
                    del part[layer]
            effective = np.r_[np.ones(len(x_test), bool), evaluation["logits"][len(x_test):].argmax(1) == target]
            name = f"{attack}-{victim['seed']}"
            np.savez_compressed(
                out / f"{name}.npz", y_reserve=yr, idx_shadow=idx_shadow, idx_meta=idx_meta, idx_cal=idx_cal,
                is_poison=is_poison, effective=effective, target=target,
                mbds_reserve=det.score(xr, feature_source="victim"),
                mbds_eval=det.score(x_eval, feature_source="victim"),
                mbds_threshold=det.thresholds["victim"],
                **({"fused_eval": det.score(x_eval, feature_source="victim+residual"),
                    "fused_threshold": det.thresholds["victim+residual"]} if "victim+residual" in det.thresholds
                   else {}),
                **{f"reserve_{k}": val.astype(np.float32) for k, val in reserve.items()},
                **{f"eval_{k}": val.astype(np.float32) for k, val in evaluation.items()})
            torch.save(clf.model.state_dict(), out / f"{name}.pt")
            row = {"attack": attack, "seed": victim["seed"], "target": target, "BA": round(victim["BA"], 3),
                   "ASR": round(victim["ASR"], 3), "s": round(time.perf_counter() - start)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 3)
