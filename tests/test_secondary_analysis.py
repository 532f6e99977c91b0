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


def test_the_evaluate_section_is_validated():
    import yaml

    from synthmix.errors import StudyError
    from synthmix.search_spaces.presets import preset_path
    from synthmix.search_spaces.schema import load_study, validate_study

    assert load_study("bowles-gansfer").evaluate.unlabelled and not load_study("quickstart").evaluate.unlabelled
    raw = yaml.safe_load(preset_path("quickstart").read_text())
    before = validate_study(raw, "q.yaml").fingerprint()
    raw["evaluate"] = {"unlabelled": False}
    assert validate_study(raw, "q.yaml").fingerprint() == before  # hashed only when on
    raw["evaluate"] = {"unlabelled": "yes", "volumes": True}
    with pytest.raises(StudyError) as err:
        validate_study(raw, "q.yaml")
    text = str(err.value)
    assert "evaluate.volumes: unknown key" in text and "evaluate.unlabelled: must be true or false" in text
    raw["evaluate"] = {"unlabelled": True}
    with pytest.raises(StudyError, match="evaluate.unlabelled: the phantom has no unlabelled subjects"):
        validate_study(raw, "q.yaml")


def test_segment_subjects_volumes_and_dice_where_the_labels_are_known(tmp_path):
    """The unlabelled subjects' structure volumes (mL from the slices' spacing) and, for the one
    whose truth the phantom wrote, its Dice against it: a 'network' that thresholds the image."""
    import torch

    from synthmix.datasets.cache import build_cache
    from synthmix.datasets.loader import load_slices, with_known_labels
    from synthmix.datasets.phantom import write_phantom_dataset
    from synthmix.datasets.preprocess import build_preprocess_config
    from synthmix.trainers.segmentation import segment_subjects

    manifest = write_phantom_dataset(tmp_path / "d", subjects=2, size=16, classes=2, unlabelled=2, truth=True)
    # Forget the second unlabelled subject's truth, as if the dataset had none for it.
    table = pd.read_csv(manifest)
    table.loc[table.subject_id == "sub-003", "label"] = ""
    table.to_csv(manifest, index=False)
    preprocess = build_preprocess_config({"axis": 2})
    entry = build_cache(manifest, preprocess, tmp_path / "cache")
    raw = load_slices(entry, ["sub-002", "sub-003"], normaliser=None, training=False, preprocess=preprocess,
                      allow_unlabelled=True)
    assert (raw.labels == 0).all()  # the cache never holds an unlabelled subject's labels
    slices, known = with_known_labels(raw, manifest, preprocess)
    assert known == ("sub-002",)
    truth = slices.labels[slices.subject_ids == "sub-002"]
    assert truth.any() and (slices.labels[slices.subject_ids == "sub-003"] == 0).all()

    class Oracle(torch.nn.Module):  # predicts each slice's true labels (looked up by its image)
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.table = {s.tobytes(): l for s, l in zip(slices.images, slices.labels)}

        def forward(self, x):
            labels = torch.as_tensor(np.stack([self.table[s.numpy().tobytes()] for s in x]))
            return torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float() + self.w

    records = segment_subjects(Oracle(), slices, num_classes=2, known=known)
    by_id = {r["subject"]: r for r in records}
    spacing = slices.spacing["sub-002"]
    assert by_id["sub-002"]["volume_1"] == pytest.approx(truth.sum() * np.prod(spacing) / 1000)
    assert by_id["sub-002"]["dice_mean"] == pytest.approx(1.0)
    assert "dice_mean" not in by_id["sub-003"] and by_id["sub-003"]["volume_1"] == 0.0
