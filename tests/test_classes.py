"""The ``classes`` factor (004: 7, 4 and 2 classes of one dataset): levels validated against the
dataset's label set, one generator key and one pool for every level, labels remapped at training
time, and each level's metrics, rows and report naming its own classes (a real local Ray study)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from synthmix.datasets.arrays import SliceSet, SyntheticPool
from synthmix.datasets.class_levels import ClassLevel, parse_class_levels, remap_slices, remap_synthetic
from synthmix.errors import DataError, StudyError
from synthmix.search_spaces.expand import build_split_plan, expand_cells
from synthmix.search_spaces.schema import validate_study

LEVELS = {7: "identity", 4: {4: 0, 5: 0, 6: 0}, 2: {2: 1, 3: 1, 4: 0, 5: 0, 6: 0}}

STUDY = """\
name: classes
seed: 0
dataset:
  phantom: {subjects: 8, size: 32, classes: 7, seed: 0}
split: {test: 0.25, val: 0.25, repeats: 1}
factors:
  real_fraction: [1.0]
  synthetic: [1.0]
  architecture: [unet]
  augmentation: [traditional]   # 002's offline copies: this test also runs that path of the flow
  classes: {7: identity, 4: {4: 0, 5: 0, 6: 0}, 2: {2: 1, 3: 1, 4: 0, 5: 0, 6: 0}}
segmenter:
  network: {levels: 2, base_filters: 4}
  loss: weighted_dice
  batch_size: 4
  max_steps: 6        # 24 draws at a synthetic share of 1/3: some are synthetic (but for 6e-5)
  val_every: 6
  checkpoint_every: 6
generator:
  name: dcgan_wgangp
  config: {base_filters: 8, latent_dim: 16, batch_size: 8, steps: 2, checkpoint_every: 2}
  pool: {size: 64}    # +100% of 4 subjects x 16 slices
  quality: {samples: 16, reference_steps: 2}
mixing: {policy: additive, source: pool}
"""


def _raw(**factors) -> dict:
    raw = yaml.safe_load(STUDY)
    raw["factors"].update(factors)
    return raw


def _problems(raw: dict) -> str:
    with pytest.raises(StudyError) as err:
        validate_study(raw)
    return "\n".join(err.value.problems)


def test_levels_are_named_remappings_with_their_class_names():
    study = validate_study(_raw())
    assert study.factors["classes"] == (7, 4, 2)
    seven, four, two = study.classes
    assert seven.lut == tuple(range(7)) and seven.names[1:4] == ("necrotic core", "oedema", "enhancing rim")
    assert four.lut == (0, 1, 2, 3, 0, 0, 0) and four.num_classes == 4
    assert two.lut == (0, 1, 1, 1, 0, 0, 0) and two.names == ("background", "necrotic core+oedema+enhancing rim")
    named, problems = parse_class_levels({"wt": {"remap": {2: 1, 3: 1, 4: 0, 5: 0, 6: 0}, "names": ["bg", "tumour"]}},
                                         count=7, names=None)
    assert not problems and named[0].names == ("bg", "tumour")


def test_bad_levels_are_refused_naming_the_field():
    text = _problems(_raw(classes={4: {4: 0, 5: 0}, "x": {9: 1}, "b": {0: 1}, 5: {2: 1, 3: 1, 4: 0, 5: 0, 6: 0},
                                   "y": "merge"}))
    assert "factors.classes.4: the classes after remapping are [0, 1, 2, 3, 6], not contiguous" in text
    assert "factors.classes.x.9: 9 is not a label of the dataset (its labels are 0..6)" in text
    assert "factors.classes.b.0: background (0) must stay 0" in text
    assert "factors.classes.5: a level named 5 must give 5 classes; this remapping gives 2" in text
    assert "factors.classes.y: must be identity or a remapping" in text
    assert "factors.classes: must be a mapping" in _problems(_raw(classes=[7, 4]))
    raw = _raw()
    raw["exclude"] = [{"classes": 3}]
    assert "exclude[0].classes: 3 is not a level of factors.classes [7, 4, 2]" in _problems(raw)


def test_a_manifest_without_a_known_label_count_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text("subject_id,image,label\n")
    raw = _raw()
    raw["dataset"] = {"manifest": str(tmp_path / "m.csv")}
    assert "factors.classes: the dataset's label set is not known" in _problems(raw)
    raw["dataset"]["preprocess"] = {"num_classes": 7}
    assert validate_study(raw).classes[1].lut == (0, 1, 2, 3, 0, 0, 0)


def test_one_generator_key_and_one_pool_serve_every_level():
    study = validate_study(_raw(real_fraction=[0.5, 1.0], synthetic=[0, 1.0]))
    plan = expand_cells(study, build_split_plan(study, [f"sub-{i:03d}" for i in range(8)]),
                        dataset_fingerprint="x", manifest=Path("m.csv"))
    assert len(plan.cells) == 2 * 2 * 3
    assert len(plan.generator_jobs) == 2 and len(plan.pool_jobs) == 2  # one per real fraction, not per level
    for fraction in (0.5, 1.0):
        used = [c for c in plan.cells if c.amount == fraction and c.generator_key]
        assert sorted(c.factors["classes"] for c in used) == [2, 4, 7]
        assert len({c.generator_key for c in used}) == 1 and len({c.pool_key for c in used}) == 1
    assert all("-cls" in c.cell_id for c in plan.cells)
    data = plan.to_dict()
    assert [c["num_classes"] for c in data["classes"]] == [7, 4, 2]
    # A level's remapping decides its cells' results: it is in the study's fingerprint.
    other = validate_study(_raw(classes={**LEVELS, 2: {1: 1, 2: 1, 3: 0, 4: 0, 5: 0, 6: 0}}))
    assert other.fingerprint() != study.fingerprint()


def test_remapping_real_slices_and_synthetic_samples():
    level = ClassLevel(name=4, lut=(0, 1, 2, 3, 0, 0, 0), names=("bg", "a", "b", "c"))
    labels = np.arange(7).repeat(4).reshape(7, 2, 2)
    slices = SliceSet(np.zeros((7, 1, 2, 2), np.float32), labels, np.array(["s"] * 7), np.arange(7),
                      {"s": (1.0, 1.0, 1.0)}, 7)
    out = remap_slices(slices, level)
    assert out.num_classes == 4 and out.labels[:, 0, 0].tolist() == [0, 1, 2, 3, 0, 0, 0]
    assert out.images is slices.images
    pool = remap_synthetic(SyntheticPool(np.zeros((7, 1, 2, 2), np.float32), labels), level)
    assert pool.labels[:, 0, 0].tolist() == [0, 1, 2, 3, 0, 0, 0]
    generate = remap_synthetic(lambda n, rng: (np.zeros((n, 1, 2, 2)), np.full((n, 2, 2), 5)), level)
    assert generate(3, np.random.default_rng(0))[1].max() == 0
    with pytest.raises(DataError, match="has 4 classes, but level 4 remaps 7"):
        remap_slices(out, level)


@pytest.mark.slow
def test_each_level_trains_and_reports_its_own_classes_from_one_generator(tmp_path: Path) -> None:
    """3 cells (7, 4 and 2 classes) at +100% synthetic from one tiny generator, with offline
    augmentation, through a real local Ray: one generator artifact and one pool; each row's
    per-class metrics are its level's; each cell trained on its real slices and their copies."""
    from synthmix.orchestrator.study_run import run_study
    from synthmix.results.report import write_report
    from synthmix.results.store import read_results

    study = tmp_path / "classes.yaml"
    study.write_text(STUDY)
    store = run_study(study, storage=tmp_path / "st", quiet=True)
    assert len([p for p in (store.root / "artifacts" / "generators").iterdir() if p.is_dir()]) == 1
    assert len([p for p in (store.root / "artifacts" / "pools").iterdir() if p.is_dir()]) == 1
    rows = read_results(str(store.root)).rows.set_index("classes")
    assert sorted(rows.index) == [2, 4, 7]
    for level, k in ((7, 7), (4, 4), (2, 2)):
        row = rows.loc[level]
        present = {c for c in range(1, 8) if f"dice_{c}" in row and np.isfinite(row[f"dice_{c}"])}
        assert present == set(range(1, k)), (level, present)
        assert row["n_classes"] == k and len(json.loads(row["class_names"])) == k
        assert row["synthetic_draws"] > 0 and len({r for r in rows["generator_key"]}) == 1
        assert row["n_augmented_slices"] == row["n_train_slices"] > 0  # offline: one copy per real slice
    assert json.loads(rows.loc[2, "class_names"])[1] == "necrotic core+oedema+enhancing rim"
    page = write_report(str(store.root), tmp_path / "report.html").read_text()
    assert "Per class, by classes level" in page and "necrotic core+oedema+enhancing rim" in page
    assert "classes 4: 4 classes" in page
