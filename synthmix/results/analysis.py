"""Compare every cell of a results table with its baseline.

A *cell* is one combination of the table's row and column factor levels (over folds and
repeats). The baseline (``synthetic=0``) is compared within each *stratum*: the same levels of
all other table factors (same real fraction, same architecture, ...). Paired tests match rows on
fold and repeat, which is valid because cells of the same (fold, repeat, real fraction) train on
the same real subjects and are tested on the same test subjects. All p-values of the table form
one family for the multiple-comparison correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from synthmix.results import STAT_TESTS
from synthmix.results.design import (PAIR_KEYS, cell_name, check_pooling, duplicate_cells,
                                     format_level, missing_rows, small_groups)
from synthmix.results.filters import apply_filters
from synthmix.results.stat_tests import CORRECTIONS, StatTest, adjust_pvalues, cohens_d, cohens_dz
from synthmix.results.store import DESIGN_COLUMNS, ResultSet, ResultsError, baseline_text

DEFAULT_METRIC = "dice_mean"
AUTO = "auto"
#: Columns for n_train and n_test of the corrected test, in subjects: the unit that is resampled.
#: n_train is the pool a resample's training subset is drawn from (labelled, neither test nor
#: validation), not the subset itself; ``n_train_subjects`` is read only when a table has no pool.
N_POOL_COLUMN, N_TRAIN_COLUMN, N_TEST_COLUMN = "n_pool_subjects", "n_train_subjects", "n_test_subjects"
#: Factor names of synthmix studies: the factors of a table that comes without a plan.json.
KNOWN_FACTORS = ("real_fraction", "real_count", "synthetic", "architecture", "augmentation",
                 "generator", "classes")

COMPARISON_COLUMNS = ["baseline_n", "baseline_mean", "diff", "ci_low", "ci_high", "cohens_d_pooled",
                      "cohens_dz", "test", "statistic", "df", "n_pairs", "p_value", "p_adjusted",
                      "significant"]


@dataclass
class Analysis:
    """The compared table.

    ``cells`` has one row per cell: the factor columns of ``rows`` and ``cols``, then ``n``,
    ``mean``, ``std``, ``baseline`` (bool) and the comparison columns (NaN/None for baseline
    cells and cells without a baseline). ``notes`` are design problems and caveats, one line each.
    """

    cells: pd.DataFrame
    rows: list[str]
    cols: list[str]
    metric: str
    baseline_factor: str | None
    baseline_level: object
    test: str | None
    test_label: str
    correction: str
    alpha: float
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame | None = None  # the rows that went into the cells (for box plots)
    unit: str = "rows"  # what n counts: "rows" (one per cell and resample) or "subjects"
    shared: list[str] = field(default_factory=list)  # factors whose baseline cells serve every level (generator)

    @property
    def factors(self) -> list[str]:
        return self.rows + self.cols

    def to_records(self) -> list[dict]:
        """One JSON-ready dict per cell (NaN -> None); baseline cells carry ``baseline: true``."""
        records = []
        for row in self.cells.to_dict(orient="records"):
            record = {f: _plain(row[f]) for f in self.factors}
            record.update(metric=self.metric, n=int(row["n"]), mean=_plain(row["mean"]),
                          std=_plain(row["std"]))
            if row["baseline"]:
                record["baseline"] = True
            else:
                record["baseline"] = False
                # A study without a baseline level (every cell uses synthetic data) has no comparison columns.
                record.update({c: _plain(row.get(c)) for c in COMPARISON_COLUMNS})
                for count in ("baseline_n", "n_pairs"):
                    record[count] = None if record[count] is None else int(record[count])
                record["alpha"] = self.alpha
                record["correction"] = self.correction
                record["ci_level"] = 1 - self.alpha
                record["ci_adjusted"] = False  # per comparison; the correction decides significance only
            records.append(record)
        return records


def analyse(results: ResultSet | pd.DataFrame, *, metric: str = DEFAULT_METRIC,
            rows: list[str] | None = None, cols: list[str] | None = None,
            baseline: str | dict | None = None, where: list[str] | tuple[str, ...] = (),
            test: str = AUTO, correction: str = "holm", alpha: float = 0.05,
            n_train: float | None = None, n_test: float | None = None,
            pair_keys: tuple[str, ...] = PAIR_KEYS, unit: str = "rows", by: str | None = None) -> Analysis:
    """Group ``results`` into cells, check the design, test each cell against its baseline.

    Args:
        results: a ResultSet (rows + plan) or a bare DataFrame of rows.
        metric: the column to compare.
        rows, cols: table factors. Defaults: the baseline factor (or ``synthetic``) as rows and
            every other factor that varies in the selection as columns.
        baseline: ``"factor=level"`` or ``{factor: level}``; default: the plan's baseline, else
            ``synthetic=0`` when that level exists.
        where: ``--where`` expressions (see filters.py), ANDed.
        test: a ``STAT_TESTS`` name or ``"auto"`` (see ``choose_test``).
        correction: ``holm``, ``bh`` or ``none``, over all comparisons of the table.
        alpha: significance level after correction; confidence intervals are at 1 - alpha.
        n_train, n_test: override the per-row subject counts used by the corrected test
            (default: ``n_pool_subjects`` and ``n_test_subjects``).
        pair_keys: the columns that match a row with its baseline partner in paired tests
            (fold and repeat; ``subject_id`` for per-subject tables).
        unit: what a row is, for the footer ("rows" or "subjects").
        by: a factor that leads the columns (``--by generator``: a block per generator level,
            each compared with the baseline it shares with the others).
    """
    result_set = results if isinstance(results, ResultSet) else ResultSet(rows=results)
    if correction not in CORRECTIONS:
        raise ResultsError(f"unknown correction {correction!r}; known: {', '.join(CORRECTIONS)}")
    if not 0 < alpha < 1:
        raise ResultsError(f"alpha must be between 0 and 1, got {alpha}")
    if test != AUTO:
        STAT_TESTS.get(test)  # an unknown name fails here, listing the known ones
    where = list(where)
    selection = _select(result_set, where)
    factors = result_set.factors or [f for f in KNOWN_FACTORS if f in selection.columns]
    _check_metric(selection, metric, factors)
    # The plan's baseline applies when the table can show its factor (default rows do).
    planned = result_set.baseline if baseline is None else None
    if by is not None:
        cols = _by(selection, factors, by, rows, cols)
    rows, cols = _dimensions(selection, factors, rows, cols, baseline_text(baseline) or planned)
    grouped = rows + cols
    check_pooling(selection, factors, grouped)
    if planned and planned.partition("=")[0] in grouped:
        baseline = planned
    base_factor, base_level = _baseline(selection, grouped, baseline_text(baseline))

    notes = list(result_set.notes) + duplicate_cells(selection) + missing_rows(
        result_set.plan, selection, grouped, where, failed=result_set.failed)
    selection, dropped = _drop_missing_metric(selection, metric)
    notes += dropped
    cells = _summaries(selection, grouped, metric)
    notes += small_groups(cells, grouped)

    analysis = Analysis(cells=cells, rows=rows, cols=cols, metric=metric, baseline_factor=base_factor,
                        baseline_level=base_level, test=None, test_label="", correction=correction,
                        alpha=alpha, notes=notes, data=selection, unit=unit)
    if base_factor is None:
        analysis.notes.append("no baseline: showing mean (std) only; pass --baseline FACTOR=LEVEL to test")
        cells["baseline"] = False
        return analysis
    ratio, ratio_note = _ratio_source(selection, n_train, n_test)
    chosen, reason = choose_test(test, selection, ratio is not None, pair_keys)
    analysis.test, analysis.test_label = chosen.name, f"{chosen.label}{reason}"
    if ratio_note and chosen.needs_ratio:
        analysis.notes.append(ratio_note)
    is_base = _level_mask(cells[base_factor], base_level)
    analysis.shared = [f for f in shared_by_baseline(cells, is_base) if f in grouped and f != base_factor]
    for f in analysis.shared:
        level = format_level(cells.loc[is_base, f].iloc[0])
        analysis.notes.append(f"the baseline cells ({f}={level}) are shared: every level of {f} is compared with them")
    analysis.cells = _compare(selection, cells, grouped, metric, base_factor, base_level, chosen,
                              ratio, alpha, correction, analysis.notes, pair_keys)
    if not chosen.paired and _pairable(selection, pair_keys):
        analysis.notes.append(f"note: {chosen.name} is an unpaired test but this design is paired "
                              f"(cells are matched on {'/'.join(pair_keys)}); --test paired uses that")
    return analysis


def choose_test(name: str, selection: pd.DataFrame, has_ratio: bool,
                pair_keys: tuple[str, ...] = PAIR_KEYS) -> tuple[StatTest, str]:
    """The registry entry for ``name``; for ``auto``: the corrected resampled t-test when rows
    pair on fold/repeat, there is more than one resample and n_test/n_pool is known; else the
    paired t-test when rows pair; else Welch (no equal-variance assumption)."""
    if name != AUTO:
        return STAT_TESTS.get(name), ""
    keys = [k for k in pair_keys if k in selection.columns]
    if not keys:
        return STAT_TESTS.get("welch"), "; auto: no fold/repeat columns to pair on"
    resamples = len(selection[keys].drop_duplicates())
    if has_ratio and resamples > 1:
        return STAT_TESTS.get("corrected"), f"; auto: paired on {'/'.join(keys)}, {resamples} resamples"
    return STAT_TESTS.get("paired"), f"; auto: paired on {'/'.join(keys)}"


def _select(result_set: ResultSet, where: list[str]) -> pd.DataFrame:
    table = result_set.rows
    if table.empty:
        raise ResultsError(f"{result_set.source or 'results'}: no results rows (no cell has finished)")
    selection = apply_filters(table, where)
    if selection.empty:
        raise ResultsError(f"empty selection: no rows of {result_set.source or 'the results'} "
                           f"match {' and '.join(repr(w) for w in where)}")
    return selection


def _check_metric(selection: pd.DataFrame, metric: str, factors: list[str]) -> None:
    if metric not in selection.columns:
        raise ResultsError(f"unknown metric {metric!r}; numeric columns: {', '.join(_metric_like(selection, factors))}")
    column = selection[metric]
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise ResultsError(f"metric {metric!r} is not numeric (dtype {column.dtype}, e.g. "
                           f"{column.dropna().iloc[0]!r})" if column.notna().any() else
                           f"metric {metric!r} has no values")


def _metric_like(table: pd.DataFrame, factors: list[str]) -> list[str]:
    skip = set(factors) | set(DESIGN_COLUMNS)
    return [c for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c])
            and not pd.api.types.is_bool_dtype(table[c])]


def _dimensions(selection: pd.DataFrame, factors: list[str], rows: list[str] | None,
                cols: list[str] | None, baseline: str | None) -> tuple[list[str], list[str]]:
    for name in (rows or []) + (cols or []):
        if name not in selection.columns:
            known = factors or [c for c in selection.columns if c not in DESIGN_COLUMNS]
            raise ResultsError(f"unknown factor {name!r}; factors: {', '.join(known)}")
    varying = [f for f in factors if f in selection.columns and selection[f].nunique(dropna=True) > 1]
    if rows is None:
        base = baseline.partition("=")[0].strip() if baseline else "synthetic"
        rows = [base] if base in selection.columns and base not in (cols or []) else []
    if cols is None:
        cols = [f for f in varying if f not in rows]
    overlap = set(rows) & set(cols)
    if overlap:
        raise ResultsError(f"factor(s) in both --rows and --cols: {', '.join(sorted(overlap))}")
    return list(rows), list(cols)


def _by(selection: pd.DataFrame, factors: list[str], by: str, rows: list[str] | None,
        cols: list[str] | None) -> list[str]:
    """The columns with factor ``by`` first (then ``cols``, or every other varying factor)."""
    if by not in factors or by not in selection.columns:
        raise ResultsError(f"--by {by!r}: not a factor of these results; factors: {', '.join(factors)}")
    if by in (rows or []):
        raise ResultsError(f"--by {by!r} is also in --rows")
    rest = cols if cols is not None else [f for f in factors if f in selection.columns and f not in (rows or [])
                                          and f != "synthetic" and selection[f].nunique(dropna=True) > 1]
    return [by, *[f for f in rest if f != by]]


def _baseline(selection: pd.DataFrame, grouped: list[str], text: str | None) -> tuple[str | None, object]:
    if text is None:
        if "synthetic" in grouped and _match_level(selection["synthetic"], "0") is not None:
            return "synthetic", _match_level(selection["synthetic"], "0")
        return None, None
    factor, sep, level = (part.strip() for part in text.partition("="))
    if not sep or not factor or not level:
        raise ResultsError(f"--baseline {text!r}: expected FACTOR=LEVEL, e.g. synthetic=0")
    if factor not in selection.columns:
        raise ResultsError(f"--baseline {text!r}: unknown factor {factor!r}")
    if factor not in grouped:
        raise ResultsError(f"--baseline {text!r}: {factor} must be one of the table's factors "
                           f"({', '.join(grouped) or 'none'}); add it to --rows or --cols")
    matched = _match_level(selection[factor], level)
    if matched is None:
        present = ", ".join(format_level(v) for v in sorted(selection[factor].dropna().unique(), key=str))
        raise ResultsError(f"--baseline {text!r}: no rows with {factor}={level} in the selection; "
                           f"levels present: {present}")
    return factor, matched


def _match_level(column: pd.Series, level: str) -> object:
    """The level of ``column`` that ``level`` (text) names, in the column's own type."""
    levels = column.dropna().unique()
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        try:
            wanted = float(level)
        except ValueError:
            return None
        hits = [v for v in levels if np.isclose(float(v), wanted, rtol=1e-9, atol=1e-12)]
    else:
        hits = [v for v in levels if str(v) == level or str(v).lower() == level.lower()]
    return hits[0] if hits else None


def _drop_missing_metric(selection: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list[str]]:
    missing = selection[metric].isna()
    if not missing.any():
        return selection, []
    ids = selection.loc[missing, "cell_id"].astype(str).tolist() if "cell_id" in selection.columns else []
    shown = f" ({', '.join(ids[:4])}{', ...' if len(ids) > 4 else ''})" if ids else ""
    return selection.loc[~missing], [f"{int(missing.sum())} row(s) have no {metric} value and are left out{shown}"]


def _summaries(selection: pd.DataFrame, grouped: list[str], metric: str) -> pd.DataFrame:
    if not grouped:
        values = selection[metric]
        return pd.DataFrame({"n": [values.count()], "mean": [values.mean()], "std": [values.std()]})
    stats = selection.groupby(grouped, sort=True, dropna=False)[metric].agg(["count", "mean", "std"])
    return stats.rename(columns={"count": "n"}).reset_index()


def _pairable(selection: pd.DataFrame, pair_keys: tuple[str, ...] = PAIR_KEYS) -> bool:
    return any(k in selection.columns for k in pair_keys)


def _ratio_source(selection: pd.DataFrame, n_train: float | None,
                  n_test: float | None) -> tuple[pd.Series | float | None, str]:
    """n_test / n_train of the corrected test, and a note on where it came from: a constant
    from the flags, else per row n_test_subjects / n_pool_subjects. Rows without a pool column
    (other tools' tables, older synthmix rows) fall back to n_train_subjects, with a note."""
    if (n_train is None) != (n_test is None):
        raise ResultsError("give both --n-train and --n-test (or neither, to read them per row)")
    if n_train is not None:
        if n_train <= 0 or n_test <= 0:
            raise ResultsError(f"--n-train and --n-test must be positive, got {n_train} and {n_test}")
        return float(n_test) / float(n_train), ""
    if N_TEST_COLUMN not in selection.columns:
        return None, ""
    for column in (N_POOL_COLUMN, N_TRAIN_COLUMN):
        if column in selection.columns:
            ratio = selection[N_TEST_COLUMN].astype(float) / selection[column].astype(float)
            if ratio.notna().any():
                note = "" if column == N_POOL_COLUMN else (
                    f"note: the rows have no {N_POOL_COLUMN} column, so the corrected test's n_train is "
                    f"{N_TRAIN_COLUMN}; if the rows train on subsets of a larger pool, that overstates "
                    "the variance: pass --n-train POOL --n-test N")
                return ratio, note
    return None, ""


def _compare(selection: pd.DataFrame, cells: pd.DataFrame, grouped: list[str], metric: str,
             base_factor: str, base_level: object, test: StatTest, ratio: pd.Series | float | None,
             alpha: float, correction: str, notes: list[str],
             pair_keys: tuple[str, ...] = PAIR_KEYS) -> pd.DataFrame:
    if test.needs_ratio and ratio is None:
        raise ResultsError(f"the {test.name} test needs n_test/n_train: the rows have no "
                           f"{N_TEST_COLUMN} and {N_POOL_COLUMN} columns; pass --n-train and --n-test")
    values = selection[metric].to_numpy(dtype=float)
    pair_codes = _pair_codes(selection, pair_keys) if test.paired else None
    ratios = ratio.to_numpy(dtype=float) if isinstance(ratio, pd.Series) else ratio
    groups = selection.groupby(grouped, sort=True, dropna=False).indices
    index = {(k if isinstance(k, tuple) else (k,)): v for k, v in groups.items()}
    is_base = _level_mask(cells[base_factor], base_level)
    shared = [f for f in shared_by_baseline(cells, is_base) if f in grouped and f != base_factor]
    strata = [f for f in grouped if f != base_factor and f not in shared]
    base_of = {_key(r, strata): _key(r, grouped) for r in cells.loc[is_base].to_dict("records")}

    out = [_empty_comparison() for _ in range(len(cells))]
    for i, row in enumerate(cells.to_dict("records")):
        if is_base[i]:
            continue
        base_key = base_of.get(_key(row, strata))
        name = cell_name(grouped, _key(row, grouped))
        if base_key is None:
            notes.append(f"no baseline {base_factor}={format_level(base_level)} for {name}: not tested")
            continue
        x_idx, y_idx = index[_key(row, grouped)], index[base_key]
        out[i] = _one(test, values, x_idx, y_idx, pair_codes, ratios, alpha, name, notes, pair_keys)
    comparisons = pd.DataFrame(out, index=cells.index)
    comparisons["p_adjusted"] = adjust_pvalues(comparisons["p_value"].to_numpy(dtype=float), correction)
    tested = comparisons["p_adjusted"].notna().to_numpy()
    comparisons["significant"] = np.where(tested, comparisons["p_adjusted"].to_numpy() < alpha, None)
    result = pd.concat([cells, comparisons[COMPARISON_COLUMNS]], axis=1)
    result.insert(len(grouped) + 3, "baseline", is_base)
    return result


def shared_by_baseline(cells: pd.DataFrame, is_base: np.ndarray) -> list[str]:
    """Factors whose baseline cells all sit at one level that no other cell has: a synthmix
    study's generator factor, where the cells without synthetic data run once at level
    ``none`` and are the baseline of every generator level. The baseline is then looked up
    without them (each generator level is paired with the same baseline rows)."""
    if not is_base.any() or is_base.all():
        return []
    out = []
    for factor in cells.columns:
        if factor in ("n", "mean", "std"):
            continue
        base_levels = set(cells.loc[is_base, factor].astype(str))
        if len(base_levels) == 1 and not base_levels & set(cells.loc[~is_base, factor].astype(str)):
            out.append(factor)
    return out


def _one(test: StatTest, values: np.ndarray, x_idx: np.ndarray, y_idx: np.ndarray,
         pair_codes: np.ndarray | None, ratios: np.ndarray | float | None, alpha: float,
         name: str, notes: list[str], pair_keys: tuple[str, ...] = PAIR_KEYS) -> dict:
    x_all, y_all = values[x_idx], values[y_idx]
    base = {"baseline_n": len(y_idx), "baseline_mean": float(np.mean(y_all)),
            "cohens_d_pooled": cohens_d(x_all, y_all), "cohens_dz": np.nan, "test": test.name}
    if test.paired:
        x_idx, y_idx = _pairs(pair_codes, x_idx, y_idx, name, notes, pair_keys)
        base["cohens_dz"] = cohens_dz(values[x_idx], values[y_idx])
    row_ratio = ratios if not isinstance(ratios, np.ndarray) else float(np.nanmean(ratios[np.concatenate([x_idx, y_idx])]))
    if len(x_idx) < 2 or len(y_idx) < 2:
        notes.append(f"{name}: too few {'pairs' if test.paired else 'rows'} for a test")
        return {**_empty_comparison(), **base, "n_pairs": len(x_idx) if test.paired else None}
    outcome = test(values[x_idx], values[y_idx], confidence=1 - alpha, test_train_ratio=row_ratio)
    if np.isnan(outcome.p_value):
        notes.append(f"{name}: {test.name} test undefined (no variation in the differences)")
    if test.paired and outcome.n < len(x_idx):
        notes.append(f"{name}: {test.name} ranked {outcome.n} of {len(x_idx)} pairs "
                     f"({len(x_idx) - outcome.n} zero difference(s) dropped)")
    return {**base, "diff": outcome.diff, "ci_low": outcome.ci_low, "ci_high": outcome.ci_high,
            "statistic": outcome.statistic, "df": outcome.df,
            "n_pairs": outcome.n if test.paired else None, "p_value": outcome.p_value}


def _pair_codes(selection: pd.DataFrame, pair_keys: tuple[str, ...] = PAIR_KEYS) -> np.ndarray:
    keys = [k for k in pair_keys if k in selection.columns]
    if not keys:
        raise ResultsError(f"paired tests match rows on {' and '.join(pair_keys)}, but the rows have "
                           "no such column; use --test welch or --test student")
    return selection.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()


def _pairs(codes: np.ndarray, x_idx: np.ndarray, y_idx: np.ndarray, name: str,
           notes: list[str], pair_keys: tuple[str, ...] = PAIR_KEYS) -> tuple[np.ndarray, np.ndarray]:
    cx, cy = codes[x_idx], codes[y_idx]
    keys = "/".join(pair_keys)
    for label, c in ((name, cx), ("its baseline", cy)):
        if len(np.unique(c)) != len(c):
            raise ResultsError(f"{name}: {label} has several rows for the same {keys}, so "
                               "pairs are ambiguous; a factor not in --rows/--cols probably varies "
                               "(add it, or filter with --where)")
    _, ix, iy = np.intersect1d(cx, cy, assume_unique=True, return_indices=True)
    unmatched = len(cx) - len(ix) + len(cy) - len(iy)
    if unmatched:
        notes.append(f"{name}: {unmatched} row(s) without a {keys} partner in the other cell "
                     f"left out of the paired test ({len(ix)} pairs)")
    return x_idx[ix], y_idx[iy]


def _level_mask(column: pd.Series, level: object) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return np.isclose(column.to_numpy(dtype=float), float(level), rtol=1e-9, atol=1e-12)
    return (column == level).to_numpy(dtype=bool)


def _key(row: dict, factors: list[str]) -> tuple:
    return tuple(row[f] for f in factors)


def _empty_comparison() -> dict:
    return {c: np.nan for c in COMPARISON_COLUMNS if c not in ("test", "significant", "n_pairs")} | {
        "test": None, "n_pairs": None, "significant": None}


def _plain(value: object) -> object:
    if value is None:
        return None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    return value
