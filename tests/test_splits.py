"""Subject splits: DESIGN rules 1 (disjoint by subject), 2 (nested subsets) and 5 (derived from
the seed and coordinates) as properties over random dataset sizes and specs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from synthmix.datasets.splits import SplitPlan, SplitSpec, build_splits
from synthmix.errors import SplitError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ids(n: int, prefix: str = "sub") -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(n)]


@st.composite
def specs(draw):
    """A valid (subject count, spec) pair: k folds or proportions, fractions or counts."""
    n = draw(st.integers(6, 40))
    repeats = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        folds = draw(st.integers(2, min(5, n // 3)))
        test, val = None, draw(st.sampled_from([None, 0.2, 0.3]))
        rest = n - math.ceil(n / folds)
        pool = rest - math.floor((val or 0.2) * rest + 0.5)
    else:
        folds, test, val = None, draw(st.sampled_from([0.1, 0.2, 0.3])), draw(st.sampled_from([0.1, 0.2]))
        pool = n - max(1, math.floor(test * n + 0.5)) - max(1, math.floor(val * n + 0.5))
    fractions = counts = None
    if draw(st.booleans()):
        fractions = draw(st.lists(st.sampled_from([0.1, 0.25, 0.5, 0.7, 1.0]), min_size=1, max_size=4, unique=True))
    else:
        counts = draw(st.lists(st.integers(1, max(1, pool - 1)), min_size=1, max_size=4, unique=True))
    spec = SplitSpec(folds=folds, test=test, val=val, fractions=fractions, counts=counts, repeats=repeats, seed=seed)
    return n, spec


def build(n: int, spec: SplitSpec, unlabelled: int = 0) -> SplitPlan:
    return build_splits(ids(n), spec, unlabelled_ids=ids(unlabelled, "unl"))


@SETTINGS
@given(specs())
def test_train_val_test_are_disjoint_by_subject(case):
    n, spec = case
    plan = build(n, spec, unlabelled=2)
    for s in plan.splits:
        assert not set(s.train) & set(s.val)
        assert not set(s.train) & set(s.test)
        assert not set(s.val) & set(s.test)
        assert set(s.train) <= set(s.pool)
        assert set(s.pool) | set(s.val) | set(s.test) == set(ids(n))  # nobody is left out
        assert len(s.train) >= 1 and len(s.val) >= 1 and len(s.test) >= 1
        assert s.unlabelled == tuple(ids(2, "unl"))
        assert not set(s.unlabelled) & (set(s.pool) | set(s.val) | set(s.test))


@SETTINGS
@given(specs())
def test_subsets_are_nested_and_sized_as_asked(case):
    n, spec = case
    plan = build(n, spec)
    folds = range(spec.folds) if spec.folds else [0]
    for repeat in range(spec.repeats):
        for fold in folds:
            group = [plan.get(fold, repeat, a) for a in spec.amounts]
            for small, large in zip(group, group[1:]):
                assert set(small.train) <= set(large.train)
                assert (small.val, small.test, small.pool) == (large.val, large.test, large.pool)
            for s in group:
                expected = s.amount if spec.counts else math.ceil(round(s.amount * len(s.pool), 9))
                assert len(s.train) == expected


@SETTINGS
@given(specs())
def test_kfold_tests_every_subject_exactly_once_per_repeat(case):
    n, spec = case
    assume(spec.folds is not None)
    plan = build(n, spec)
    for repeat in range(spec.repeats):
        tested = [sid for fold in range(spec.folds) for sid in plan.get(fold, repeat, spec.amounts[0]).test]
        assert sorted(tested) == ids(n)
        sizes = [len(plan.get(f, repeat, spec.amounts[0]).test) for f in range(spec.folds)]
        assert max(sizes) - min(sizes) <= 1


@SETTINGS
@given(specs(), st.integers(0, 2**32 - 1))
def test_deterministic_from_seed_and_independent_of_input_order(case, other_seed):
    n, spec = case
    plan = build(n, spec)
    again = build_splits(list(reversed(ids(n))), spec)
    assert again.to_records() == plan.to_records()
    assume(other_seed != spec.seed and n >= 10)
    different = build(n, SplitSpec(**{**spec.to_dict(), "seed": other_seed}))
    assert different.to_records() != plan.to_records()


@SETTINGS
@given(specs())
def test_save_load_round_trip(tmp_path_factory, case):
    n, spec = case
    plan = build(n, spec, unlabelled=1)
    path = tmp_path_factory.mktemp("plan") / "splits.json"
    plan.save(path)
    loaded = SplitPlan.load(path)
    assert loaded.spec == spec
    assert loaded.to_records() == plan.to_records()
    assert loaded.splits == plan.splits


def test_repeats_differ_and_holdout_fold_is_zero():
    plan = build(20, SplitSpec(test=0.2, val=0.2, repeats=3, seed=4))
    assert {s.fold for s in plan.splits} == {0}
    tests = {plan.get(0, r, 1.0).test for r in range(3)}
    assert len(tests) == 3
    assert all(len(t) == 4 for t in tests)
    assert len(plan.get(0, 0, 1.0).val) == 4


def test_kfold_validation_share_default_and_explicit():
    plan = build(20, SplitSpec(folds=4))  # 5 test, 15 left, 0.2 * 15 = 3 val
    s = plan.get(0, 0, 1.0)
    assert (len(s.test), len(s.val), len(s.pool)) == (5, 3, 12)
    s = build(20, SplitSpec(folds=4, val=0.4)).get(0, 0, 1.0)
    assert (len(s.test), len(s.val), len(s.pool)) == (5, 6, 9)


def test_paper_001_counts():
    # 001: 5 folds, 1/3/6/12/24 labelled training images
    plan = build(40, SplitSpec(folds=5, counts=[24, 1, 3, 6, 12]))
    assert [len(plan.get(2, 0, c).train) for c in (1, 3, 6, 12, 24)] == [1, 3, 6, 12, 24]


@pytest.mark.parametrize("tamper", ["val_into_train", "test_into_val", "not_nested", "unknown", "fold_twice"])
def test_tampered_plan_fails_to_load(tmp_path, tamper):
    plan = build(15, SplitSpec(folds=3, fractions=[0.5, 1.0], seed=2))
    path = tmp_path / "splits.json"
    plan.save(path)
    doc = json.loads(path.read_text())
    rec = doc["splits"]
    if tamper == "val_into_train":
        rec[1]["train"].append(rec[1]["val"][0])
        rec[1]["pool"].append(rec[1]["val"][0])
    elif tamper == "test_into_val":
        rec[0]["val"].append(rec[0]["test"][0])
    elif tamper == "not_nested":
        rec[1]["train"].remove(rec[0]["train"][0])
    elif tamper == "unknown":
        rec[0]["test"][0] = "intruder"
    elif tamper == "fold_twice":
        for r in rec:
            if r["fold"] == 1:
                r["test"], r["val"] = list(rec[0]["test"]), list(rec[0]["val"])
    path.write_text(json.dumps(doc))
    with pytest.raises(SplitError, match="splits.json"):
        SplitPlan.load(path)


@pytest.mark.parametrize("kwargs, field", [
    ({}, "folds"),
    ({"folds": 3, "test": 0.2}, "folds"),
    ({"folds": 1}, "folds"),
    ({"test": 0.2}, "val"),
    ({"test": 0.6, "val": 0.5}, "test \\+ val"),
    ({"test": 1.2, "val": 0.1}, "test"),
    ({"folds": 3, "fractions": [0.0, 0.5]}, "fraction 0.0"),
    ({"folds": 3, "fractions": [0.5, 0.5]}, "duplicate"),
    ({"folds": 3, "counts": [0, 3]}, "count 0"),
    ({"folds": 3, "fractions": [0.5], "counts": [3]}, "fractions or counts"),
    ({"folds": 3, "repeats": 0}, "repeats"),
    ({"folds": 3, "seed": -1}, "seed"),
])
def test_bad_spec_names_the_field(kwargs, field):
    with pytest.raises(SplitError, match=field):
        SplitSpec(**kwargs)


def test_levels_that_select_nobody_or_too_many_are_named():
    with pytest.raises(SplitError, match=r"count 30 gives 30 subjects but the training pool has \d+"):
        build(20, SplitSpec(folds=4, counts=[3, 30]))
    with pytest.raises(SplitError, match="folds=5 needs at least 5"):
        build(4, SplitSpec(folds=5))
    with pytest.raises(SplitError, match="gives no test subject"):
        build(4, SplitSpec(test=0.1, val=0.3))
    with pytest.raises(SplitError, match="no validation subject"):
        build(6, SplitSpec(folds=3, val=0.1))
    with pytest.raises(SplitError, match="duplicate"):
        build_splits(["a", "b", "a", "c"], SplitSpec(folds=2))
    with pytest.raises(SplitError, match="both labelled and unlabelled"):
        build_splits(ids(6), SplitSpec(folds=2), unlabelled_ids=["sub-000"])


def test_unknown_coordinates_are_named():
    plan = build(10, SplitSpec(folds=2, fractions=[0.5, 1.0]))
    with pytest.raises(SplitError, match="fold 3, repeat 0, fraction 0.25"):
        plan.get(3, 0, 0.25)


def test_fraction_rounding_is_exact_in_decimal():
    # 0.7 * 10 == 7.000000000000001 in floating point: must still give 7 subjects.
    plan = build_splits(ids(14), SplitSpec(test=2 / 14, val=2 / 14, fractions=[0.7, 1.0]))
    assert len(plan.get(0, 0, 1.0).pool) == 10
    assert len(plan.get(0, 0, 0.7).train) == 7


def test_cli_split_json(phantom_manifest):
    out = subprocess.run([sys.executable, "-m", "synthmix.cli", "data", "split", str(phantom_manifest),
                          "--folds", "3", "--counts", "1,2", "--repeats", "2", "--seed", "7", "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    records = json.loads(out)
    assert len(records) == 3 * 2 * 2
    assert {(r["fold"], r["repeat"], r["amount"]) for r in records} == {
        (f, r, a) for f in range(3) for r in range(2) for a in (1, 2)}
    assert all(not set(r["train"]) & set(r["test"]) for r in records)
    table = subprocess.run([sys.executable, "-m", "synthmix.cli", "data", "split", str(phantom_manifest),
                            "--test", "0.3", "--val", "0.2"], capture_output=True, text=True, check=True).stdout
    assert "fold 0 repeat 0: val" in table
    bad = subprocess.run([sys.executable, "-m", "synthmix.cli", "data", "split", str(phantom_manifest),
                          "--folds", "3", "--counts", "1,500"], capture_output=True, text=True)
    assert bad.returncode == 2 and "count 500" in bad.stderr
