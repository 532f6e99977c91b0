"""Two-sample tests of a cell against its baseline, and multiple-comparison corrections.

Every test is two-tailed and returns the mean difference (cell minus baseline) with its
confidence interval. The t-based tests and Wilcoxon call scipy; the corrected resampled t-test
(Nadeau & Bengio 2003, in the repeated k-fold form of Bouckaert & Frank 2004) is written here
because no common library implements it; Holm is written here because scipy has only BH and
statsmodels would be a dependency for five lines.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class TestOutcome:
    """What a test says about one comparison.

    ``diff`` is mean(cell) - mean(baseline) for unpaired tests and the mean of the paired
    differences for paired ones; ``ci_low``/``ci_high`` bound it; ``n`` is the number of pairs
    the test actually used (paired; for Wilcoxon the pairs ranked, zero differences dropped) or
    of observations in both samples (unpaired).
    """

    statistic: float
    p_value: float
    diff: float
    ci_low: float
    ci_high: float
    df: float
    n: int


@dataclass(frozen=True)
class StatTest:
    """A registry entry: ``test(x, y, confidence=, test_train_ratio=) -> TestOutcome``.

    ``x`` is the cell's sample, ``y`` the baseline's; when ``paired`` they are aligned pair by
    pair. ``test_train_ratio`` (n_test / n_train) is used only by the corrected test.
    """

    name: str
    label: str
    paired: bool
    run: Callable[..., TestOutcome]
    needs_ratio: bool = False

    def __call__(self, x: np.ndarray, y: np.ndarray, *, confidence: float = 0.95,
                 test_train_ratio: float | None = None) -> TestOutcome:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if self.paired and len(x) != len(y):
            raise ValueError(f"{self.name}: paired samples differ in length ({len(x)} vs {len(y)})")
        # Degenerate samples (zero variance, n=1) give NaN/inf from scipy; callers report them.
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            return self.run(x, y, confidence=confidence, test_train_ratio=test_train_ratio)


def student(x: np.ndarray, y: np.ndarray, *, confidence: float, **_: object) -> TestOutcome:
    return _independent(x, y, confidence, equal_var=True)


def welch(x: np.ndarray, y: np.ndarray, *, confidence: float, **_: object) -> TestOutcome:
    return _independent(x, y, confidence, equal_var=False)


def paired(x: np.ndarray, y: np.ndarray, *, confidence: float, **_: object) -> TestOutcome:
    result = stats.ttest_rel(x, y)
    ci = result.confidence_interval(confidence)
    return TestOutcome(float(result.statistic), float(result.pvalue), float(np.mean(x - y)),
                       float(ci.low), float(ci.high), float(result.df), len(x))


def wilcoxon(x: np.ndarray, y: np.ndarray, *, confidence: float, **_: object) -> TestOutcome:
    """Signed-rank test (scipy defaults: exact for small n, zero differences dropped, so ``n``
    counts the nonzero differences it ranked). The interval is the paired t-interval of the mean
    difference over all pairs, so every test reports the same effect size."""
    result = stats.wilcoxon(x, y)
    ci = stats.ttest_rel(x, y).confidence_interval(confidence)
    ranked = int(np.count_nonzero(x - y))
    return TestOutcome(float(result.statistic), float(result.pvalue), float(np.mean(x - y)),
                       float(ci.low), float(ci.high), float("nan"), ranked)


def corrected(x: np.ndarray, y: np.ndarray, *, confidence: float,
              test_train_ratio: float | None = None, **_: object) -> TestOutcome:
    """Corrected resampled t-test over n = k*r paired differences d (k folds x r repeats):

        t = mean(d) / sqrt((1/n + n_test/n_train) * var(d)),   df = n - 1

    The n_test/n_train term (``test_train_ratio``) stands for the correlation between resamples
    that share training and test subjects, which makes the naive paired t-test over-confident.
    n_train is the non-test data a resample's training set is drawn from (in synthmix: the
    split's pool, ``n_pool_subjects``), not the size of a subset drawn from it.
    """
    if test_train_ratio is None or not np.isfinite(test_train_ratio) or test_train_ratio <= 0:
        raise ValueError("the corrected resampled t-test needs n_test/n_train > 0")
    d = x - y
    n = len(d)
    mean = float(np.mean(d)) if n else float("nan")
    variance = float(np.var(d, ddof=1)) if n > 1 else float("nan")
    se = np.sqrt((1.0 / n + test_train_ratio) * variance) if n > 1 else float("nan")
    t = _ratio(mean, se)
    df = n - 1
    p = float(2 * stats.t.sf(abs(t), df)) if n > 1 and not np.isnan(t) else float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, df) * se) if n > 1 else float("nan")
    return TestOutcome(t, p, mean, mean - half, mean + half, float(df), n)


def _independent(x: np.ndarray, y: np.ndarray, confidence: float, *, equal_var: bool) -> TestOutcome:
    result = stats.ttest_ind(x, y, equal_var=equal_var)
    ci = result.confidence_interval(confidence)
    return TestOutcome(float(result.statistic), float(result.pvalue), float(np.mean(x) - np.mean(y)),
                       float(ci.low), float(ci.high), float(result.df), len(x) + len(y))


def _ratio(mean: float, se: float) -> float:
    if np.isnan(se) or np.isnan(mean):
        return float("nan")
    if se == 0:
        return float("nan") if mean == 0 else float(np.sign(mean) * np.inf)
    return mean / se


def cohens_dz(x: np.ndarray, y: np.ndarray) -> float:
    """Cohen's d_z of paired samples: mean(x - y) / SD(x - y), the effect size of the paired
    tests (it is what their t statistic is made of: t = d_z sqrt(n))."""
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if len(d) < 2:
        return float("nan")
    return _ratio(float(np.mean(d)), float(np.std(d, ddof=1)))


def cohens_d(x: np.ndarray, y: np.ndarray) -> float:
    """Pooled-SD Cohen's d, (mean(x) - mean(y)) / pooled SD: the classical d, the same for
    every test so effect sizes compare across tests and designs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    nx, ny = len(x), len(y)
    if nx + ny < 3 or nx == 0 or ny == 0:
        return float("nan")
    pooled = ((nx - 1) * np.var(x, ddof=1 if nx > 1 else 0) + (ny - 1) * np.var(y, ddof=1 if ny > 1 else 0)) / (nx + ny - 2)
    diff = float(np.mean(x) - np.mean(y))
    return _ratio(diff, float(np.sqrt(pooled)))


CORRECTIONS = ("holm", "bh", "none")


def adjust_pvalues(p_values: np.ndarray, method: str) -> np.ndarray:
    """Adjusted p-values for one family of comparisons; NaN entries stay NaN and do not count.

    holm: step-down Bonferroni, controls the family-wise error rate under any dependence.
    bh: Benjamini-Hochberg (scipy), controls the false discovery rate under independence or
    positive dependence. none: unchanged.
    """
    p = np.asarray(p_values, dtype=float)
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; known: {', '.join(CORRECTIONS)}")
    out = p.copy()
    valid = ~np.isnan(p)
    if method == "none" or not valid.any():
        return out
    if method == "bh":
        out[valid] = stats.false_discovery_control(p[valid], method="bh")
    else:
        out[valid] = _holm(p[valid])
    return out


def _holm(p: np.ndarray) -> np.ndarray:
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted
