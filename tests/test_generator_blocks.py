"""Generator blocks (``generator.block_size``, 001 section III-F): one generator per block of the
subset, blocks cut in the nesting order so that a block is one generator key for every count
that holds it, pools combined in equal shares; plan-level keys and counts, the pool
combination, and one tiny study through a real local Ray with two blocks (the toy family of
test_toy_family logs what each generator was given: rule 3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from synthmix.datasets.arrays import SyntheticPool
from synthmix.datasets.mixing import pool_blocks, renormalise_pool
from synthmix.datasets.preprocess import Normaliser
from synthmix.datasets.splits import training_blocks
from synthmix.errors import StudyError
from synthmix.search_spaces.expand import build_split_plan, expand_cells
from synthmix.search_spaces.schema import load_study, validate_study

GANSFER = """\
name: blocks
seed: 3
dataset:
  phantom: {subjects: 36, size: 32, classes: 4, unlabelled: 4, seed: 0}
split: {folds: 5, val: 0.15, repeats: 1}
factors:
  real_count: [1, 3, 6, 12, 24]
  synthetic: ["1:0", "100:1", "1:1"]
  architecture: [unet]
segmenter: {max_steps: 4, batch_size: 4}
generator:
  name: gansfer
  block_size: 6
mixing: {policy: probability, source: pool}
"""

LABELLED = [f"sub-{i:03d}" for i in range(36)]
UNLABELLED = [f"unl-{i:03d}" for i in range(4)]


def _plan(raw: dict):
    study = validate_study(raw, "blocks.yaml")
    splits = build_split_plan(study, LABELLED, UNLABELLED)
    return study, splits, expand_cells(study, splits, dataset_fingerprint="x", manifest=Path("m.csv"))


def test_blocks_follow_the_nested_subsets_and_are_trained_once():
    study, splits, plan = _plan(yaml.safe_load(GANSFER))
    # Per fold: 1, 3, 6, then the 12's second block, then the 24's third and fourth: 6 trainings.
    assert len(plan.generator_jobs) == 30 and len(plan.pool_jobs) == 30
    for fold in range(5):
        cells = {c.amount: c for c in plan.cells if c.fold == fold and c.factors["synthetic"] == "1:1"}
        six, twelve, full = cells[6].generator_keys, cells[12].generator_keys, cells[24].generator_keys
        assert len(six) == 1 and len(twelve) == 2 and len(full) == 4
        assert twelve[0] == six[0] and full[:2] == twelve  # one training per block, shared by counts
        assert not cells[6].blocks and cells[12].blocks[0] == (cells[12].generator_key, cells[12].pool_key)
        for amount, cell in cells.items():
            train = set(splits.get(fold, 0, amount).train)
            jobs = [plan.generator_jobs[k] for k in cell.generator_keys]
            blocks = [set(j.subjects) for j in jobs]
            # Rule 3: each block sees its own subjects only, the blocks cover the subset once.
            assert set().union(*blocks) == train and sum(map(len, blocks)) == len(train)
            assert all(len(b) == min(6, len(train)) for b in blocks)
            assert all(set(j.unlabelled) == set(UNLABELLED) for j in jobs)  # gansfer's unlabelled pool
    # plan.json counts each block once per cell that draws from it
    per_key = plan.cells_per_key()
    assert sum(per_key.values()) == sum(len(c.generator_keys) for c in plan.cells)
    six = next(c for c in plan.cells if c.amount == 6 and c.generator_key)
    one = next(c for c in plan.cells if c.amount == 1 and c.generator_key)
    assert per_key[six.generator_key] == 6  # 2 synthetic levels x counts 6, 12 and 24
    assert per_key[one.generator_key] == 2
    data = json.loads(plan.to_json())
    assert data["counts"]["generator_trainings"] == 30
    assert any(c.get("blocks") for c in data["cells"])


def test_a_subset_within_one_block_keeps_its_key_and_other_studies_their_ids():
    raw = yaml.safe_load(GANSFER)
    _, _, blocked = _plan(raw)
    del raw["generator"]["block_size"]
    study, _, whole = _plan(raw)
    for a, b in zip(blocked.cells, whole.cells):
        if a.amount <= 6:
            assert a.generator_key == b.generator_key  # block_size is not in a block's key
    # Without block_size the fingerprint is the one it had before the option existed.
    assert "block_size" not in json.dumps(study.fingerprint())
    preset = load_study("quickstart")
    assert preset.generator.block_size is None


def test_blocks_do_not_depend_on_the_study_s_other_counts():
    raw = yaml.safe_load(GANSFER)
    _, splits, _ = _plan(raw)
    raw["factors"]["real_count"] = [12]
    study, splits12, _ = _plan(raw)
    split = splits12.get(2, 0, 12)
    assert training_blocks(splits12, split, 6)[0] == tuple(sorted(splits.get(2, 0, 6).train))
    assert training_blocks(splits12, split, None) == [tuple(sorted(split.train))]


def test_block_size_is_validated():
    raw = yaml.safe_load(GANSFER)
    raw["generator"]["block_size"] = 0
    with pytest.raises(StudyError, match=r"generator.block_size: must be >= 1"):
        validate_study(raw, "s.yaml")
    raw["generator"]["block_size"] = 6
    raw["mixing"]["source"] = "on_the_fly"
    with pytest.raises(StudyError, match=r"generator.block_size: blocks pool"):
        validate_study(raw, "s.yaml")


def test_block_pools_are_combined_in_equal_shares_in_the_cell_s_intensity_space():
    a = SyntheticPool(np.zeros((5, 1, 4, 4), np.float32), np.zeros((5, 4, 4), np.int64), meta={"b": 0})
    b = SyntheticPool(np.ones((3, 1, 4, 4), np.float32), np.ones((3, 4, 4), np.int64), meta={"b": 1})
    pool = pool_blocks([a, b])
    assert len(pool) == 6 and pool.meta["per_block"] == 3
    assert pool.labels[:, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]  # every prefix balanced
    assert (pool.images[1::2] == 1).all() and (pool.images[::2] == 0).all()
    block = Normaliser("zscore", (10.0,), (2.0,))
    cell = Normaliser("zscore", (12.0,), (4.0,))
    raw = np.array([8.0, 10.0, 16.0], np.float32).reshape(3, 1, 1, 1)
    moved = renormalise_pool(SyntheticPool(block.apply(raw), np.zeros((3, 1, 1), np.int64)), block, cell)
    np.testing.assert_allclose(moved.images, cell.apply(raw), atol=1e-6)


BLOCK_STUDY = """\
name: toy-blocks
seed: 0
plugins: [test_toy_family]
dataset:
  phantom: {subjects: 10, size: 32, classes: 3, unlabelled: 8, seed: 0, truth: true}
split: {test: 0.2, val: 0.2, repeats: 1}
factors:
  real_count: [4]
  synthetic: [0, 0.5]
  architecture: [unet]
segmenter:
  network: {levels: 2, base_filters: 4}
  batch_size: 4
  max_steps: 2
  val_every: 2
  checkpoint_every: 2
generator:
  name: toy
  block_size: 2
  config: {steps: 2, checkpoint_every: 2}
  quality: {samples: 8, reference_steps: 1}
  pool: {size: 32}
mixing: {policy: additive, source: pool, draw: fresh}
evaluate: {unlabelled: true}
"""


@pytest.mark.slow
def test_two_blocks_through_a_real_ray_study(tmp_path: Path, monkeypatch, capsys) -> None:
    """Also 001's secondary analysis on this tiny study: evaluate: {unlabelled: true} writes each
    cell's segmentation volumes of the unlabelled subjects (and their Dice: the phantom's truth),
    and `synthmix results --stratify age` prints accuracy and AUC per cell."""
    from synthmix.cli import main
    from synthmix.orchestrator.study_run import run_study

    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p))
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv("TOY_FAMILY_LOG", str(log))
    study = tmp_path / "toy-blocks.yaml"
    study.write_text(BLOCK_STUDY)
    store = run_study(study, storage=tmp_path / "st", quiet=True)

    plan = json.loads((store.root / "plan.json").read_text())
    assert plan["counts"]["cells"] == 2 and plan["counts"]["generator_trainings"] == 2
    baseline, cell = sorted(plan["cells"], key=lambda c: bool(c.get("blocks")))
    assert not baseline["generator_key"]
    blocks = {j["key"]: j["subjects"] for j in plan["generator_jobs"]}
    assert [b[0] for b in cell["blocks"]] == list(blocks)
    (split,) = json.loads((store.root / "splits.json").read_text())["splits"]
    # Each block's generator trained once, on its block only (plus the unlabelled images),
    # and the blocks are the subset cut in its nesting order.
    trained = [json.loads(line) for p in sorted(log.glob("*-train.jsonl")) for line in p.read_text().splitlines()]
    assert sorted(t["subjects"] for t in trained) == sorted(blocks.values())
    assert sorted(s for b in blocks.values() for s in b) == sorted(split["train"])
    assert all(len(b) == 2 for b in blocks.values())
    assert all(t["unlabelled"] == [8 * 16, 1, 32, 32] for t in trained)
    row = pd.read_parquet(store.row_file(cell["cell_id"])).to_dict("records")[0]
    assert row["n_synthetic_available"] == 64  # 2 blocks x 32, equal shares
    assert json.loads(row["generator_blocks"]) == list(blocks) and row["synthetic_draws"] > 0

    # The secondary analysis: volumes + metadata + Dice of the 8 unlabelled subjects per cell.
    for c in (baseline, cell):
        unl = pd.read_parquet(store.results_dir / "unlabelled" / f"{c['cell_id']}.parquet")
        assert sorted(unl.subject_id) == [f"sub-{i:03d}" for i in range(10, 18)]
        assert {"volume_1", "volume_2", "age", "lesion_count", "dice_mean"} <= set(unl.columns)
        assert (unl.volume_1 + unl.volume_2 > 0).all() and unl.dice_mean.between(0, 1).all()
    assert main(["results", str(store.root), "--stratify", "age", "--cv-folds", "2", "--cv-repeats", "3"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert {"cell_id", "accuracy", "auc", "p_auc", "unlabelled_dice"} <= set(header)
    for c in (baseline, cell):
        line = next(l for l in out.splitlines() if l.startswith(c["cell_id"]) or f" {c['cell_id']} " in l)
        auc = float(line.split()[header.index("auc")])
        assert 0.0 <= auc <= 1.0
    assert "2-fold stratified cross-validation x 3 repeats" in out


def test_phantom_age_ranges_and_truth_labels(tmp_path: Path):
    from synthmix.datasets.manifest import read_manifest
    from synthmix.datasets.phantom import write_phantom_dataset

    plain = write_phantom_dataset(tmp_path / "plain", subjects=2, size=16, unlabelled=1)
    again = write_phantom_dataset(tmp_path / "again", subjects=2, size=16, unlabelled=1, age=None, truth=False)
    for name in ("sub-000", "sub-002"):  # the defaults draw byte-identical subjects
        assert (plain.parent / f"images/{name}.nii.gz").read_bytes() == (again.parent / f"images/{name}.nii.gz").read_bytes()
    shifted = write_phantom_dataset(tmp_path / "shifted", subjects=2, size=16, unlabelled=2, age=[20, 30],
                                    unlabelled_age=[80, 90], truth=True)
    m = read_manifest(shifted)
    table = pd.read_csv(shifted)
    assert table[table.labelled].age.between(20, 30).all() and table[~table.labelled].age.between(80, 90).all()
    assert list(m.unlabelled_ids) == ["sub-002", "sub-003"] and (shifted.parent / "labels/sub-003.nii.gz").is_file()
    with pytest.raises(Exception, match="unlabelled-age must be two ages"):
        write_phantom_dataset(tmp_path / "bad", subjects=2, size=16, unlabelled_age=[50, 40])
    raw = yaml.safe_load(GANSFER)
    raw["dataset"]["phantom"]["unlabelled_age"] = [10, 40]
    with pytest.raises(StudyError, match=r"dataset.phantom.unlabelled_age: must be \[low, high\]"):
        validate_study(raw, "s.yaml")



def test_the_queue_makes_each_block_once_and_never_deadlocks():
    """ReadyCells with blocks: the 6-subject cell trains block 1 (its generator and pool); the
    12-subject cell waits for it (holding nothing), then makes block 2 only."""
    from synthmix.orchestrator.capacity import QueuedCell, ReadyCells

    done: set[str] = set()
    six = QueuedCell("six", generator_key="g1", pool_key="p1", generator_seconds=10, segmentation_seconds=5)
    twelve = QueuedCell("twelve", generator_key="g1", pool_key="p1", generator_seconds=20, segmentation_seconds=5,
                        artifacts=("g1", "p1", "g2", "p2"), artifact_seconds=(10, 1, 10, 1))
    cells = ReadyCells([twelve, six], done.__contains__)
    first = cells.pop()
    assert first.cell_id == "twelve"  # the longest making first: it makes g1, p1, g2, p2
    assert cells.pop() is None  # six waits for g1, which twelve is making
    done.update({"g1", "p1"})
    assert cells.pop().cell_id == "six"  # block 1 is ready: six only trains its segmentation
    cells.finished("twelve")
    assert len(cells) == 0
    # If the maker fails before block 2, the next cell needing it makes it.
    done.clear()
    cells = ReadyCells([twelve, QueuedCell("twelve-b", generator_key="g1", pool_key="p1", artifacts=("g1", "p1", "g2", "p2"),
                                           artifact_seconds=(10, 1, 10, 1))], done.__contains__)
    cells.pop()
    done.update({"g1", "p1"})
    assert cells.pop() is None  # g2 is being made
    cells.finished("twelve")    # ... failed
    assert cells.pop().cell_id == "twelve-b"


def test_the_pool_size_check_counts_each_block_s_share(tmp_path: Path):
    """4 subjects x 16 slices at +50% draw 32 distinct synthetic samples: 16 from each of the two
    blocks' pools. A pool of 16 is enough with blocks of 2 and too small without."""
    from synthmix.datasets.phantom import write_phantom_dataset
    from synthmix.search_spaces.expand import expand_study

    manifest = write_phantom_dataset(tmp_path / "d", subjects=10, size=32, classes=3, unlabelled=8, truth=True)
    raw = yaml.safe_load(BLOCK_STUDY)
    raw["generator"]["pool"] = {"size": 16}
    raw["mixing"]["draw"] = "fixed"
    del raw["dataset"]["phantom"]
    raw["dataset"]["manifest"] = str(manifest)
    del raw["evaluate"]
    plan = expand_study(validate_study(raw, "s.yaml"), manifest)
    assert len(plan.generator_jobs) == 2
    del raw["generator"]["block_size"]
    with pytest.raises(StudyError, match=r"generator.pool.size: 16 is too small.* 32 distinct"):
        expand_study(validate_study(raw, "s.yaml"), manifest)
