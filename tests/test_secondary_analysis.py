"""001's secondary analysis (results/secondary.py): per cell, a logistic regression on the
unlabelled subjects' structure volumes predicts a metadata label; its accuracy and AUC over
repeated stratified cross-validation, each cell against its baseline cell. The end-to-end run
(a real Ray study with evaluate: {unlabelled: true}, then `synthmix results --stratify`) is in
tests/test_generator_blocks.py, which runs that tiny study anyway."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from synthmix.results.secondary import binary_target, render_secondary, secondary_analysis
from synthmix.results.store import ResultSet, ResultsError


def _study(n: int = 24, seed: int = 0) -> ResultSet:
    """Two cells of one fold: the baseline's volumes carry no age signal, the synthetic cell's
    ventricle volume grows with age (what 001 hoped the older unlabelled images would teach)."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 90, n)
    rows = []
    for cell, synthetic, signal in (("c-base", "1:0", 0.0), ("c-syn", "1:1", 1.0)):
        for i in range(n):
            rows.append({"study": "s", "cell_id": cell, "real_count": 3, "synthetic": synthetic, "fold": 0,
                         "repeat": 0, "subject_id": f"u{i:02d}", "age": age[i],
                         "volume_1": rng.normal(100, 5), "volume_2": rng.normal(20, 2) + signal * age[i] / 5,
                         "dice_mean": rng.uniform(0.6, 0.9)})
    return ResultSet(rows=pd.DataFrame(rows), factors=["real_count", "synthetic"], baseline="synthetic=1:0")


def test_per_cell_accuracy_and_auc_against_sklearn_directly_and_the_baseline():
    results = _study()
    cells, footer = secondary_analysis(results, "age", folds=4, repeats=3, seed=7)
    assert list(cells["cell_id"]) == ["c-base", "c-syn"]
    # The AUC equals sklearn's on the same splits, computed here without synthmix.
    table = results.rows
    for cell_id, auc in zip(cells["cell_id"], cells["auc"]):
        rows = table[table.cell_id == cell_id].sort_values("subject_id")
        x, y = rows[["volume_1", "volume_2"]].to_numpy(), (rows.age > rows.age.median()).to_numpy(int)
        direct = []
        for train, test in RepeatedStratifiedKFold(n_splits=4, n_repeats=3, random_state=7).split(x, y):
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[train], y[train])
            direct.append(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
        assert auc == pytest.approx(np.mean(direct), abs=1e-12)
    base, syn = cells.iloc[0], cells.iloc[1]
    assert syn["auc"] > 0.8 > base["auc"] and syn["accuracy"] > base["accuracy"]
    assert np.isnan(base["p_auc"]) and syn["d_auc"] == pytest.approx(syn["auc"] - base["auc"])
    assert syn["p_auc"] < 0.05 and bool(syn["significant"])
    assert syn["unlabelled_dice"] == pytest.approx(table[table.cell_id == "c-syn"].dice_mean.mean())
    assert "4-fold stratified cross-validation x 3 repeats" in footer[0] and "12 of 24" in footer[0]
    text = render_secondary(cells, footer)
    assert "auc" in text and "accuracy" in text and "c-syn" in text


def test_binary_targets_and_refusals():
    assert binary_target(pd.Series([1.0, 2.0, 3.0, 4.0]), "age").tolist() == [0, 0, 1, 1]
    assert binary_target(pd.Series(["AD", "CN", "AD"]), "dx").tolist() == [0, 1, 0]
    with pytest.raises(ResultsError, match="two values"):
        binary_target(pd.Series(["a", "b", "c"]), "dx")
    results = _study(n=6)
    with pytest.raises(ResultsError, match="not a column"):
        secondary_analysis(results, "cdr")
    small = ResultSet(rows=results.rows.iloc[:3], factors=results.factors, baseline=results.baseline)
    with pytest.raises(ResultsError, match="at least 2 per class"):
        secondary_analysis(small, "age", folds=2, repeats=1)
