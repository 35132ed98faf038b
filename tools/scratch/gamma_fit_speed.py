"""Time and compare the Gamma-null inference of one code revision against another (scratch).

Run it once per revision (each with that revision on PYTHONPATH), then compare the two JSON files:

    git worktree add /tmp/oldtree 7b3a696
    PYTHONPATH=/tmp/oldtree .venv/bin/python tools/scratch/gamma_fit_speed.py runs/old.json &
    PYTHONPATH=. .venv/bin/python tools/scratch/gamma_fit_speed.py runs/new.json; wait
    .venv/bin/python tools/scratch/gamma_fit_speed.py --compare runs/old.json runs/new.json
    .venv/bin/python tools/scratch/gamma_fit_speed.py --likelihood    # the fits against SciPy's L-BFGS-B

The inputs are simulated (seed 0): 60 CEPA-like (3 layers x 10 classes) Gamma statistic sets, every other one
with a planted target, and 60 AD-like 10 x 10 size matrices, every other one with a planted small pair. Timed:
the calibrated per-layer p-value, the joint and the pooled layer tests (199 bootstrap sets each) and AD's
order-statistic p-value.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def measure(path: str) -> None:
    import art_backdoor_ext
    from art_backdoor_ext.functional.bootstrap_calibration import calibrated_max_statistic_pvalue
    from art_backdoor_ext.functional.layer_pooling import joint_layer_pvalue, pooled_layer_pvalue
    from art_backdoor_ext.functional.robust import order_statistic_pvalue, reciprocal_statistics

    rng = np.random.default_rng(0)
    sets = []
    for i in range(60):
        v = rng.gamma(rng.uniform(3, 60), 1.0, size=(3, 10))
        if i % 2:
            v[:, i % 10] *= rng.uniform(1.2, 2.5)
        sets.append(v)
    sizes = []
    for i in range(60):
        d = rng.gamma(20, 0.1, size=(10, 10))
        np.fill_diagonal(d, np.nan)
        if i % 2:
            d[i % 10, (i + 3) % 10] *= 0.4
        sizes.append(d)
    runs = {
        "calibrated per-layer p (60 sets)": lambda: [calibrated_max_statistic_pvalue(v[0])[0] for v in sets],
        "joint layer test (20 sets)": lambda: [joint_layer_pvalue(v)[0] for v in sets[:20]],
        "pooled layer test (60 sets)": lambda: [pooled_layer_pvalue(v)[0] for v in sets],
        "AD order-statistic p (60 matrices)": lambda: [order_statistic_pvalue(reciprocal_statistics(d)).p_value
                                                        for d in sizes],
    }
    out = {"package": art_backdoor_ext.__file__, "seconds": {}, "p": {}}
    for name, run in runs.items():
        start = time.perf_counter()
        out["p"][name] = [float(p) for p in run()]
        out["seconds"][name] = time.perf_counter() - start
    with open(path, "w") as fh:
        json.dump(out, fh)
    print(json.dumps(out["seconds"], indent=1))


def compare(old_path: str, new_path: str) -> None:
    old, new = (json.load(open(p)) for p in (old_path, new_path))
    print("| computation | old s | new s | speed-up | max abs p change | decisions at 0.05 changed |")
    print("|---|---|---|---|---|---|")
    for name in old["seconds"]:
        a, b = np.array(old["p"][name]), np.array(new["p"][name])
        print(f"| {name} | {old['seconds'][name]:.2f} | {new['seconds'][name]:.2f} | "
              f"{old['seconds'][name] / new['seconds'][name]:.1f}x | {np.max(np.abs(a - b)):.3g} | "
              f"{int(((a < 0.05) != (b < 0.05)).sum())} of {a.size} |")


def likelihood() -> None:
    """Log-likelihood of the current fit minus that of one L-BFGS-B run from the moment start (the solver used
    before 2026-12-07), on 400 simulated right-truncated sets per size (seed 1)."""
    import math

    from scipy import optimize, stats

    from art_backdoor_ext.functional.gamma_fit import fit_truncated_gamma_many

    def nll(x: np.ndarray, c: float, k: float, theta: float) -> float:
        value = -stats.gamma.logpdf(x, k, scale=theta).sum() + x.size * stats.gamma.logcdf(c, k, scale=theta)
        return float(value) if np.isfinite(value) else 1e300

    rng = np.random.default_rng(1)
    for n_total, n_exclude in ((10, 1), (30, 3), (90, 9)):
        shapes = rng.uniform(1, 100, 400)
        sets = np.sort(np.stack([rng.gamma(s, 1.0 / s, size=n_total) for s in shapes]), axis=1)
        fit, trunc = sets[:, : n_total - n_exclude], sets[:, n_total - n_exclude]
        k_new, theta_new = fit_truncated_gamma_many(fit, trunc)
        gains = []
        for x, c, k, theta in zip(fit, trunc, k_new, theta_new):
            k0 = float(np.clip(x.mean() ** 2 / x.var(), 1e-2, 1e3))
            old = optimize.minimize(lambda p, x=x, c=c: nll(x, c, math.exp(p[0]), math.exp(p[1] - p[0])),
                                    np.array([math.log(k0), math.log(x.mean())]), method="L-BFGS-B",
                                    bounds=[(math.log(1e-3), math.log(1e4)), (-30.0, 30.0)])
            gains.append(old.fun - nll(x, c, k, theta))
        gains_a = np.array(gains)
        print(f"{n_total - n_exclude} values of {n_total}: log-likelihood gain over L-BFGS-B min {gains_a.min():.2e}, "
              f"max {gains_a.max():.3g}, sets gaining more than 1e-3: {(gains_a > 1e-3).sum()} of {gains_a.size}")


if __name__ == "__main__":
    if sys.argv[1] == "--likelihood":
        likelihood()
    elif sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        measure(sys.argv[1])
