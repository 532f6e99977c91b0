"""Statistics of the aggregator against independent computations: scipy on the same numbers,
the corrected resampled t-test on a hand-worked example, Holm's family-wise error rate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthmix.results import STAT_TESTS, analyse
from synthmix.results.simulate import simulate_results
from synthmix.results.stat_tests import adjust_pvalues, cohens_d, cohens_dz

FACTORS = {"real_fraction": [0.1, 1.0], "synthetic": [0, 0.5, 1.0]}
EFFECTS = {"synthetic": {0.5: 0.015, 1.0: 0.004}}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return simulate_results(factors=FACTORS, folds=3, repeats=3, effects=EFFECTS, seed=3)


def _sample(table: pd.DataFrame, real_fraction: float, synthetic: float) -> pd.DataFrame:
    rows = table.loc[(table["real_fraction"] == real_fraction) & (table["synthetic"] == synthetic)]
    return rows.sort_values(["fold", "repeat"])


def _scipy(test: str, x: np.ndarray, y: np.ndarray) -> float:
    if test == "student":
        return stats.ttest_ind(x, y, equal_var=True).pvalue
    if test == "welch":
        return stats.ttest_ind(x, y, equal_var=False).pvalue
    if test == "paired":
        return stats.ttest_rel(x, y).pvalue
    return stats.wilcoxon(x, y).pvalue


@pytest.mark.parametrize("test", ["student", "welch", "paired", "wilcoxon"])
def test_p_values_equal_scipy_on_the_same_numbers(table: pd.DataFrame, test: str) -> None:
    analysis = analyse(table, rows=["synthetic"], cols=["real_fraction"], baseline="synthetic=0",
                       test=test, correction="none")
    compared = analysis.cells.loc[~analysis.cells["baseline"]]
    assert len(compared) == 4
    for row in compared.to_dict("records"):
        x = _sample(table, row["real_fraction"], row["synthetic"])["dice_mean"].to_numpy()
        y = _sample(table, row["real_fraction"], 0)["dice_mean"].to_numpy()
        assert row["p_value"] == pytest.approx(_scipy(test, x, y), abs=1e-10)
        assert row["p_adjusted"] == row["p_value"]
        assert row["cohens_d_pooled"] == pytest.approx(cohens_d(x, y), abs=1e-12)
        if test in ("paired", "wilcoxon"):
            assert row["cohens_dz"] == pytest.approx(np.mean(x - y) / np.std(x - y, ddof=1), abs=1e-12)
        else:
            assert np.isnan(row["cohens_dz"])
        assert row["diff"] == pytest.approx(x.mean() - y.mean(), abs=1e-12)


def test_confidence_interval_matches_scipy_at_one_minus_alpha(table: pd.DataFrame) -> None:
    analysis = analyse(table, baseline="synthetic=0", test="welch", correction="none", alpha=0.1)
    row = analysis.cells.loc[(analysis.cells["synthetic"] == 0.5) & (analysis.cells["real_fraction"] == 1.0)].iloc[0]
    x = _sample(table, 1.0, 0.5)["dice_mean"].to_numpy()
    y = _sample(table, 1.0, 0)["dice_mean"].to_numpy()
    ci = stats.ttest_ind(x, y, equal_var=False).confidence_interval(0.9)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_holm_and_bh_over_the_table_equal_direct_adjustment(table: pd.DataFrame) -> None:
    raw = analyse(table, baseline="synthetic=0", test="paired", correction="none").cells
    for method, reference in [("holm", None), ("bh", "bh")]:
        cells = analyse(table, baseline="synthetic=0", test="paired", correction=method).cells
        p = raw["p_value"].to_numpy(dtype=float)
        tested = ~np.isnan(p)
        expected = (stats.false_discovery_control(p[tested], method="bh") if reference
                    else _holm_by_hand(p[tested]))
        assert cells["p_adjusted"].to_numpy(dtype=float)[tested] == pytest.approx(expected, abs=1e-12)
        assert (cells.loc[tested, "significant"] == (cells.loc[tested, "p_adjusted"] < 0.05)).all()


def _holm_by_hand(p: np.ndarray) -> np.ndarray:
    """Holm's adjusted p-values written from the definition: max over j<=i of (m-j+1) p_(j)."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = np.empty(m), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def test_holm_on_known_values() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    adjusted = adjust_pvalues(p, "holm")
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])
    assert adjust_pvalues(p, "none")[:4] == pytest.approx(p[:4])


def test_corrected_resampled_t_test_hand_worked() -> None:
    # 3 folds x 2 repeats, differences d = 0.02, 0.01, 0.03, 0.00, 0.04, 0.02: mean 0.02,
    # sum of squared deviations 0.001, var 0.0002; n_test/n_train = 6/12 = 0.5;
    # t = 0.02 / sqrt((1/6 + 0.5) * 0.0002) = 0.02 / sqrt(0.0002 * 2/3) = sqrt(3); df = 5.
    d = np.array([0.02, 0.01, 0.03, 0.00, 0.04, 0.02])
    y = np.array([0.80, 0.81, 0.79, 0.82, 0.78, 0.80])
    outcome = STAT_TESTS.get("corrected")(y + d, y, confidence=0.95, test_train_ratio=0.5)
    assert outcome.statistic == pytest.approx(np.sqrt(3), abs=1e-10)
    assert outcome.df == 5
    assert outcome.p_value == pytest.approx(2 * stats.t.sf(np.sqrt(3), 5), abs=1e-12)
    half = stats.t.ppf(0.975, 5) * 0.02 / np.sqrt(3)
    assert (outcome.ci_low, outcome.ci_high) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-12)
    # Without the n_test/n_train term it is the ordinary paired t-test.
    assert STAT_TESTS.get("corrected")(y + d, y, test_train_ratio=1e-300).p_value == pytest.approx(
        stats.ttest_rel(y + d, y).pvalue, abs=1e-10)


def test_corrected_through_the_table_reads_subject_counts_per_row() -> None:
    d = np.array([0.02, 0.01, 0.03, 0.00, 0.04, 0.02])
    y = np.array([0.80, 0.81, 0.79, 0.82, 0.78, 0.80])
    # The training size is the pool (12), not the cell's subset (3): n_test/n_pool = 0.5.
    rows = [{"synthetic": s, "fold": i % 3, "repeat": i // 3, "dice_mean": v,
             "n_train_subjects": 3, "n_pool_subjects": 12, "n_test_subjects": 6}
            for s, values in ((0, y), (1, y + d)) for i, v in enumerate(values)]
    analysis = analyse(pd.DataFrame(rows), baseline="synthetic=0", test="corrected")
    tested = analysis.cells.loc[~analysis.cells["baseline"]].iloc[0]
    assert tested["statistic"] == pytest.approx(np.sqrt(3), abs=1e-10)
    assert tested["p_value"] == pytest.approx(2 * stats.t.sf(np.sqrt(3), 5), abs=1e-12)
    assert not any("n_pool_subjects" in note for note in analysis.notes)
    flags = analyse(pd.DataFrame(rows).drop(columns=["n_pool_subjects", "n_test_subjects"]),
                    baseline="synthetic=0", test="corrected", n_train=12, n_test=6).cells
    assert flags["p_value"].iloc[1] == pytest.approx(tested["p_value"], abs=1e-12)
    # A table without a pool column falls back to n_train_subjects, and says so.
    old = analyse(pd.DataFrame(rows).drop(columns=["n_pool_subjects"]), baseline="synthetic=0",
                  test="corrected")
    t_old = 0.02 / np.sqrt((1 / 6 + 6 / 3) * 0.0002)
    assert old.cells["statistic"].iloc[1] == pytest.approx(t_old, abs=1e-10)
    assert any("no n_pool_subjects column" in note for note in old.notes)


def test_wilcoxon_n_counts_the_pairs_it_ranked() -> None:
    y = np.array([0.80, 0.81, 0.79, 0.82, 0.78, 0.80, 0.77, 0.83])
    d = np.array([0.02, 0.0, 0.03, 0.01, 0.0, 0.02, 0.04, 0.01])  # two zero differences
    rows = [{"synthetic": s, "fold": i, "repeat": 0, "dice_mean": v}
            for s, values in ((0, y), (1, y + d)) for i, v in enumerate(values)]
    analysis = analyse(pd.DataFrame(rows), baseline="synthetic=0", test="wilcoxon")
    tested = analysis.cells.loc[~analysis.cells["baseline"]].iloc[0]
    assert tested["n_pairs"] == 6
    assert tested["p_value"] == pytest.approx(stats.wilcoxon(y + d, y).pvalue, abs=1e-12)
    assert any("ranked 6 of 8 pairs (2 zero difference(s) dropped)" in n for n in analysis.notes)


def test_cohens_dz_is_the_mean_difference_over_its_sd() -> None:
    x, y = np.array([1.0, 2.5, 3.0, 4.5]), np.array([0.5, 2.0, 3.0, 3.5])
    d = x - y
    assert cohens_dz(x, y) == pytest.approx(d.mean() / d.std(ddof=1))
    assert cohens_dz(x, y) * np.sqrt(4) == pytest.approx(stats.ttest_rel(x, y).statistic)


def test_auto_picks_corrected_then_paired_then_welch(table: pd.DataFrame) -> None:
    assert analyse(table).test == "corrected"
    assert analyse(table.drop(columns=["n_test_subjects"])).test == "paired"
    assert analyse(table.drop(columns=["fold", "repeat"])).test == "welch"


def test_holm_keeps_family_wise_error_at_alpha_under_the_null() -> None:
    """4000 tables with no true effect, each 6 cells paired against one shared baseline."""
    rng = np.random.default_rng(11)
    tables, cells, pairs, alpha = 4000, 6, 8, 0.05
    shared = rng.normal(0, 0.02, size=(tables, 1, pairs))  # the pairing (fold, repeat) effect
    baseline = 0.8 + shared[:, 0] + rng.normal(0, 0.01, size=(tables, pairs))
    treated = 0.8 + shared + rng.normal(0, 0.01, size=(tables, cells, pairs))
    p = stats.ttest_rel(treated, baseline[:, None, :], axis=-1).pvalue
    holm = np.array([adjust_pvalues(row, "holm") for row in p])
    naive_fwer = np.mean((p < alpha).any(axis=1))
    holm_fwer = np.mean((holm < alpha).any(axis=1))
    assert naive_fwer > 2 * alpha  # the test can tell: without correction the FWER is far above
    assert holm_fwer <= alpha
    # Not a lucky seed: the rejections are consistent with FWER <= alpha (one-sided binomial).
    rejected = int((holm < alpha).any(axis=1).sum())
    assert stats.binomtest(rejected, tables, alpha, alternative="greater").pvalue > 0.05
    # ...and Holm is not trivially conservative: it still rejects a real effect.
    p_effect = stats.ttest_rel(treated[:50, :1] + 0.03, baseline[:50, None, :], axis=-1).pvalue
    assert np.mean(p_effect < alpha / cells) > 0.9


def test_cohens_d_is_the_pooled_sd_standardised_difference() -> None:
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0])
    pooled = np.sqrt((3 * np.var(x, ddof=1) + 2 * np.var(y, ddof=1)) / 5)
    assert cohens_d(x, y) == pytest.approx((2.5 - 4.0) / pooled)


def test_corrected_test_with_the_pool_keeps_its_size_and_gains_power_at_small_counts() -> None:
    """The 5-fold, count-1 design of bowles-gansfer-ratios, simulated subject by subject
    (benchmarks/stat_power.py runs every preset design): under the null the corrected test with
    n_test/n_pool rejects at most alpha + 0.02; a +0.03 Dice gain it finds far more often than
    with n_test/n_subset, which almost never can."""
    from synthmix.datasets.splits import SplitSpec, build_splits
    from synthmix.results.simulate import simulate_resampled_scores

    ids = [f"s{i:02d}" for i in range(36)]
    plan = build_splits(ids, SplitSpec(folds=5, val=0.15, counts=(1,), seed=0))
    index = {s: i for i, s in enumerate(ids)}
    pairs = [(np.array([index[s] for s in sp.train]), np.array([index[s] for s in sp.test])) for sp in plan.splits]
    pool_ratio = float(np.mean([len(sp.test) / len(sp.pool) for sp in plan.splits]))
    subset_ratio = float(np.mean([len(sp.test) for sp in plan.splits]))  # n_subset = 1
    corrected = STAT_TESTS.get("corrected")

    def rejections(effect: float, ratio: float, seed: int) -> float:
        x, y = simulate_resampled_scores(pairs, len(ids), replicates=1000, effect=effect, seed=seed)
        return float(np.mean([corrected(a, b, test_train_ratio=ratio).p_value < 0.05 for a, b in zip(x, y)]))

    assert rejections(0.0, pool_ratio, 1) <= 0.05 + 0.02
    with_pool, with_subset = rejections(0.03, pool_ratio, 2), rejections(0.03, subset_ratio, 2)
    assert with_pool > 0.08 and with_subset < 0.01
