"""The generator comparison of a study with factor generator (a bake-off): per level, its
generators' quality figures next to their references, and its paired Dice differences against
the baseline that every level shares, per real amount and synthetic level.

Pure functions over the results rows and an ``Analysis`` (no Ray, no files): the report adds
the sample grids from the artifact store. A generator's figures are read from the rows'
``gen_<figure>`` columns (copied from its quality.json), once per generator key, so a generator
that serves several cells counts once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthmix.results.analysis import Analysis
from synthmix.results.design import format_level

FACTOR = "generator"
#: (figure, what it says): each shown with its ``_real`` floor and ``_untrained`` reference where
#: quality.json has them (synthmix.trainers.quality).
FIGURES = (("swd", "multi-scale sliced Wasserstein distance to the training slices; its floor is real vs real"),
           ("swd_vs_floor", "SWD gap to the real floor in units of its spread (0: as close as real data)"),
           ("fcn_dice_mean", "FCN score: a segmenter trained on the real subset, Dice on the synthetic pairs"),
           ("blur", "variance of the Laplacian (higher: sharper)"),
           ("nn_distance", "memorisation: L2 distance of each sample to its nearest training slice"))
REFERENCES = (("", ""), ("_real", " real"), ("_untrained", " untrained"))


def has_generator_factor(factors: list[str], rows: pd.DataFrame) -> bool:
    return FACTOR in factors and FACTOR in rows.columns and "generator_key" in rows.columns


def generator_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per trained generator (key) with its level and its ``gen_`` figures."""
    keyed = rows.loc[rows["generator_key"].fillna("").astype(str) != ""]
    return keyed.drop_duplicates("generator_key")


def quality_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per generator level (in the rows' order): the number of generators and the mean of each
    figure with its references, over the level's generators."""
    gens = generator_rows(rows)
    out = []
    for level in dict.fromkeys(gens[FACTOR].tolist()):
        at = gens.loc[gens[FACTOR] == level]
        record: dict = {FACTOR: level, "generators": len(at)}
        for figure, _ in FIGURES:
            for suffix, label in REFERENCES:
                column = f"gen_{figure}{suffix}"
                if column in at and at[column].notna().any():
                    record[f"{figure}{label}"] = float(at[column].astype(float).mean())
        out.append(record)
    return pd.DataFrame(out)


def dice_differences(analysis: Analysis, real_factor: str) -> pd.DataFrame:
    """Per generator level (rows): the paired difference of the analysis metric against the
    baseline with its confidence interval, one column per (real amount, synthetic level, any
    other table factor); "-" where the cell was not tested."""
    if FACTOR not in analysis.factors or analysis.baseline_factor is None:
        return pd.DataFrame()
    records = [r for r in analysis.to_records() if not r["baseline"]]
    others = [f for f in analysis.factors if f != FACTOR]
    order = [real_factor] + [f for f in others if f != real_factor] if real_factor in others else others
    table: dict = {}
    columns = sorted({tuple(r[f] for f in order) for r in records}, key=lambda k: [str(v) for v in k])
    if real_factor in order:  # numeric amounts in numeric order
        columns.sort(key=lambda k: float(k[0]))
    for r in records:
        column = ", ".join(f"{f}={format_level(r[f])}" for f in order)
        table.setdefault(r[FACTOR], {})[column] = _difference(r)
    names = [", ".join(f"{f}={format_level(v)}" for f, v in zip(order, k)) for k in columns]
    frame = pd.DataFrame.from_dict(table, orient="index").reindex(columns=names).fillna("-")
    frame.index.name = FACTOR
    return frame


def _difference(record: dict) -> str:
    diff, low, high = record.get("diff"), record.get("ci_low"), record.get("ci_high")
    if diff is None or not np.isfinite(diff):
        return "-"
    interval = f" [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None else ""
    p = record.get("p_adjusted")
    mark = " *" if record.get("significant") else ""
    return f"{diff:+.3f}{interval}" + (f" p={p:.3g}" if p is not None else "") + mark


def grid_keys(rows: pd.DataFrame, real_factor: str) -> dict:
    """Per generator level: the key whose sample grid the report shows, the same resample for
    every level (the largest real amount, the first repeat and fold) so the grids are comparable."""
    gens = generator_rows(rows)
    if gens.empty:
        return {}
    sort = [c for c in (real_factor, "repeat", "fold") if c in gens.columns]
    ascending = [c != real_factor for c in sort]
    gens = gens.sort_values(sort, ascending=ascending, kind="stable")
    return {level: at["generator_key"].iloc[0] for level, at in gens.groupby(FACTOR, sort=False)}
