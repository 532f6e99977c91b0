"""Design checks run before any test: are the cells complete, and is the grouping honest?

A Ray trial that errored leaves no row, so a missing result is silent unless the rows are
compared with the plan; a group of one row silently shows std NaN; a factor left out of the
table would silently pool different conditions into one cell. Each problem is reported by
cell name so the user can rerun or filter it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthmix.results.filters import FilterError, apply_filters
from synthmix.results.store import ResultsError

PAIR_KEYS = ("fold", "repeat")
_MAX_LISTED = 4


def format_level(value: object) -> str:
    """A factor level as the user typed it: 0.5 not 0.5000, 1 not 1.0."""
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{float(value):g}"
    return str(value)


def cell_name(factors: list[str], levels: tuple) -> str:
    return ", ".join(f"{f}={format_level(v)}" for f, v in zip(factors, levels)) or "all rows"


def check_pooling(selection: pd.DataFrame, factors: list[str], grouped: list[str]) -> None:
    """Raise if a study factor varies in the selection but is not a table dimension: its
    levels would be averaged together and pairs would no longer match one to one."""
    pooled = []
    for factor in factors:
        if factor in grouped or factor not in selection.columns:
            continue
        levels = selection[factor].dropna().unique()
        if len(levels) > 1:
            shown = ", ".join(format_level(v) for v in sorted(levels, key=str))
            pooled.append(f"{factor} ({shown})")
    if pooled:
        raise ResultsError(
            "factor(s) vary in the selection but are neither in --rows nor --cols, so different "
            f"conditions would be averaged into one cell: {'; '.join(pooled)}. Add them to --rows/"
            "--cols or pick one level with --where, e.g. --where '" + pooled[0].split(" ")[0] + "=...'")


def missing_rows(plan: pd.DataFrame | None, selection: pd.DataFrame, grouped: list[str],
                 where: list[str], failed: set[str] = frozenset()) -> list[str]:
    """One line per table cell that has fewer result rows than the study planned."""
    if plan is None or plan.empty or not set(grouped) <= set(plan.columns):
        return []
    planned = _planned_selection(plan, selection, grouped, where)
    done = set(selection["cell_id"].astype(str)) if "cell_id" in selection.columns else None
    notes = []
    for levels, cells in planned.groupby(grouped, sort=True, dropna=False) if grouped else [((), planned)]:
        levels = levels if isinstance(levels, tuple) else (levels,)
        if done is not None and "cell_id" in cells.columns:
            absent = cells.loc[~cells["cell_id"].astype(str).isin(done)]
        else:
            absent = cells.iloc[: max(0, len(cells) - _count(selection, grouped, levels))]
        if len(absent):
            notes.append(f"missing results: {cell_name(grouped, levels)}: {len(cells) - len(absent)} "
                         f"of {len(cells)} planned rows ({_describe(absent, failed)})")
    return notes


def small_groups(counts: pd.DataFrame, grouped: list[str]) -> list[str]:
    """Cells with a single row: their std and any test are undefined."""
    ones = counts.loc[counts["n"] == 1]
    return [f"only 1 row: {cell_name(grouped, tuple(r[g] for g in grouped))}: std and tests undefined"
            for _, r in ones.iterrows()]


def duplicate_cells(selection: pd.DataFrame) -> list[str]:
    if "cell_id" not in selection.columns:
        return []
    counts = selection["cell_id"].value_counts()
    repeated = counts.loc[counts > 1]
    return [f"cell_id {cid} appears {n} times (one row per cell is expected)" for cid, n in repeated.items()]


def _planned_selection(plan: pd.DataFrame, selection: pd.DataFrame, grouped: list[str],
                       where: list[str]) -> pd.DataFrame:
    try:
        return apply_filters(plan, where)
    except FilterError:
        # A filter on a metric column cannot apply to the plan: keep the planned cells of the
        # table cells that appear in the selection.
        present = selection[grouped].drop_duplicates()
        return plan.merge(present, on=grouped, how="inner")


def _count(selection: pd.DataFrame, grouped: list[str], levels: tuple) -> int:
    mask = np.ones(len(selection), dtype=bool)
    for factor, level in zip(grouped, levels):
        mask &= (selection[factor] == level).to_numpy()
    return int(mask.sum())


def _describe(absent: pd.DataFrame, failed: set[str]) -> str:
    keys = [k for k in PAIR_KEYS if k in absent.columns]
    items = []
    for _, row in absent.head(_MAX_LISTED).iterrows():
        coords = " ".join(f"{k}={format_level(row[k])}" for k in keys)
        cid = ""
        if "cell_id" in absent.columns:
            status = ", failed: see errors/" + f"{row['cell_id']}.json" if str(row["cell_id"]) in failed else ""
            cid = f" [{row['cell_id']}{status}]"
        items.append((coords + cid).strip())
    more = f", and {len(absent) - _MAX_LISTED} more" if len(absent) > _MAX_LISTED else ""
    return "missing " + "; ".join(items) + more
