"""Type-I error and power of the paired, corrected and Student tests on designs like the presets'.

Each replicate is a new dataset drawn from a subject-level model (``simulate_resampled_scores``:
test difficulty and training value per subject, the synthetic cell's effect per test subject
and per training subject, seed noise), split with synthmix's own split code exactly as the
preset splits it, and tested as ``synthmix results`` tests it. Null designs have no effect in
the population; effect designs add ``--effect`` (Dice) to every test subject.

Tests: ``paired`` (naive paired t), ``corrected`` (Nadeau-Bengio with n_test/n_pool, the
default), ``corr-subset`` (the same with n_test/n_subset: the factor synthmix used before, the
reference), ``student`` (the papers' unpaired test). The ratio printed per design is the
corrected test's power over the reference's. The p-values are computed vectorised here and
checked against ``STAT_TESTS`` on the first replicates.

    .venv/bin/python benchmarks/stat_power.py                 # 4000 null / 2000 effect replicates
    .venv/bin/python benchmarks/stat_power.py --replicates 1000 --regime all
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from synthmix.datasets.splits import SplitSpec, build_splits
from synthmix.results import STAT_TESTS
from synthmix.results.simulate import simulate_resampled_scores

ALPHA = 0.05
# Designs of the presets: bowles-gansfer-ratios (5 folds, counts), bowles2018-table2 (hold-out
# x 8 repeats, fractions), quickstart (hold-out x 3 repeats).
DESIGNS = {
    "5-fold, 36 subjects": dict(n=36, spec=dict(folds=5, val=0.15, counts=(1, 3, 6, 12, 24))),
    "hold-out x8, 25 subjects": dict(n=25, spec=dict(test=0.2, val=0.2, repeats=8, fractions=(0.1, 0.5, 1.0))),
    "hold-out x3, 12 subjects": dict(n=12, spec=dict(test=0.25, val=0.25, repeats=3, fractions=(0.5, 1.0))),
}
# Standard deviations (Dice) of the synthetic cell's effect per test subject, per training
# subject, and of a training's seed noise; the baseline's difficulty and quality per subject
# are 0.05 and 0.03 in every regime.
REGIMES = {
    "balanced": dict(sd_effect_test=0.02, sd_effect_train=0.03, sd_seed=0.01),
    "test-dominated": dict(sd_effect_test=0.04, sd_effect_train=0.01, sd_seed=0.005),
    "training-dominated": dict(sd_effect_test=0.005, sd_effect_train=0.05, sd_seed=0.005),
}
TESTS = ("paired", "corrected", "corr-subset", "student")


def resamples(design: dict) -> dict[object, tuple[list, np.ndarray, np.ndarray]]:
    """amount -> ([(train indices, test indices)] per resample, n_test, n_pool per resample)."""
    ids = [f"s{i:03d}" for i in range(design["n"])]
    plan = build_splits(ids, SplitSpec(seed=0, **design["spec"]))
    index = {s: i for i, s in enumerate(ids)}
    out: dict = {}
    for split in plan.splits:
        pairs, n_test, n_pool = out.setdefault(split.amount, ([], [], []))
        pairs.append((np.array([index[s] for s in split.train]), np.array([index[s] for s in split.test])))
        n_test.append(len(split.test))
        n_pool.append(len(split.pool))
    return {a: (p, np.array(t, float), np.array(q, float)) for a, (p, t, q) in out.items()}


def p_values(x: np.ndarray, y: np.ndarray, n_test: np.ndarray, n_pool: np.ndarray,
             n_subset: int) -> dict[str, np.ndarray]:
    d = x - y
    j = d.shape[1]
    out = {"paired": stats.ttest_rel(x, y, axis=1).pvalue,
           "student": stats.ttest_ind(x, y, axis=1).pvalue}
    for name, ratio in (("corrected", np.mean(n_test / n_pool)), ("corr-subset", np.mean(n_test) / n_subset)):
        t = d.mean(axis=1) / np.sqrt((1 / j + ratio) * d.var(axis=1, ddof=1))
        out[name] = 2 * stats.t.sf(np.abs(t), j - 1)
    corrected = STAT_TESTS.get("corrected")
    for r in range(3):  # the vectorised formula is synthmix's test
        assert np.isclose(corrected(x[r], y[r], test_train_ratio=np.mean(n_test / n_pool)).p_value,
                          out["corrected"][r], rtol=1e-9, atol=1e-12)
    return out


def run(replicates: int, effect: float, regimes: list[str]) -> None:
    print(f"alpha {ALPHA}; rejection rates over {replicates} replicates (null: type-I error, "
          f"Monte Carlo SE {np.sqrt(ALPHA * (1 - ALPHA) / replicates):.3f}); effect: +{effect:g} Dice, "
          f"over {replicates // 2} replicates; ratio = power corrected / corr-subset")
    worst = {t: 0.0 for t in TESTS}
    for regime in regimes:
        print(f"\nregime {regime}: {REGIMES[regime]}")
        print(f"{'design':26s} {'amount':>6s} {'subset':>6s} {'J':>3s} | "
              + " ".join(f"{t:>11s}" for t in TESTS) + " | " + " ".join(f"{t:>11s}" for t in TESTS) + " | ratio")
        print(f"{'':26s} {'':>6s} {'':>6s} {'':>3s} | {'type-I error':^47s} | {'power':^47s} |")
        for name, design in DESIGNS.items():
            for k, (amount, (pairs, n_test, n_pool)) in enumerate(sorted(resamples(design).items())):
                subset = len(pairs[0][0])
                null = p_values(*simulate_resampled_scores(pairs, design["n"], replicates=replicates,
                                                           seed=k, **REGIMES[regime]), n_test, n_pool, subset)
                alt = p_values(*simulate_resampled_scores(pairs, design["n"], replicates=replicates // 2,
                                                          effect=effect, seed=1000 + k, **REGIMES[regime]),
                               n_test, n_pool, subset)
                size = {t: float(np.mean(null[t] < ALPHA)) for t in TESTS}
                power = {t: float(np.mean(alt[t] < ALPHA)) for t in TESTS}
                for t in TESTS:
                    worst[t] = max(worst[t], size[t])
                ratio = power["corrected"] / power["corr-subset"] if power["corr-subset"] else float("inf")
                print(f"{name:26s} {amount:>6g} {subset:>6d} {len(pairs):>3d} | "
                      + " ".join(f"{size[t]:>11.3f}" for t in TESTS) + " | "
                      + " ".join(f"{power[t]:>11.3f}" for t in TESTS) + f" | {ratio:5.2f}")
    print("\nlargest type-I error over the designs: " + ", ".join(f"{t} {worst[t]:.3f}" for t in TESTS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=4000)
    parser.add_argument("--effect", type=float, default=0.02, help="true gain in Dice (effect designs)")
    parser.add_argument("--regime", default="balanced", choices=[*REGIMES, "all"])
    args = parser.parse_args()
    start = time.perf_counter()
    run(args.replicates, args.effect, list(REGIMES) if args.regime == "all" else [args.regime])
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
