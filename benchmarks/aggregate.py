"""Benchmark of the results aggregator (issue 5): 100,000 rows in 100 cells.

Simulates 5 real fractions x 2 architectures x 10 synthetic levels (100 cells) x 10 folds x
100 repeats (1,000 rows per cell), then times ``analyse`` (design checks, grouping, one test per
non-baseline cell, i.e. 90 comparisons, Holm correction over the table, effect sizes) for each
test, against a plain pandas groupby-mean of the same data in the same run. Prints the median
time, the ratio and whether the 2 s target is met; asserts nothing.

    .venv/bin/python benchmarks/aggregate.py [--repeats 5] [--tests corrected,paired,welch,wilcoxon]
"""

from __future__ import annotations

import argparse
import statistics
import time

from synthmix.results import analyse
from synthmix.results.simulate import simulate_results

FACTORS = {"real_fraction": [0.1, 0.25, 0.5, 0.75, 1.0], "architecture": ["unet", "uresnet"],
           "synthetic": [0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]}
TARGET_S = 2.0


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tests", default="corrected,paired,welch,wilcoxon")
    args = parser.parse_args()

    table = simulate_results(factors=FACTORS, folds=10, repeats=100, seed=0,
                             effects={"synthetic": {0.5: 0.01, 1.0: 0.005}})
    factors = list(FACTORS)
    print(f"rows: {len(table):,}  cells: {table.groupby(factors).ngroups}")
    reference, _ = timed(lambda: table.groupby(factors)["dice_mean"].mean(), args.repeats)
    print(f"pandas groupby-mean: {reference * 1000:.1f} ms")
    for test in args.tests.split(","):
        seconds, analysis = timed(lambda: analyse(table, rows=["synthetic"], cols=["real_fraction", "architecture"],
                                                  baseline="synthetic=0", test=test, correction="holm"),
                                  args.repeats)
        compared = int(analysis.cells["p_value"].notna().sum())
        verdict = "meets" if seconds < TARGET_S else "misses"
        print(f"analyse test={test:<9} holm, {compared} comparisons: {seconds * 1000:.1f} ms  "
              f"ratio to groupby-mean {seconds / reference:.0f}x  ({verdict} the {TARGET_S:g} s target)")


if __name__ == "__main__":
    main()
