"""Grid expansion: cell counts, generator keys (shared where the subset is the same, distinct
where it is not), stable readable cell ids, seeds, the plan JSON, phantom resolution."""

import copy
import itertools
import json

import pytest

from synthmix.errors import StudyError
from synthmix.search_spaces import validate_study
from synthmix.search_spaces.expand import build_split_plan, expand_cells, expand_study, resolve_dataset

IDS = [f"sub-{i:03d}" for i in range(12)]
BASE = {
    "name": "grid",
    "seed": 7,
    "dataset": {"phantom": {"subjects": 12, "size": 32, "classes": 3}},
    "split": {"test": 0.25, "val": 0.25, "repeats": 3},
    "factors": {"real_fraction": [0.5, 1.0], "synthetic": [0, 0.5, 1.0], "architecture": ["unet", "uresnet"],
                "augmentation": ["none", "flip"]},
    "segmenter": {"batch_size": 8, "max_steps": 10,
                  "networks": {"unet": {"levels": 3}, "uresnet": {"levels": 3}}},
    "generator": {"name": "dcgan_wgangp", "config": {"steps": 5}},
}


def _plan(raw=None, **changes):
    raw = copy.deepcopy(raw or BASE)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            raw[section][field] = value
        else:
            raw[section] = value
    study = validate_study(raw, "grid.yaml")
    splits = build_split_plan(study, IDS)
    return expand_cells(study, splits, dataset_fingerprint="data-v1", manifest="m.csv")


def test_full_factorial_times_repeats():
    plan = _plan()
    assert len(plan.cells) == 2 * 3 * 2 * 2 * 3
    coords = {(tuple(c.factors.values()), c.fold, c.repeat) for c in plan.cells}
    assert len(coords) == len(plan.cells)
    assert {c.fold for c in plan.cells} == {0} and {c.repeat for c in plan.cells} == {0, 1, 2}


def test_folds_multiply_and_excludes_subtract():
    exclude = [{"real_fraction": 0.5, "synthetic": [0.5, 1.0]}, {"architecture": "uresnet", "augmentation": "flip"}]
    plan = _plan(split={"folds": 3, "repeats": 2}, exclude=exclude)
    levels = BASE["factors"]
    expected = sum(1 for rf, syn, arch, aug in itertools.product(*levels.values())
                   if not (rf == 0.5 and syn in (0.5, 1.0)) and not (arch == "uresnet" and aug == "flip"))
    assert len(plan.cells) == expected * 3 * 2
    assert {c.fold for c in plan.cells} == {0, 1, 2}
    assert not any(c.factors["real_fraction"] == 0.5 and c.factors["synthetic"] > 0 for c in plan.cells)


def test_generator_jobs_are_the_unique_keys_of_synthetic_cells():
    plan = _plan()
    keys = {c.generator_key for c in plan.cells if c.generator_key}
    assert set(plan.generator_jobs) == keys
    assert len(keys) == 2 * 3  # one per (fraction, repeat)
    assert all((c.generator_key is None) == (c.factors["synthetic"] == 0) for c in plan.cells)
    assert sum(plan.cells_per_key().values()) == sum(c.generator_key is not None for c in plan.cells)


def test_keys_shared_within_a_subset_and_distinct_across_subsets():
    plan = _plan(split={"folds": 3, "repeats": 2})
    by_coords = {}
    for c in plan.cells:
        if c.generator_key:
            by_coords.setdefault((c.fold, c.repeat, c.amount), set()).add(c.generator_key)
    assert all(len(keys) == 1 for keys in by_coords.values())  # shared across arch/aug/synthetic
    all_keys = [next(iter(k)) for k in by_coords.values()]
    assert len(set(all_keys)) == len(all_keys) == 3 * 2 * 2  # distinct across folds/repeats/fractions
    for key, job in plan.generator_jobs.items():
        split = plan.splits.get(job.fold, job.repeat, job.amount)
        assert job.subjects == tuple(sorted(split.train))
        assert not set(job.subjects) & (set(split.val) | set(split.test))  # rule 3


def test_keys_depend_on_data_and_generator_config_only():
    study = validate_study(copy.deepcopy(BASE), "grid.yaml")
    splits = build_split_plan(study, IDS)
    a = expand_cells(study, splits, dataset_fingerprint="data-v1", manifest="m.csv")
    b = expand_cells(study, splits, dataset_fingerprint="data-v2", manifest="m.csv")
    assert not set(a.generator_jobs) & set(b.generator_jobs)
    longer = _plan(segmenter={**BASE["segmenter"], "max_steps": 99})
    assert set(longer.generator_jobs) == set(a.generator_jobs)  # segmenter changes keep generators
    other_gen = _plan(generator={"name": "dcgan_wgangp", "config": {"steps": 6}})
    assert not set(other_gen.generator_jobs) & set(a.generator_jobs)


def test_cell_ids_are_readable_stable_and_distinct():
    first, second = _plan(), _plan()
    ids = [c.cell_id for c in first.cells]
    assert ids == [c.cell_id for c in second.cells]
    assert len(set(ids)) == len(ids)
    cell = next(c for c in first.cells if c.factors == {"real_fraction": 0.5, "synthetic": 1.0,
                                                        "architecture": "unet", "augmentation": "none"}
                and c.repeat == 2)
    prefix, suffix = cell.cell_id.rsplit("-", 1)
    assert prefix == "rf0.5-syn1-unet-none-f0-r2" and len(suffix) == 8
    assert [c.seed for c in first.cells] == [c.seed for c in second.cells]
    assert len({c.seed for c in first.cells}) == len(first.cells)
    reseeded = _plan(seed=8)
    assert {c.cell_id for c in reseeded.cells}.isdisjoint(ids)


def test_count_studies_and_ratio_levels_in_ids():
    raw = copy.deepcopy(BASE)
    raw["factors"] = {"real_count": [1, 3], "synthetic": ["1:0", "10:1"], "architecture": ["unet"]}
    raw["mixing"] = {"policy": "probability"}
    raw["segmenter"]["networks"] = {"unet": {"levels": 3}}
    plan = _plan(raw)
    assert len(plan.cells) == 2 * 2 * 1 * 3
    assert {len(j.subjects) for j in plan.generator_jobs.values()} == {1, 3}
    assert any(c.cell_id.startswith("rc3-syn10_1-unet-none-f0-r0-") for c in plan.cells)
    assert plan.study.statistics.baseline == {"synthetic": "1:0"}


def test_excluding_everything_is_an_error():
    with pytest.raises(StudyError, match="exclude: removes every cell"):
        _plan(exclude=[{"architecture": ["unet", "uresnet"]}])


def test_plan_json_has_what_the_aggregator_reads():
    plan = _plan()
    data = json.loads(plan.to_json())
    assert data["study"] == "grid"
    assert data["factors"] == ["real_fraction", "synthetic", "architecture", "augmentation"]
    assert data["counts"] == {"cells": 72, "generator_trainings": 6, "pools": 6, "cells_without_generator": 24}
    assert all(c["pool_key"] for c in data["cells"] if c["generator_key"])  # one pool per generator here
    row = data["cells"][0]
    assert {"cell_id", "real_fraction", "synthetic", "architecture", "augmentation", "fold", "repeat",
            "generator_key", "seed"} <= set(row)
    assert all(job["cells"] == 8 for job in data["generator_jobs"])
    e = plan.estimate
    assert e["total_cpu_seconds"] == pytest.approx(
        e["segmenter_cpu_seconds"] + e["generator_cpu_seconds"] + e["ray_start_seconds"], abs=0.2)
    assert e["ray_start_seconds"] == pytest.approx((72 + 6) * 15.0)
    assert e["per_trial"]["cpus"] == 1 and "estimate" in e["model"]
    text = plan.render()
    assert "cells: 72" in text and "generator trainings (unique keys): 6" in text and "estimated" in text


def test_estimate_scales_with_steps():
    small, big = _plan(), _plan(segmenter={**BASE["segmenter"], "max_steps": 20})
    assert big.estimate["segmenter_cpu_seconds"] == pytest.approx(2 * small.estimate["segmenter_cpu_seconds"], rel=0.01)
    assert big.estimate["generator_cpu_seconds"] == small.estimate["generator_cpu_seconds"]


def test_phantom_is_written_once_and_expands(tmp_path):
    raw = copy.deepcopy(BASE)
    raw["dataset"] = {"phantom": {"subjects": 8, "size": 32, "classes": 3}}
    study = validate_study(raw, "grid.yaml")
    manifest = resolve_dataset(study, tmp_path)
    assert manifest.parent.name.startswith("phantom-") and manifest.is_file()
    mtime = manifest.stat().st_mtime_ns
    assert resolve_dataset(study, tmp_path) == manifest and manifest.stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".phantom-")]  # no leftovers
    plan = expand_study(study, manifest)
    assert len(plan.cells) == 72 and len(plan.generator_jobs) == 6
    again = expand_study(study, manifest)
    assert [c.cell_id for c in again.cells] == [c.cell_id for c in plan.cells]
    assert set(again.generator_jobs) == set(plan.generator_jobs)
