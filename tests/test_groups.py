"""Patients with several scans: the manifest's ``group`` column keeps every row of a group on
one side of every split and in the same subsets; counts and fractions count groups; inspect
reports the groups."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from synthmix.cli import main
from synthmix.datasets.inspect import inspect_dataset
from synthmix.datasets.manifest import read_manifest, scan_manifest
from synthmix.datasets.splits import SplitPlan, SplitSpec, build_splits
from synthmix.errors import DataError, SplitError

# 14 scans of 9 patients: p0 has 4 scans, p1 3, p2 2, the others one each.
SCANS = {f"s{i:02d}": f"p{g}" for i, g in enumerate([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 5, 6, 7])}
UNLABELLED = {"u0": "p0", "u1": "p3", "u2": "q9"}  # two share a group with labelled scans
GROUPS = {**SCANS, **UNLABELLED}

SPECS = [SplitSpec(folds=3, fractions=[0.34, 0.67, 1.0], repeats=3, seed=s) for s in range(4)] + \
        [SplitSpec(test=0.25, val=0.25, counts=[1, 2, 3], repeats=4, seed=s) for s in range(4)]


def _plan(spec: SplitSpec) -> SplitPlan:
    return build_splits(list(SCANS), spec, unlabelled_ids=list(UNLABELLED), groups=GROUPS)


def _groups(ids) -> set[str]:
    return {GROUPS[i] for i in ids}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{'folds' if s.folds else 'holdout'}-{s.seed}")
def test_no_group_is_split_and_subsets_take_whole_groups(spec):
    plan = _plan(spec)
    for s in plan.splits:
        pool, val, test = _groups(s.pool), _groups(s.val), _groups(s.test)
        assert not (pool & val) and not (pool & test) and not (val & test), s.name
        for group in _groups(s.train):  # every scan of a group in the subset, or none
            assert {i for i in s.pool if GROUPS[i] == group} <= set(s.train), s.name
        # An unlabelled scan of a validation or test patient never reaches the generator.
        assert not _groups(s.unlabelled) & (val | test), s.name
        assert set(s.unlabelled) == {u for u in UNLABELLED if GROUPS[u] not in val | test}


@pytest.mark.parametrize("spec", SPECS[4:], ids=lambda s: f"holdout-{s.seed}")
def test_counts_and_proportions_count_groups(spec):
    plan = _plan(spec)
    n_groups = len(set(SCANS.values()))
    assert plan.n_groups == n_groups == 8
    for s in plan.splits:
        assert len(_groups(s.test)) == round(0.25 * n_groups) and len(_groups(s.val)) == round(0.25 * n_groups)
        assert len(_groups(s.train)) == s.amount  # a count of patients, not of scans


def test_folds_partition_the_groups():
    plan = _plan(SplitSpec(folds=4, repeats=2, seed=1))
    for repeat in range(2):
        tested = [s for s in plan.splits if s.repeat == repeat]
        assert sorted(i for s in tested for i in s.test) == sorted(SCANS)
        sizes = sorted(len(_groups(s.test)) for s in tested)
        assert sizes == [2, 2, 2, 2]  # 8 patients in 4 near-equal folds, whatever their scan counts


def test_without_groups_the_draws_are_those_of_plain_subjects():
    spec = SplitSpec(folds=3, fractions=[0.5, 1.0], repeats=2, seed=7)
    plain = build_splits(list(SCANS), spec)
    own = build_splits(list(SCANS), spec, groups={i: i for i in SCANS})
    assert plain.splits == own.splits and own.groups == {}


def test_round_trip_and_tampering(tmp_path):
    plan = _plan(SPECS[0])
    plan.save(tmp_path / "splits.json")
    again = SplitPlan.load(tmp_path / "splits.json")
    assert again.splits == plan.splits and again.groups == plan.groups
    plan.check_groups(GROUPS)
    with pytest.raises(SplitError, match="groups of the manifest differ"):
        plan.check_groups({**GROUPS, "s09": "p0"})
    # Moving one scan of p0 into another group puts the group on both sides of some split.
    doc = json.loads((tmp_path / "splits.json").read_text())
    s = doc["splits"][0]
    patient = GROUPS[s["test"][0]]
    doc["groups"][next(i for i in s["pool"] if GROUPS[i] != patient)] = patient
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(SplitError, match="groups with subjects in both"):
        SplitPlan.load(tmp_path / "bad.json")


def test_too_few_groups_are_named():
    with pytest.raises(SplitError, match="needs at least 9 labelled groups, the dataset has 8"):
        build_splits(list(SCANS), SplitSpec(folds=9), groups=GROUPS)
    with pytest.raises(SplitError, match="gives 6 groups but the training pool has 4"):
        build_splits(list(SCANS), SplitSpec(test=0.25, val=0.25, counts=[6]), groups=GROUPS)


# ---- manifest and inspect -----------------------------------------------------------------------

def _manifest(folder: Path, phantom_dir: Path, groups: list[str]) -> Path:
    rows = pd.read_csv(phantom_dir / "manifest.csv", dtype=str, keep_default_na=False)
    rows["image"] = [str(phantom_dir / p) for p in rows["image"]]
    rows["label"] = [str(phantom_dir / p) for p in rows["label"]]
    rows["group"] = groups
    path = folder / "manifest.csv"
    rows.to_csv(path, index=False)
    return path


def test_manifest_group_column(phantom_dir, tmp_path):
    groups = ["a", "a", "b", "c", "c", "c", "d", "e"]
    manifest = read_manifest(_manifest(tmp_path, phantom_dir, groups))
    assert list(manifest.groups.values()) == groups and manifest.has_groups
    assert "group" not in manifest.metadata.columns  # a reserved column, not metadata
    plain = read_manifest(phantom_dir)
    assert plain.groups == {i: i for i in plain.labelled_ids} and not plain.has_groups
    assert manifest.fingerprint() != plain.fingerprint()


def test_a_missing_group_is_a_problem_naming_line_and_subject(phantom_dir, tmp_path):
    path = _manifest(tmp_path, phantom_dir, ["a", "a", "", "c", "c", "c", "d", "e"])
    _, problems = scan_manifest(path)
    assert problems == ["manifest.csv line 4 (subject 'sub-002'): empty 'group' (every row needs one when the "
                        "column is given; use the subject id for a subject scanned once)"]
    with pytest.raises(DataError, match="sub-002.*empty 'group'"):
        read_manifest(path)


def test_inspect_reports_groups(phantom_dir, tmp_path, capsys):
    path = _manifest(tmp_path, phantom_dir, ["a", "a", "b", "c", "c", "c", "d", "e"])
    report = inspect_dataset(path)
    assert len(report.groups) == 5 and report.groups.most_common(1) == [("c", 3)]
    assert main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "groups      5 (splits keep each group together); 2 with more than one subject; largest: c (3 subjects)" in out
    assert main(["data", "split", str(path), "--test", "0.2", "--val", "0.2", "--repeats", "3",
                 "--format", "json"]) == 0
    group = dict(zip([f"sub-{i:03d}" for i in range(8)], "aabcccde"))
    for record in json.loads(capsys.readouterr().out):
        sides = [{group[i] for i in record[k]} for k in ("pool", "val", "test")]
        assert len(sides[1]) == len(sides[2]) == 1 and len(sides[0]) == 3  # 5 patients: 1 + 1 + 3
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
