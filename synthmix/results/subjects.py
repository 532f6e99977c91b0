"""Per-subject results: each cell's metrics on each of its test subjects, compared with the
baseline subject by subject, optionally stratified by a subject metadata column (001 Figs. 10-13:
box plots over subjects, improvement by age and CDR).

Cells of the same (fold, repeat) share their test set, so a cell and its baseline are paired by
subject. A subject tested in several resamples (repeated hold-out) contributes one value per
cell: its mean over those resamples, so each subject counts once. These tests generalise over
test subjects for the networks this study trained, not over new training sets; for claims about
training with synthetic data, use the per-cell table and its corrected test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthmix.results.analysis import AUTO, DEFAULT_METRIC, KNOWN_FACTORS, Analysis, analyse
from synthmix.results.filters import apply_filters
from synthmix.results.store import DESIGN_COLUMNS, ResultSet, ResultsError

SUBJECT = "subject_id"
#: Numeric metadata with at most this many distinct values is used as levels without binning.
MAX_LEVELS = 6
DEFAULT_BINS = 3


#: Column prefixes of per-subject metrics (synthmix.trainers.metrics); other columns of a
#: per-subject table that are not factors or design columns are subject metadata.
METRIC_PREFIXES = ("dice_", "hd95_", "hd_", "iou_", "precision_", "recall_", "slice_")


def metadata_columns(table: pd.DataFrame, factors: list[str]) -> list[str]:
    """The subject metadata columns of a per-subject table (age, lesion_load, ...)."""
    skip = set(factors) | set(DESIGN_COLUMNS) | {SUBJECT}
    return [c for c in table.columns if c not in skip and not c.startswith(METRIC_PREFIXES)]


def analyse_subjects(results: ResultSet, *, metric: str = DEFAULT_METRIC, rows: list[str] | None = None,
                     cols: list[str] | None = None, baseline: str | dict | None = None,
                     where: list[str] | tuple[str, ...] = (), test: str = AUTO,
                     correction: str = "holm", alpha: float = 0.05, by: str | None = None,
                     bins: int | None = None) -> Analysis:
    """Compare cells with their baseline over test subjects (paired by subject).

    Args mirror ``analyse``; ``by`` is a metadata column to stratify by (it becomes a table
    factor), ``bins`` the number of quantile bins for a numeric one (default 3 when it has more
    than MAX_LEVELS distinct values).
    """
    if test == "corrected":
        raise ResultsError("--test corrected is for per-cell rows over resamples; per subject, use "
                           "paired (the auto choice) or wilcoxon")
    table = results.rows
    if table.empty:
        raise ResultsError(f"{results.source or 'results'}: no per-subject rows")
    if SUBJECT not in table.columns:
        raise ResultsError(f"{results.source or 'results'}: per-subject rows need a {SUBJECT} column")
    factors = results.factors or [f for f in KNOWN_FACTORS if f in table.columns]
    selection = apply_filters(table, list(where))
    if selection.empty:
        raise ResultsError(f"empty selection: no per-subject rows match {' and '.join(map(repr, where))}")
    notes = list(results.notes)
    averaged, more = _mean_over_resamples(selection, factors)
    notes += more
    if by is not None:
        averaged, more = stratify(averaged, by, bins)
        notes += more
        factors = [*factors, by]
        if cols is not None and by not in cols and by not in (rows or []):
            cols = [*cols, by]
    return analyse(ResultSet(rows=averaged, factors=factors, baseline=results.baseline, notes=notes,
                             source=results.source),
                   metric=metric, rows=rows, cols=cols, baseline=baseline, test=test,
                   correction=correction, alpha=alpha, pair_keys=(SUBJECT,), unit="subjects")


def _mean_over_resamples(selection: pd.DataFrame, factors: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """One row per (factor levels, subject): metrics averaged over the resamples that tested
    the subject, metadata kept."""
    keys = [f for f in factors if f in selection.columns] + [SUBJECT]
    skip = set(keys) | set(DESIGN_COLUMNS)
    numeric = [c for c in selection.columns if c not in skip
               and pd.api.types.is_numeric_dtype(selection[c]) and not pd.api.types.is_bool_dtype(selection[c])]
    other = [c for c in selection.columns if c not in skip and c not in numeric]
    grouped = selection.groupby(keys, sort=True, dropna=False)
    averaged = grouped[numeric].mean()
    if other:
        averaged = averaged.join(grouped[other].first())
    averaged = averaged.reset_index()
    counts = grouped.size().to_numpy()
    notes = []
    if counts.max() > 1:
        notes.append(f"per subject: a subject tested in several resamples counts once per cell, with its "
                     f"mean over them ({counts.min()}-{counts.max()} resamples per subject and cell)")
    return averaged, notes


def stratify(table: pd.DataFrame, column: str, bins: int | None) -> tuple[pd.DataFrame, list[str]]:
    """``table`` with ``column`` replaced by its strata: quantile bins over subjects for a numeric
    column (labels ``Q1/3 [lo, hi]`` that sort in order), else its levels as they are."""
    if column not in table.columns:
        known = [c for c in table.columns if c not in DESIGN_COLUMNS and c != SUBJECT]
        raise ResultsError(f"--by {column!r}: no such metadata column; columns: {', '.join(known)}")
    values = table[column]
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if not numeric:
        if bins is not None:
            raise ResultsError(f"--bins: {column!r} is not numeric (e.g. {values.dropna().iloc[0]!r}); "
                               "its levels are the strata")
        return table.assign(**{column: values.astype(str)}), []
    per_subject = table.groupby(SUBJECT)[column].first().dropna()
    if bins is None and per_subject.nunique() <= MAX_LEVELS:
        return table, []
    bins = bins or DEFAULT_BINS
    if bins < 2:
        raise ResultsError(f"--bins must be at least 2, got {bins}")
    edges = np.unique(np.quantile(per_subject.to_numpy(dtype=float), np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:
        raise ResultsError(f"--by {column!r}: its values do not split into {bins} bins")
    k = len(edges) - 1
    width = len(str(k))  # Q01..Q10 sort in order
    labels = np.array([f"Q{i + 1:0{width}d}/{k} [{edges[i]:.3g}, {edges[i + 1]:.3g}]" for i in range(k)],
                      dtype=object)

    def bin_of(v: np.ndarray) -> np.ndarray:
        return labels[np.clip(np.searchsorted(edges, v, side="right") - 1, 0, k - 1)]

    strata = np.where(values.isna().to_numpy(), None, bin_of(values.to_numpy(dtype=float)))
    sizes = pd.Series(bin_of(per_subject.to_numpy(dtype=float))).value_counts().sort_index()
    note = (f"{column}: {k} quantile bins over {len(per_subject)} subjects: "
            + "; ".join(f"{label} ({n} subject{'' if n == 1 else 's'})" for label, n in sizes.items()))
    return table.assign(**{column: strata}), [note]
