"""Simulated results tables with known effects: for tests, the benchmark, and for trying the
aggregator without running a study.

Each row is ``base + sum of the effects of its factor levels + a (fold, repeat) effect shared by
all cells of that resample + noise``: the shared term is what makes the design paired.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd


def simulate_results(*, factors: dict[str, list], folds: int = 3, repeats: int = 2,
                     effects: dict[str, dict] | None = None, base: float = 0.8,
                     pair_sd: float = 0.02, noise_sd: float = 0.01, n_train_subjects: int = 12,
                     n_pool_subjects: int = 12, n_test_subjects: int = 6, study: str = "simulated", seed: int = 0) -> pd.DataFrame:
    """One row per (factor combination, fold, repeat), in the results-row layout.

    Args:
        factors: factor name -> levels.
        effects: factor name -> {level: additive effect on ``dice_mean``}; missing levels add 0.
        pair_sd: SD of the per-(fold, repeat) effect shared by every cell (pairing strength).
        noise_sd: SD of the independent per-row noise.
    """
    rng = np.random.default_rng(seed)
    effects = effects or {}
    names = list(factors)
    combos = list(itertools.product(*(factors[n] for n in names)))
    resamples = [(f, r) for r in range(repeats) for f in range(folds)]
    shared = rng.normal(0.0, pair_sd, size=len(resamples))
    records = []
    for combo in combos:
        shift = sum(effects.get(n, {}).get(level, 0.0) for n, level in zip(names, combo))
        noise = rng.normal(0.0, noise_sd, size=len(resamples))
        for (fold, repeat), s, e in zip(resamples, shared, noise):
            levels = dict(zip(names, combo))
            records.append({"study": study, "cell_id": _cell_id(levels, fold, repeat), **levels,
                            "fold": fold, "repeat": repeat, "schema_version": 1,
                            "dice_mean": base + shift + s + e, "n_train_subjects": n_train_subjects,
                            "n_pool_subjects": n_pool_subjects, "n_test_subjects": n_test_subjects})
    return pd.DataFrame.from_records(records)


def _cell_id(levels: dict, fold: int, repeat: int) -> str:
    return "-".join(f"{k}{v}" for k, v in levels.items()) + f"-f{fold}-r{repeat}"
