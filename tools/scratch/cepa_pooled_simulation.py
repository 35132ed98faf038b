"""How often CEPA's layer decisions flag a clean model whose layers are i.i.d. but differently spread (simulation).

Usage: ``.venv/bin/python tools/scratch/cepa_pooled_simulation.py CV1,CV2,CV3 [N_SETS [EVIDENCE]]``

Each simulated clean model has three layers of ten putative-target statistics ``sigma`` drawn i.i.d. from a Gamma
with mean 1 and the layer's coefficient of variation (e.g. ``0.2,0.1,0.05``: a wide first layer and tight later
ones, as sigma is on our Fashion-MNIST CNNs). Both decisions use the evidence ``1 / sigma`` with 199 bootstrap
sets, as CEPA does: the default (each layer's calibrated p-value, Sidak over the layers) and
``layer_pooling="pooled"`` (:func:`~art_backdoor_ext.functional.layer_pooling.pooled_layer_pvalue`). Prints the
fraction of sets each flags at 0.05 and at 0.01 (the significance level is what a valid test would give).

``EVIDENCE`` is ``inverse`` (the default: the evidence is ``1 / sigma``, an inverse Gamma, heavier-tailed than the
Gamma null both decisions fit) or ``gamma`` (the evidence itself drawn from the Gamma with those CVs: the family
the nulls assume), which separates a fault of the pooling from a misspecified null.
"""

from __future__ import annotations

import sys

import numpy as np

from art_backdoor_ext.functional.bootstrap_calibration import calibrated_max_statistic_pvalue
from art_backdoor_ext.functional.cepa_math import sidak_correction
from art_backdoor_ext.functional.layer_pooling import pooled_layer_pvalue


def main(cvs: list[float], n_sets: int, evidence_kind: str = "inverse") -> None:
    rng = np.random.default_rng(1)
    sidak, pooled = [], []
    for i in range(n_sets):
        draws = np.stack([rng.gamma(1 / cv**2, cv**2, 10) for cv in cvs])
        evidence = draws if evidence_kind == "gamma" else 1.0 / draws
        per_layer = min(calibrated_max_statistic_pvalue(row, n_bootstrap=199, random_state=i)[0] for row in evidence)
        sidak.append(sidak_correction(per_layer, len(cvs)))
        pooled.append(pooled_layer_pvalue(evidence, n_bootstrap=199, random_state=i)[0])
    for name, ps in (("per layer, Sidak (default)", sidak), ("layers pooled", pooled)):
        ps_a = np.asarray(ps)
        print(f"CV {cvs}, {n_sets} clean sets, evidence {evidence_kind}, {name}: "
              f"flagged at 0.05 {np.mean(ps_a < 0.05):.3f}, at 0.01 {np.mean(ps_a < 0.01):.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    if len(sys.argv) > 3 and sys.argv[3] not in ("inverse", "gamma"):
        raise SystemExit(f"EVIDENCE must be inverse or gamma, got {sys.argv[3]!r}")
    main([float(c) for c in sys.argv[1].split(",")], int(sys.argv[2]) if len(sys.argv) > 2 else 200,
         sys.argv[3] if len(sys.argv) > 3 else "inverse")
