"""False-alarm rate of CEPA's all-to-one p-value on clean sets, uncalibrated, bootstrap-calibrated and by MAD.

Usage: cepa_bootstrap_null.py [N_SETS] [N_BOOTSTRAP]  (defaults 200 and 199; about 4 minutes on one core)

Draws N_SETS clean sets of ten i.i.d. Gamma(10) statistics and prints the fraction below 0.05 of the
uncalibrated order-statistic p-value, of the bootstrap-calibrated one, and of MAD anomaly index > 2 on the
largest. Measured 2026-12-01 with the defaults: calibrated 0.045, uncalibrated 0.200, MAD 0.455.
"""

from __future__ import annotations

import sys

import numpy as np

from art_backdoor_ext.functional.bootstrap_calibration import calibrated_max_statistic_pvalue
from art_backdoor_ext.functional.robust import mad_anomaly_index


def main(n_sets: int = 200, n_bootstrap: int = 199) -> None:
    rng = np.random.default_rng(1)
    calibrated, raw, mad = [], [], []
    for _ in range(n_sets):
        values = rng.gamma(10.0, 1.0, size=10)
        p, _, p_raw = calibrated_max_statistic_pvalue(values, n_bootstrap=n_bootstrap, random_state=rng)
        calibrated.append(p)
        raw.append(p_raw)
        mad.append(np.max(mad_anomaly_index(values, side="high")))
    print(f"clean sets below 0.05: calibrated {np.mean(np.array(calibrated) < 0.05):.3f}, "
          f"uncalibrated {np.mean(np.array(raw) < 0.05):.3f}; MAD > 2: {np.mean(np.array(mad) > 2):.3f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
