"""The aggregator: read results rows, check the design, compare every cell with its baseline,
render tables and plots. Pure functions over a tidy pandas table; no Ray here, so results can
be queried anywhere after the cluster is gone.

``STAT_TESTS`` is the registry of two-sample tests, keyed by the ``--test`` name. An entry is a
``StatTest`` (see ``stat_tests.py``): called as ``test(x, y, confidence=, test_train_ratio=)``
with the cell's sample ``x`` and the baseline's ``y`` (aligned pair by pair when
``test.paired``), it returns a ``TestOutcome`` (statistic, two-tailed p-value, mean difference
and its confidence interval, df, n).
"""

from __future__ import annotations

from synthmix.registry import Registry
from synthmix.results import stat_tests as _t

STAT_TESTS: Registry[_t.StatTest] = Registry("statistical test")
STAT_TESTS.add("student", _t.StatTest("student", "unpaired two-tailed Student t-test", False, _t.student))
STAT_TESTS.add("welch", _t.StatTest("welch", "unpaired two-tailed Welch t-test", False, _t.welch))
STAT_TESTS.add("paired", _t.StatTest("paired", "paired two-tailed t-test", True, _t.paired))
STAT_TESTS.add("wilcoxon", _t.StatTest("wilcoxon", "Wilcoxon signed-rank test (paired)", True, _t.wilcoxon))
STAT_TESTS.add("corrected", _t.StatTest("corrected", "corrected resampled t-test (Nadeau-Bengio, paired)",
                                        True, _t.corrected, needs_ratio=True))

from synthmix.results.analysis import Analysis, analyse  # noqa: E402  (needs STAT_TESTS)
from synthmix.results.store import ResultSet, ResultsError, read_results  # noqa: E402
from synthmix.results.summary import summarise_study  # noqa: E402

__all__ = ["STAT_TESTS", "Analysis", "ResultSet", "ResultsError", "analyse", "read_results",
           "summarise_study"]
