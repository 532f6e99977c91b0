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


def simulate_resampled_scores(resamples: list[tuple[np.ndarray, np.ndarray]], n_subjects: int, *,
                              replicates: int, effect: float = 0.0, sd_effect_test: float = 0.02,
                              sd_effect_train: float = 0.03, sd_seed: float = 0.01,
                              sd_difficulty: float = 0.05, sd_quality: float = 0.03,
                              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a cell (x) and its baseline (y), shape (replicates, resamples), from a
    subject-level model of a resampled study; each replicate is a new dataset of ``n_subjects``.

    ``resamples`` lists (train subject indices, test subject indices) per (fold, repeat): the
    cell's training subset and its test set (from a real split plan). Subject s has a test
    difficulty a_s and a training value v_s (both cells), and for the synthetic cell a test
    effect e_s ~ N(effect, sd_effect_test) and a training effect u_s ~ N(0, sd_effect_train):

        y_j = mean_{S_j} a + mean_{T_j} v + its seed noise
        x_j = mean_{S_j} (a + e) + mean_{T_j} (v + u) + its own seed noise

    so resamples that share subjects are correlated, as in a real study, and a difference
    learnt from few training subjects varies more (the train means are over |T_j| subjects).
    Under ``effect=0`` there is no difference in the population: any mean difference in one
    dataset is that dataset's subjects.
    """
    rng = np.random.default_rng(seed)
    shape = (replicates, n_subjects)
    a, v = rng.normal(0, sd_difficulty, shape), rng.normal(0, sd_quality, shape)
    e, u = rng.normal(effect, sd_effect_test, shape), rng.normal(0, sd_effect_train, shape)
    j = len(resamples)
    y = 0.8 + rng.normal(0, sd_seed, (replicates, j))  # each cell is its own training (seed)
    x = 0.8 + rng.normal(0, sd_seed, (replicates, j))
    for k, (train, test) in enumerate(resamples):
        shared = a[:, test].mean(axis=1) + v[:, train].mean(axis=1)
        y[:, k] += shared
        x[:, k] += shared + e[:, test].mean(axis=1) + u[:, train].mean(axis=1)
    return x, y
