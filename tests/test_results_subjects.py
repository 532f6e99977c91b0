"""Per-subject results (results/subjects/CELL_ID.parquet) through `synthmix results --per-subject`:
pairing by subject, means over resamples, stratification by metadata, box plots, plan filter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthmix.cli import main
from synthmix.results.store import read_subject_results
from synthmix.results.subjects import analyse_subjects

SUBJECTS = [f"sub-{i:03d}" for i in range(12)]
AGES = np.linspace(30, 85, len(SUBJECTS))


def _subject_rows(repeats: int = 2) -> pd.DataFrame:
    """2 real fractions x synthetic {0, 1} x `repeats` hold-out repeats of 6 test subjects each.
    Synthetic data helps old subjects (+0.05 above age 60) and nobody else."""
    rng = np.random.default_rng(0)
    records = []
    for repeat in range(repeats):
        tested = rng.choice(len(SUBJECTS), 6, replace=False)
        for rf in (0.5, 1.0):
            for syn in (0, 1.0):
                cell_id = f"rf{rf:g}-syn{syn:g}-f0-r{repeat}-abc"
                for i in tested:
                    gain = 0.05 * (AGES[i] > 60) * (syn > 0)
                    records.append({"study": "s", "cell_id": cell_id, "real_fraction": rf, "synthetic": syn,
                                    "fold": 0, "repeat": repeat, "subject_id": SUBJECTS[i], "age": AGES[i],
                                    "dice_mean": 0.7 + 0.1 * rf + gain + rng.normal(0, 0.01)})
    return pd.DataFrame(records)


@pytest.fixture
def study(tmp_path: Path) -> Path:
    rows = _subject_rows()
    root = tmp_path / "s"
    (root / "results" / "subjects").mkdir(parents=True)
    cells = rows[["cell_id", "real_fraction", "synthetic", "fold", "repeat"]].drop_duplicates()
    (root / "plan.json").write_text(json.dumps({"study": "s", "factors": ["real_fraction", "synthetic"],
                                                "baseline": {"synthetic": 0},
                                                "cells": cells.to_dict("records")}))
    for cell_id, part in rows.groupby("cell_id"):
        part.to_parquet(root / "results" / "subjects" / f"{cell_id}.parquet", index=False)
    return root


def _expected(rows: pd.DataFrame, rf: float, subjects=None) -> tuple[np.ndarray, np.ndarray]:
    means = rows.loc[rows.real_fraction == rf].groupby(["synthetic", "subject_id"]).dice_mean.mean()
    x, y = means.loc[1.0], means.loc[0.0]
    if subjects is not None:
        x, y = x[x.index.isin(subjects)], y[y.index.isin(subjects)]
    return x.sort_index().to_numpy(), y.sort_index().to_numpy()


def test_cells_are_paired_by_subject_over_resample_means(study: Path) -> None:
    analysis = analyse_subjects(read_subject_results(study))
    assert analysis.test == "paired" and analysis.unit == "subjects"
    rows = _subject_rows()
    for cell in analysis.cells.loc[~analysis.cells["baseline"]].to_dict("records"):
        x, y = _expected(rows, cell["real_fraction"])
        assert cell["n"] == len(x) == cell["n_pairs"]  # each subject once, whatever its repeats
        assert cell["p_value"] == pytest.approx(stats.ttest_rel(x, y).pvalue, abs=1e-12)
        assert cell["cohens_dz"] == pytest.approx(np.mean(x - y) / np.std(x - y, ddof=1), abs=1e-12)
    assert any("mean over them" in note for note in analysis.notes)


def test_stratified_by_age_bins(study: Path, capsys) -> None:
    assert main(["results", str(study), "--per-subject", "--by", "age", "--bins", "3"]) == 0
    out = capsys.readouterr().out
    assert "Q1/3 [30, " in out and "Q3/3 [" in out and "n=subjects per cell" in out
    assert "age: 3 quantile bins over " in out
    analysis = analyse_subjects(read_subject_results(study), by="age", bins=3)
    rows = _subject_rows()
    strata = analysis.data.groupby("subject_id")["age"].first()  # subject -> its bin
    age = rows.groupby("subject_id")["age"].first()
    ordered = [age[strata == label] for label in sorted(strata.unique())]
    assert all(a.max() < b.min() for a, b in zip(ordered, ordered[1:]))  # bins in age order
    assert max(map(len, ordered)) - min(map(len, ordered)) <= 1  # quantile bins over subjects
    for cell in analysis.cells.loc[~analysis.cells["baseline"]].to_dict("records"):
        x, y = _expected(rows, cell["real_fraction"], strata.index[strata == cell["age"]])
        assert cell["n"] == len(x)
        assert cell["diff"] == pytest.approx(np.mean(x - y), abs=1e-12)
    oldest = analysis.cells.loc[~analysis.cells["baseline"] & analysis.cells["age"].str.startswith("Q3")]
    youngest = analysis.cells.loc[~analysis.cells["baseline"] & analysis.cells["age"].str.startswith("Q1")]
    assert (oldest["diff"] > 0.03).all() and (youngest["diff"].abs() < 0.02).all()


def test_box_plot_over_subjects(study: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "subjects.png"
    assert main(["results", str(study), "--per-subject", "--by", "age", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_foreign_subject_rows_are_left_out_and_named(study: Path) -> None:
    stray = _subject_rows(repeats=1).assign(cell_id="old-cell", dice_mean=0.0)
    stray.to_parquet(study / "results" / "subjects" / "old-cell.parquet", index=False)
    result = read_subject_results(study)
    assert "old-cell" not in set(result.rows["cell_id"])
    assert any("old-cell.parquet" in note for note in result.notes)


@pytest.mark.parametrize("argv, message", [
    (["--per-subject", "--by", "height"], "no such metadata column"),
    (["--by", "age"], "add --per-subject"),
    (["--per-subject", "--test", "corrected"], "per subject, use paired"),
])
def test_bad_per_subject_requests_are_clear_errors(study: Path, capsys, argv, message) -> None:
    assert main(["results", str(study), *argv]) != 0
    assert message in capsys.readouterr().err
