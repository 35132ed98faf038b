"""How often AD's nulls flag clean, homogeneous size matrices (K = 10, 200 draws per family, theta = 0.05).

Usage: ad_null_calibration.py. Sizes drawn i.i.d. from a Gamma, from a log-normal, or with Gamma reciprocals
(the paper's assumption); for each, the fraction of matrices the paper's null (Gamma on the reciprocals, Eq. 4)
and the size null (Gamma on the sizes, functional/size_null.py) flag, and the same after one source row is made
3x easier and source-normalised.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from art_backdoor_ext.functional.pair_normalisation import source_normalised_statistics
from art_backdoor_ext.functional.robust import order_statistic_pvalue, reciprocal_statistics
from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue

NULLS: dict[str, Callable[[np.ndarray], float]] = {
    "reciprocal (paper)": lambda d: order_statistic_pvalue(reciprocal_statistics(d)).p_value,
    "size": lambda d: size_order_statistic_pvalue(d).p_value,
}


def main() -> None:
    rng = np.random.default_rng(1)
    families: dict[str, Callable[[], np.ndarray]] = {
        "Gamma(20) sizes": lambda: rng.gamma(20.0, 0.15, (10, 10)),
        "log-normal sizes": lambda: np.exp(rng.normal(0.0, 0.3, (10, 10))),
        "Gamma(20) reciprocals": lambda: 1.0 / rng.gamma(20.0, 0.15, (10, 10)),
    }
    for family, draw in families.items():
        flagged: dict[str, list[bool]] = {f"{n}{s}": [] for n in NULLS for s in ("", ", easy row normalised")}
        for _ in range(200):
            d = draw()
            np.fill_diagonal(d, np.nan)
            easy = d.copy()
            easy[7] /= 3.0
            for name, null in NULLS.items():
                flagged[name].append(null(d) < 0.05)
                flagged[f"{name}, easy row normalised"].append(null(source_normalised_statistics(easy)) < 0.05)
        print(family, {k: round(float(np.mean(v)), 3) for k, v in flagged.items()}, flush=True)


if __name__ == "__main__":
    main()
