"""`synthmix results` end to end through synthmix.cli.main on small Parquet/CSV fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthmix.cli import main
from synthmix.results import read_results, summarise_study
from synthmix.results.simulate import simulate_results

FACTORS = {"real_fraction": [0.1, 1.0], "synthetic": [0, 0.5], "architecture": ["unet", "uresnet"]}
MISSING_ROW = 3  # index into the simulated table of the row whose trial "failed"


def _rows() -> pd.DataFrame:
    return simulate_results(factors=FACTORS, folds=3, repeats=2, effects={"synthetic": {0.5: 0.03}},
                            study="tiny", seed=5)


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A study folder: plan.json for every cell, one Parquet row per finished cell, one missing."""
    rows = _rows()
    root = tmp_path / "storage" / "tiny"
    (root / "results").mkdir(parents=True)
    (root / "errors").mkdir()
    cells = rows[["cell_id", *FACTORS, "fold", "repeat"]].to_dict("records")
    (root / "plan.json").write_text(json.dumps({"study": "tiny", "factors": list(FACTORS),
                                                "baseline": {"synthetic": 0}, "cells": cells}))
    for i in range(len(rows)):
        if i == MISSING_ROW:
            (root / "errors" / f"{rows.loc[i, 'cell_id']}.json").write_text("{}")
            continue
        rows.iloc[[i]].to_parquet(root / "results" / f"{rows.loc[i, 'cell_id']}.parquet", index=False)
    return root


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["results", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_study_table_names_the_missing_cell(study: Path, capsys) -> None:
    code, out, _ = _run(capsys, str(study))
    assert code == 0
    missing = _rows().loc[MISSING_ROW]
    assert "\nsynthetic\n" in out and "real_fraction" in out and "architecture" in out
    assert f"missing results: synthetic=0, real_fraction=0.1, architecture={missing['architecture']}" in out
    assert f"5 of 6 planned rows (missing fold={missing['fold']} repeat={missing['repeat']}" in out
    assert f"failed: see errors/{missing['cell_id']}.json" in out
    assert "corrected resampled t-test" in out and "holm" in out
    # The baseline lost one row, so the cell paired with it has one unmatched row (5 pairs).
    assert (f"synthetic=0.5, real_fraction=0.1, architecture={missing['architecture']}: 1 row(s) "
            "without a fold/repeat partner in the other cell left out of the paired test (5 pairs)") in out


def test_a_group_of_one_row_is_reported(capsys, tmp_path: Path) -> None:
    rows = _rows().loc[lambda t: (t["synthetic"] == 0) | (t["fold"] == 0) & (t["repeat"] == 0)]
    path = tmp_path / "ones.parquet"
    rows.to_parquet(path, index=False)
    code, out, _ = _run(capsys, str(path), "--rows", "synthetic", "--cols", "real_fraction,architecture")
    assert code == 0
    # four one-row cells: one line each remark, naming the first cell and counting the others
    assert "only 1 row: synthetic=0.5, real_fraction=0.1, architecture=unet and 3 more cells: std and tests undefined" in out
    assert "synthetic=0.5, real_fraction=0.1, architecture=unet and 3 more cells: too few pairs for a test" in out


def test_study_by_name_under_storage_and_env(study: Path, capsys, monkeypatch) -> None:
    code, out, _ = _run(capsys, "tiny", "--storage", str(study.parent), "--format", "csv")
    assert code == 0 and out.startswith("synthetic,real_fraction,architecture,n,mean,std,baseline")
    monkeypatch.setenv("SYNTHMIX_STORAGE", str(study.parent))
    assert _run(capsys, "tiny", "--format", "csv")[1] == out
    uri = study.as_uri()  # file:///...: goes through pyarrow.fs.FileSystem.from_uri
    assert _run(capsys, uri, "--format", "csv")[1] == out


def test_json_fields_and_p_values_match_scipy(study: Path, capsys) -> None:
    code, out, err = _run(capsys, str(study), "--rows", "synthetic", "--cols", "real_fraction",
                          "--where", "architecture=unet", "--test", "welch", "--format", "json")
    assert code == 0
    records = json.loads(out)
    baselines = [r for r in records if r["baseline"]]
    compared = [r for r in records if not r["baseline"]]
    assert len(baselines) == len(compared) == 2
    assert set(baselines[0]) >= {"synthetic", "real_fraction", "n", "mean", "std", "baseline"}
    rows = _rows()
    rows = rows.loc[rows["architecture"] == "unet"].drop(index=MISSING_ROW, errors="ignore")
    for r in compared:
        assert set(r) >= {"n", "mean", "std", "baseline_n", "baseline_mean", "diff", "ci_low",
                          "ci_high", "cohens_d_pooled", "cohens_dz", "test", "p_value", "p_adjusted",
                          "significant", "ci_level", "ci_adjusted"}
        assert r["ci_adjusted"] is False and r["cohens_dz"] is None  # welch is unpaired: no d_z
        x = rows.loc[(rows.real_fraction == r["real_fraction"]) & (rows.synthetic == 0.5), "dice_mean"]
        y = rows.loc[(rows.real_fraction == r["real_fraction"]) & (rows.synthetic == 0), "dice_mean"]
        assert r["p_value"] == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue, abs=1e-10)
        assert (r["n"], r["baseline_n"]) == (len(x), len(y))
        assert r["mean"] == pytest.approx(x.mean()) and r["std"] == pytest.approx(x.std(ddof=1))
        assert r["test"] == "welch" and r["significant"] == (r["p_adjusted"] < 0.05)
    assert "welch is an unpaired test but this design is paired" in err


def test_paper_mode_is_unpaired_student_without_correction(study: Path, capsys) -> None:
    code, out, _ = _run(capsys, str(study), "--paper", "--format", "json")
    records = [r for r in json.loads(out) if not r["baseline"]]
    assert code == 0 and len(records) == 4
    assert all(r["test"] == "student" and r["correction"] == "none" for r in records)
    assert all(r["p_adjusted"] == r["p_value"] for r in records)


def test_files_with_different_metric_columns_keep_both(tmp_path: Path, capsys) -> None:
    rows = _rows()
    old, new = rows.iloc[::2], rows.iloc[1::2].assign(hd95_mean=np.linspace(1, 3, len(rows) // 2))
    folder = tmp_path / "mixed"
    folder.mkdir()
    old.to_parquet(folder / "a_old.parquet", index=False)  # first file: no hd95_mean
    new.to_parquet(folder / "b_new.parquet", index=False)
    result = read_results(folder)
    assert "hd95_mean" in result.rows.columns and len(result.rows) == len(rows)
    assert result.rows["hd95_mean"].notna().sum() == len(new)
    code, out, _ = _run(capsys, str(folder), "--metric", "hd95_mean", "--test", "welch",
                        "--rows", "synthetic", "--cols", "real_fraction,architecture")
    assert code == 0 and f"{len(old)} row(s) have no hd95_mean value and are left out" in out


def test_a_foreign_csv_without_fold_or_repeat(tmp_path: Path, capsys) -> None:
    rows = _rows().drop(columns=["fold", "repeat", "cell_id", "study"])
    path = tmp_path / "other.csv"
    rows.rename(columns={"architecture": "method"}).to_csv(path, index=False)
    code, out, _ = _run(capsys, str(path), "--rows", "synthetic", "--cols", "real_fraction,method",
                        "--baseline", "synthetic=0", "--format", "markdown")
    assert code == 0
    assert out.startswith("| synthetic | real_fraction=0.1, method=unet |")
    assert "Welch t-test; auto: no fold/repeat columns to pair on" in out
    code, _, err = _run(capsys, str(path), "--rows", "synthetic", "--cols", "real_fraction,method",
                        "--test", "paired")
    assert code != 0 and "match rows on fold and repeat, but the rows have no such column" in err


def test_corrected_test_of_a_5_fold_csv_uses_the_pool(tmp_path: Path, capsys) -> None:
    """t = mean(d) / sqrt((1/J + n_test/n_pool) var(d)), J - 1 df, with n_pool the split's pool
    (not the 1-subject subset each cell trained on)."""
    rng = np.random.default_rng(2)
    base = 0.7 + rng.normal(0, 0.02, 5)
    d = np.array([0.031, 0.024, 0.035, 0.029, 0.027])
    rows = [{"real_count": 1, "synthetic": s, "fold": f, "repeat": 0, "dice_mean": v,
             "n_train_subjects": 1, "n_pool_subjects": 24 + (f % 2), "n_test_subjects": 7 + (f == 0)}
            for s, values in ((0, base), (1, base + d)) for f, v in enumerate(values)]
    path = tmp_path / "folds.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    code, out, err = _run(capsys, str(path), "--test", "corrected", "--format", "json")
    assert code == 0, err
    (record,) = [r for r in json.loads(out) if not r["baseline"]]
    ratio = np.mean([r["n_test_subjects"] / r["n_pool_subjects"] for r in rows])
    t = d.mean() / np.sqrt((1 / 5 + ratio) * d.var(ddof=1))
    assert record["statistic"] == pytest.approx(t, abs=1e-10)
    assert record["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 4), abs=1e-10)
    assert record["df"] == 4 and record["n_pairs"] == 5
    assert record["p_value"] < 0.01  # a consistent +3 Dice over 5 folds is significant at count 1


def test_a_foreign_row_in_results_is_left_out_and_named(study: Path, capsys) -> None:
    before = read_results(study)
    foreign = before.rows.iloc[[0]].assign(cell_id="rf0.1-syn0-unet-f0-r0-deadbeef", dice_mean=0.1)
    foreign.to_parquet(study / "results" / "rf0.1-syn0-unet-f0-r0-deadbeef.parquet", index=False)
    after = read_results(study)
    assert len(after.rows) == len(before.rows)
    assert "deadbeef" not in set(after.rows["cell_id"])
    code, out, _ = _run(capsys, str(study), "--where", "architecture=unet")
    assert code == 0
    assert ("1 row(s) of cells not in plan.json left out (from another plan, e.g. before the data "
            "changed): rf0.1-syn0-unet-f0-r0-deadbeef.parquet") in out


def test_footer_says_intervals_are_not_multiplicity_adjusted(study: Path, capsys) -> None:
    code, out, _ = _run(capsys, str(study), "--where", "architecture=unet", "--test", "paired")
    assert code == 0
    assert "confidence intervals: 95% per comparison, not adjusted for multiplicity (holm decides" in out


def test_latex_and_summarise_study(study: Path, capsys) -> None:
    code, out, _ = _run(capsys, str(study), "--format", "latex", "--where", "real_fraction=1")
    assert code == 0 and out.startswith(r"\begin{tabular}") and r"$^\dagger$" in out
    text = summarise_study(study, test="paired")
    assert "paired two-tailed t-test" in text and "missing results" in text
    # The study schema's statistics section, passed through as keywords.
    text = summarise_study(study, test="student", correction="none", alpha=0.05, baseline={"synthetic": 0})
    assert "unpaired two-tailed Student t-test" in text and "correction: none" in text


@pytest.mark.parametrize("argv, message", [
    (["--rows", "colour"], "unknown factor 'colour'"),
    (["--metric", "dice_max"], "unknown metric 'dice_max'"),
    (["--metric", "architecture"], "metric 'architecture' is not numeric"),
    (["--baseline", "synthetic=7"], "no rows with synthetic=7 in the selection; levels present: 0, 0.5"),
    (["--where", "real_fraction>5"], "empty selection"),
    (["--rows", "synthetic", "--cols", "real_fraction"], "architecture (unet, uresnet)"),
    (["--test", "anova"], "unknown statistical test 'anova'; known: corrected, paired, student"),
])
def test_bad_input_is_a_clear_error(study: Path, capsys, argv: list[str], message: str) -> None:
    code, out, err = _run(capsys, str(study), *argv)
    assert code != 0 and out == ""
    assert message in err


def test_missing_source_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code, _, err = _run(capsys, "nope", "--storage", str(tmp_path))
    assert code != 0 and "no results at 'nope'" in err


@pytest.mark.parametrize("kind", ["line", "box"])
def test_plots_are_written(study: Path, tmp_path: Path, capsys, kind: str) -> None:
    path = tmp_path / f"{kind}.png"
    code, _, err = _run(capsys, str(study), "--test", "paired", "--plot", str(path), "--plot-kind", kind)
    assert code == 0 and f"wrote {path}" in err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_line_plot_needs_a_numeric_x(study: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run(capsys, str(study), "--rows", "synthetic", "--cols", "architecture",
                        "--where", "real_fraction=1", "--plot", str(tmp_path / "x.png"))
    assert code != 0 and "numeric factor for the x axis" in err


def test_a_remark_repeated_for_many_cells_is_given_once_with_its_count() -> None:
    from synthmix.results.tables import collapse_notes

    ones = [f"only 1 row: synthetic={s}: std and tests undefined" for s in (0.5, 1, 2, 3, 4)]
    pairs = [f"synthetic={s}: too few pairs for a test" for s in (0.5, 1)]
    notes = ["duplicate rows: x", *ones, *pairs]
    assert collapse_notes(notes) == ["duplicate rows: x",
                                     "only 1 row: synthetic=0.5 and 4 more cells: std and tests undefined", *pairs]
    assert collapse_notes(ones[:3]) == ones[:3]  # up to MAX_SAME of a kind stay one per cell
