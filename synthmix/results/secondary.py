"""001's secondary analysis (section III-G, Table II): how well each cell's segmentations of the
unlabelled subjects separate them by a metadata label.

With ``evaluate: {unlabelled: true}`` every cell's final model segments the study's unlabelled
subjects and writes their structure volumes (``volume_<c>``, mL) with their metadata to
``results/unlabelled/`` (``orchestrator.rows``). Here, per cell: the volumes are the features
of a scikit-learn logistic regression (standardised inside each training fold) predicting a
binary label, the subject's ``COLUMN`` above its median over the subjects (or, for a column
with two values, the second); repeated stratified k-fold cross-validation (001: 5 folds x 100
repeats) gives an accuracy and an AUC per (repeat, fold). Every cell is compared with its
baseline cell (the same levels of the other factors, fold and repeat, at the baseline level:
the model trained without synthetic data) over the same cross-validation splits, paired, with
the corrected resampled t-test (Nadeau-Bengio; n_test/n_train = 1/(k-1)), since the repeats
reuse the same subjects; p-values are corrected over the table (Holm by default).

Where the dataset holds the unlabelled subjects' true labels (a phantom's ``truth``), their
per-subject Dice is in the same table; ``unlabelled_dice`` is its mean per cell (001 needed
MALPEM segmentations as a surrogate reference).

Pure functions over tidy tables: no Ray here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthmix.results.analysis import _baseline
from synthmix.results.store import ResultSet, ResultsError
from synthmix.results.stat_tests import adjust_pvalues, corrected

VOLUME_PREFIX = "volume_"
CV_FOLDS, CV_REPEATS = 5, 100  # 001: "5-fold cross-validation ... repeated 100 times"


def binary_target(values: pd.Series, column: str) -> np.ndarray:
    """1 where ``values`` is above its median (numeric), or is the second of exactly two levels."""
    values = values.dropna()
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) and values.nunique() > 2:
        return (values > values.median()).to_numpy(dtype=int)
    levels = sorted(values.unique(), key=str)
    if len(levels) != 2:
        raise ResultsError(f"--stratify {column}: needs a numeric column or one with two values, "
                           f"got {len(levels)} distinct value(s)")
    return (values == levels[1]).to_numpy(dtype=int)


def cv_scores(features: np.ndarray, target: np.ndarray, *, folds: int = CV_FOLDS,
              repeats: int = CV_REPEATS, seed: int = 0) -> pd.DataFrame:
    """Accuracy and AUC of a logistic regression on ``features`` per (repeat, fold) of a repeated
    stratified k-fold split; the same ``target`` and ``seed`` give the same splits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    rows = []
    for i, (train, test) in enumerate(splitter.split(features, target)):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(features[train], target[train])
        p = model.predict_proba(features[test])[:, 1]
        rows.append({"cv_repeat": i // folds, "cv_fold": i % folds,
                     "accuracy": float(accuracy_score(target[test], (p >= 0.5).astype(int))),
                     "auc": float(roc_auc_score(target[test], p))})
    return pd.DataFrame(rows)


def cv_folds_for(target: np.ndarray, folds: int) -> int:
    """The folds a stratified split can make: at most the smaller class's size."""
    smaller = int(min(np.sum(target == 0), np.sum(target == 1)))
    if smaller < 2:
        raise ResultsError(f"--stratify: {smaller} subject(s) in the smaller class; a cross-validation "
                           "needs at least 2 per class")
    return min(folds, smaller)


def secondary_analysis(results: ResultSet, column: str, *, baseline: str | None = None,
                       folds: int = CV_FOLDS, repeats: int = CV_REPEATS, seed: int = 0,
                       correction: str = "holm", alpha: float = 0.05) -> tuple[pd.DataFrame, list[str]]:
    """One row per cell: its factor levels, fold and repeat, ``n_subjects``, ``accuracy`` and
    ``auc`` (means over the cross-validation; ``*_sd`` their spread), ``unlabelled_dice`` where
    known, and against its baseline cell ``d_auc`` / ``p_auc`` / ``d_accuracy`` /
    ``p_accuracy`` (corrected over the table) and ``significant`` (p_auc < alpha). Also the
    footer lines (what was predicted, the folds used)."""
    table = results.rows
    if table.empty:
        raise ResultsError(f"{results.source or 'results'}: no unlabelled-subject rows")
    if column not in table.columns:
        meta = [c for c in table.columns if not c.startswith((VOLUME_PREFIX, "dice_", "iou_", "precision_", "recall_"))]
        raise ResultsError(f"--stratify {column!r}: not a column of the unlabelled table (columns: {', '.join(meta)})")
    volumes = sorted((c for c in table.columns if c.startswith(VOLUME_PREFIX)), key=lambda c: int(c[len(VOLUME_PREFIX):]))
    if not volumes:
        raise ResultsError("--stratify: the unlabelled table has no volume_<c> columns")
    factors = [f for f in results.factors if f in table.columns]
    first = table.assign(subject_id=table["subject_id"].astype(str)).drop_duplicates("subject_id")
    label_of = first.set_index("subject_id")[column].dropna()  # a subject's metadata is the same in every cell
    subjects = sorted(label_of.index)
    target = binary_target(label_of.loc[subjects], column)
    k = cv_folds_for(target, folds)

    records, scores = [], {}
    for cell_id, rows in table.groupby("cell_id", sort=True):
        rows = rows.assign(subject_id=rows["subject_id"].astype(str)).set_index("subject_id")
        missing = [s for s in subjects if s not in rows.index]
        if missing:
            raise ResultsError(f"cell {cell_id}: no volumes for unlabelled subject(s) {', '.join(missing[:5])}")
        cv = cv_scores(rows.loc[subjects, volumes].to_numpy(dtype=float), target, folds=k, repeats=repeats, seed=seed)
        scores[cell_id] = cv
        first = rows.iloc[0]
        dice = rows["dice_mean"].dropna() if "dice_mean" in rows.columns else pd.Series(dtype=float)
        records.append({"cell_id": cell_id, **{f: first[f] for f in factors}, "fold": first["fold"],
                        "repeat": first["repeat"], "n_subjects": len(subjects),
                        "accuracy": cv["accuracy"].mean(), "accuracy_sd": cv["accuracy"].std(ddof=1),
                        "auc": cv["auc"].mean(), "auc_sd": cv["auc"].std(ddof=1),
                        "unlabelled_dice": dice.mean() if len(dice) else np.nan})
    cells = pd.DataFrame.from_records(records)
    cells = _against_baseline(cells, scores, factors, baseline or results.baseline, k, correction, alpha)
    footer = [f"predicting {column} above its median ({int(target.sum())} of {len(target)} unlabelled subjects) "
              f"from {len(volumes)} structure volume(s): logistic regression, {k}-fold stratified "
              f"cross-validation x {repeats} repeats",
              f"against the baseline: corrected resampled t-test over the {k * repeats} paired folds, "
              f"{correction} correction, alpha {alpha:g}"]
    return cells, footer


def _against_baseline(cells: pd.DataFrame, scores: dict, factors: list[str], baseline: str | None,
                      folds: int, correction: str, alpha: float) -> pd.DataFrame:
    factor, level = _baseline(cells, factors, baseline)
    for name in ("d_auc", "p_auc", "d_accuracy", "p_accuracy"):
        cells[name] = np.nan
    if factor is None:
        return cells.assign(significant=False)
    others = [f for f in factors if f != factor] + ["fold", "repeat"]
    base = {tuple(r[o] for o in others): r["cell_id"] for _, r in cells.iterrows() if r[factor] == level}
    for i, r in cells.iterrows():
        ref = base.get(tuple(r[o] for o in others))
        if ref is None or ref == r["cell_id"]:
            continue
        for metric in ("auc", "accuracy"):
            out = corrected(scores[r["cell_id"]][metric].to_numpy(), scores[ref][metric].to_numpy(),
                            confidence=0.95, test_train_ratio=1.0 / (folds - 1))
            cells.loc[i, f"d_{metric}"], cells.loc[i, f"p_{metric}"] = out.diff, out.p_value
    for metric in ("auc", "accuracy"):  # NaN (the baseline cells themselves) do not count
        cells[f"p_{metric}"] = adjust_pvalues(cells[f"p_{metric}"].to_numpy(dtype=float), correction)
    return cells.assign(significant=cells["p_auc"] < alpha)


def render_secondary(cells: pd.DataFrame, footer: list[str], fmt: str = "table", digits: int = 3) -> str:
    """The per-cell table as text (table, markdown, csv or json), footer lines under a table."""
    if fmt == "csv":
        return cells.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return cells.to_json(orient="records", indent=2)
    shown = cells.round(digits)
    if fmt == "markdown":
        return shown.to_markdown(index=False) if _has_tabulate() else shown.to_string(index=False)
    return "\n".join([shown.to_string(index=False), *footer])


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
