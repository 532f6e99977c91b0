"""Subject-level splits: k folds or train/val/test proportions, repeats, nested real-data subsets.

A split plan is data: built once per study from (seed, fold, repeat), saved as JSON, reloaded,
and re-checked on every load. The rules it guarantees by construction and re-checks in
``SplitPlan.check``:

1. train, validation and test are disjoint by subject (DESIGN rule 1);
2. for one (fold, repeat), the training subset at a smaller amount is a subset of the one at a
   larger amount, and validation/test do not change with the amount (rule 2);
3. every random choice comes from ``numpy.random.default_rng`` seeded with a ``SeedSequence``
   built from (seed, purpose, coordinates) (rule 5), so a rerun reproduces the plan.

How a plan is drawn:

* ``folds=K``: per repeat, one permutation of the labelled subjects is cut into K near-equal
  folds; fold k is the test set of split k, so every labelled subject is tested exactly once per
  repeat. Validation is ``val`` (default 0.2) of the remaining subjects, drawn per (fold, repeat).
* ``test=P, val=Q``: per repeat, one permutation; the first round(P*n) subjects are the test set,
  the next round(Q*n) the validation set (both proportions of all labelled subjects). The fold
  index is always 0; repeats reshuffle.
* The training pool of a (fold, repeat) is everything else. One random order of the pool per
  (fold, repeat) defines every subset: the first ceil(a*len(pool)) subjects for a fraction a,
  the first c subjects for a count c. Subsets are therefore nested by construction.
* Groups (the manifest's ``group`` column, e.g. a patient scanned twice): everything above is
  drawn over groups instead of subjects, so proportions, folds, fractions and counts count
  groups, and every subject of a group lands in the same set and the same subsets. An
  unlabelled subject whose group has a validation or test subject is left out of that split's
  unlabelled pool. Without groups each subject is its own group and the draws are the same.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from synthmix.errors import SplitError

DEFAULT_FOLD_VAL = 0.2  # share of the non-test subjects used for validation with k folds
FORMAT_VERSION = 1

# Purposes of the random streams: one stream per (purpose, coordinates), never shared.
_PARTITION, _VALIDATION, _NESTING = 0, 1, 2


@dataclass(frozen=True)
class SplitSpec:
    """How to split the labelled subjects.

    Attributes:
        folds: k-fold cross-validation with this many folds (>= 2); excludes ``test``.
        test: test proportion of the labelled subjects, in (0, 1); needs ``val``.
        val: validation proportion. With ``folds``: share of the non-test subjects (default 0.2).
            With ``test``: share of all labelled subjects (required).
        fractions: nested real-data fractions of the training pool, each in (0, 1].
        counts: nested numbers of labelled training subjects, each >= 1. Excludes ``fractions``.
            With neither, the single amount is the fraction 1.0 (the whole pool).
        repeats: independent repetitions (>= 1), each with its own draws.
        seed: non-negative integer from which every draw derives.
    """

    folds: int | None = None
    test: float | None = None
    val: float | None = None
    fractions: tuple[float, ...] | None = None
    counts: tuple[int, ...] | None = None
    repeats: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("fractions", "counts"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or (value is not None and not isinstance(value, Iterable)):
                raise SplitError(f"split: {name} must be a list of levels, got {value!r}")
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        self._validate()
        # Lists from YAML/CLI become sorted tuples of plain numbers, so equal specs compare equal.
        if self.fractions is not None:
            object.__setattr__(self, "fractions", tuple(sorted(float(f) for f in self.fractions)))
        if self.counts is not None:
            object.__setattr__(self, "counts", tuple(sorted(int(c) for c in self.counts)))

    def _validate(self) -> None:
        if self.folds is not None and self.test is not None:
            raise SplitError("split: give either folds or test/val proportions, not both")
        if self.folds is None and self.test is None:
            raise SplitError("split: give folds=K (cross-validation) or test= and val= proportions")
        if self.folds is not None:
            _require_int("folds", self.folds, minimum=2)
            if self.val is not None:
                _require_proportion("val", self.val)
        else:
            _require_proportion("test", self.test)
            if self.val is None:
                raise SplitError("split: val is required with test (a proportion of the labelled subjects)")
            _require_proportion("val", self.val)
            if self.test + self.val >= 1:
                raise SplitError(f"split: test + val = {self.test + self.val:g} leaves no training subjects")
        if self.fractions is not None and self.counts is not None:
            raise SplitError("split: give either fractions or counts, not both")
        if self.fractions is not None:
            _require_levels("fractions", self.fractions)
            for f in self.fractions:
                if isinstance(f, bool) or not isinstance(f, (int, float, np.floating)) or not 0 < f <= 1:
                    raise SplitError(f"split: fraction {f!r} selects no subject; fractions must be in (0, 1]")
        if self.counts is not None:
            _require_levels("counts", self.counts)
            for c in self.counts:
                if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
                    raise SplitError(f"split: count {c!r} selects no subject; counts must be integers >= 1")
        _require_int("repeats", self.repeats, minimum=1)
        _require_int("seed", self.seed, minimum=0)

    @property
    def amount_kind(self) -> str:
        """"count" when subsets are given by counts, else "fraction"."""
        return "count" if self.counts is not None else "fraction"

    @property
    def amounts(self) -> tuple[float, ...] | tuple[int, ...]:
        """The subset levels, ascending."""
        if self.counts is not None:
            return self.counts
        return self.fractions if self.fractions is not None else (1.0,)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("fractions", "counts"):
            d[name] = list(d[name]) if d[name] is not None else None
        return d


def _require_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SplitError(f"split: {name} must be an integer >= {minimum}, got {value!r}")


def _require_proportion(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise SplitError(f"split: {name} must be a proportion in (0, 1), got {value!r}")


def _require_levels(name: str, levels: Sequence) -> None:
    if not levels:
        raise SplitError(f"split: {name} is empty; give at least one level")
    if len(set(levels)) != len(levels):
        raise SplitError(f"split: {name} has duplicate levels: {list(levels)}")


@dataclass(frozen=True)
class Split:
    """The subjects of one (fold, repeat, amount). ``pool`` is every training subject of the
    (fold, repeat); ``train`` the subset at ``amount``. Ids are sorted."""

    fold: int
    repeat: int
    amount: float | int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    pool: tuple[str, ...]
    unlabelled: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"fold {self.fold}, repeat {self.repeat}, amount {self.amount:g}"

    def to_record(self, amount_kind: str) -> dict:
        return {"fold": self.fold, "repeat": self.repeat, "amount": self.amount,
                "amount_kind": amount_kind, "train": list(self.train), "val": list(self.val),
                "test": list(self.test), "pool": list(self.pool), "unlabelled": list(self.unlabelled)}


@dataclass(frozen=True)
class SplitPlan:
    """Every split of a study, in (repeat, fold, amount) order."""

    spec: SplitSpec
    labelled_ids: tuple[str, ...]
    unlabelled_ids: tuple[str, ...]
    splits: tuple[Split, ...]
    groups: dict = field(default_factory=dict)  # subject -> group, only where they differ
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {(s.fold, s.repeat, s.amount): s for s in self.splits})
        object.__setattr__(self, "groups", _nontrivial(self.groups))

    def group(self, subject_id: str) -> str:
        return self.groups.get(subject_id, subject_id)

    @property
    def n_groups(self) -> int:
        """Labelled groups (= labelled subjects without a group column)."""
        return len({self.group(i) for i in self.labelled_ids})

    def check_groups(self, groups: dict[str, str], source: str = "the manifest") -> None:
        """SplitError unless this plan was drawn with these groups (a stored plan whose
        manifest's group column changed would break rule 1 for the new groups)."""
        if _nontrivial(groups) != self.groups:
            changed = sorted(i for i in {*groups, *self.groups} if groups.get(i, i) != self.group(i))
            raise SplitError(f"split: the groups of {source} differ from those the splits were drawn with "
                             f"(e.g. {', '.join(changed[:5])}); run the changed dataset under another name")

    def get(self, fold: int, repeat: int, amount: float | int) -> Split:
        """The split at these coordinates; SplitError listing the valid ones otherwise."""
        try:
            return self._index[(fold, repeat, amount)]
        except KeyError:
            raise SplitError(
                f"split: no split at fold {fold}, repeat {repeat}, {self.spec.amount_kind} {amount!r}; "
                f"folds {sorted({s.fold for s in self.splits})}, repeats {sorted({s.repeat for s in self.splits})}, "
                f"{self.spec.amount_kind}s {list(self.spec.amounts)}") from None

    def to_records(self) -> list[dict]:
        """JSON-able list of one dict per split."""
        return [s.to_record(self.spec.amount_kind) for s in self.splits]

    def render(self) -> str:
        """A readable table: one line per split, then the validation and test subjects."""
        kind = self.spec.amount_kind
        grouped = f" in {self.n_groups} groups" if self.groups else ""
        lines = [f"{len(self.labelled_ids)} labelled{grouped}, {len(self.unlabelled_ids)} unlabelled subjects; "
                 f"seed {self.spec.seed}",
                 f"{'fold':>4} {'repeat':>6} {kind:>8} {'train':>5} {'val':>4} {'test':>4}  train subjects"]
        for s in self.splits:
            lines.append(f"{s.fold:>4} {s.repeat:>6} {s.amount:>8g} {len(s.train):>5} {len(s.val):>4} "
                         f"{len(s.test):>4}  {', '.join(s.train)}")
        lines.append("")
        seen = set()
        for s in self.splits:
            if (s.fold, s.repeat) not in seen:
                seen.add((s.fold, s.repeat))
                lines.append(f"fold {s.fold} repeat {s.repeat}: val {', '.join(s.val)} | test {', '.join(s.test)}")
        return "\n".join(lines)

    def check(self) -> None:
        """Raise SplitError if any rule is broken: unknown or duplicated subjects, overlap of
        train/val/test, subsets not nested across amounts, k folds not covering every subject."""
        labelled = set(self.labelled_ids)
        if len(labelled) != len(self.labelled_ids):
            raise SplitError(f"split: duplicate labelled subject ids: {_duplicates(self.labelled_ids)}")
        both = labelled & set(self.unlabelled_ids)
        if both:
            raise SplitError(f"split: subjects listed as both labelled and unlabelled: {sorted(both)}")
        for s in self.splits:
            _check_split(s, labelled, set(self.unlabelled_ids), self.group)
        _check_nesting(self.splits)
        if self.spec.folds is not None:
            _check_folds(self.splits, self.labelled_ids, self.spec)

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON, atomically."""
        path = Path(path)
        doc = {"format": FORMAT_VERSION, "spec": self.spec.to_dict(),
               "labelled_ids": list(self.labelled_ids), "unlabelled_ids": list(self.unlabelled_ids),
               "splits": self.to_records()}
        if self.groups:
            doc["groups"] = dict(sorted(self.groups.items()))
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "SplitPlan":
        """Read a plan written by ``save`` and re-check every rule; SplitError names the file."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            spec = SplitSpec(**doc["spec"])
            kind = spec.amount_kind
            splits = tuple(
                Split(fold=int(r["fold"]), repeat=int(r["repeat"]),
                      amount=int(r["amount"]) if kind == "count" else float(r["amount"]),
                      train=tuple(r["train"]), val=tuple(r["val"]), test=tuple(r["test"]),
                      pool=tuple(r["pool"]), unlabelled=tuple(r.get("unlabelled", ())))
                for r in doc["splits"])
            plan = cls(spec=spec, labelled_ids=tuple(doc["labelled_ids"]),
                       unlabelled_ids=tuple(doc["unlabelled_ids"]), splits=splits,
                       groups={str(k): str(v) for k, v in doc.get("groups", {}).items()})
        except SplitError as err:
            raise SplitError(f"{path}: {err}") from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SplitError(f"{path}: not a readable split plan ({type(err).__name__}: {err})") from None
        try:
            plan.check()
        except SplitError as err:
            raise SplitError(f"{path}: {err}") from None
        return plan


def _nontrivial(groups: dict) -> dict:
    return {str(k): str(v) for k, v in (groups or {}).items() if str(k) != str(v)}


def _duplicates(ids: Iterable[str]) -> list[str]:
    seen, dup = set(), set()
    for i in ids:
        (dup if i in seen else seen).add(i)
    return sorted(dup)


def _check_split(s: Split, labelled: set[str], unlabelled: set[str], group) -> None:
    parts = {"train": s.train, "val": s.val, "test": s.test, "pool": s.pool}
    for name, ids in parts.items():
        dup = _duplicates(ids)
        if dup:
            raise SplitError(f"split ({s.name}): {name} lists subjects twice: {dup}")
        unknown = set(ids) - labelled
        if unknown:
            raise SplitError(f"split ({s.name}): {name} has subjects that are not labelled subjects "
                             f"of the dataset: {sorted(unknown)}")
    for name in ("train", "val", "test"):
        if not parts[name]:
            raise SplitError(f"split ({s.name}): {name} has no subject")
    for a, b in (("pool", "val"), ("pool", "test"), ("val", "test"), ("train", "val"), ("train", "test")):
        overlap = set(parts[a]) & set(parts[b])
        if overlap:
            raise SplitError(f"split ({s.name}): subjects in both {a} and {b}: {sorted(overlap)}")
    outside = set(s.train) - set(s.pool)
    if outside:
        raise SplitError(f"split ({s.name}): train subjects outside the training pool: {sorted(outside)}")
    _check_groups(s, group)
    held_out = {group(i) for i in (*s.val, *s.test)}
    if set(s.unlabelled) != {u for u in unlabelled if group(u) not in held_out}:
        raise SplitError(f"split ({s.name}): unlabelled subjects differ from the dataset's unlabelled subjects "
                         "outside the validation and test groups")


def _check_groups(s: Split, group) -> None:
    """No group on two sides of the split, and the subset takes whole groups of the pool."""
    sides = {name: {group(i) for i in getattr(s, name)} for name in ("pool", "val", "test")}
    for a, b in (("pool", "val"), ("pool", "test"), ("val", "test")):
        shared = sides[a] & sides[b]
        if shared:
            raise SplitError(f"split ({s.name}): groups with subjects in both {a} and {b}: {sorted(shared)}")
    taken = {group(i) for i in s.train}
    partial = sorted({group(i) for i in s.pool if group(i) in taken and i not in s.train})
    if partial:
        raise SplitError(f"split ({s.name}): the training subset takes only some subjects of groups {partial}")


def _check_nesting(splits: Sequence[Split]) -> None:
    groups: dict[tuple[int, int], list[Split]] = {}
    for s in splits:
        groups.setdefault((s.fold, s.repeat), []).append(s)
    for group in groups.values():
        group = sorted(group, key=lambda s: s.amount)
        first = group[0]
        for s in group:
            for name in ("val", "test", "pool"):
                if set(getattr(s, name)) != set(getattr(first, name)):
                    raise SplitError(f"split ({s.name}): {name} differs from {first.name}; it must not "
                                     "change with the amount")
        for small, large in zip(group, group[1:]):
            missing = set(small.train) - set(large.train)
            if missing:
                raise SplitError(f"split: subsets are not nested: {sorted(missing)} train at {small.name} "
                                 f"but not at {large.name}")


def _check_folds(splits: Sequence[Split], labelled_ids: Sequence[str], spec: SplitSpec) -> None:
    everyone = set(labelled_ids)
    for repeat in range(spec.repeats):
        tested: list[str] = []
        for fold in range(spec.folds):
            fold_splits = [s for s in splits if s.fold == fold and s.repeat == repeat]
            if not fold_splits:
                raise SplitError(f"split: fold {fold}, repeat {repeat} is missing")
            s = fold_splits[0]
            tested += s.test
            unused = everyone - set(s.pool) - set(s.val) - set(s.test)
            if unused:
                raise SplitError(f"split ({s.name}): labelled subjects in no set: {sorted(unused)}")
        dup = _duplicates(tested)
        if dup:
            raise SplitError(f"split: repeat {repeat}: subjects in more than one test fold: {dup}")
        if set(tested) != everyone:
            raise SplitError(f"split: repeat {repeat}: subjects in no test fold: {sorted(everyone - set(tested))}")


def _rng(seed: int, purpose: int, *coords: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(purpose, *coords)))


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def _subset_size(amount: float | int, kind: str, pool_size: int, where: str, unit: str = "subjects") -> int:
    if kind == "count":
        size = int(amount)
    else:
        # round() first: 0.7 * 10 is 7.000000000000001 in floating point and must give 7.
        size = math.ceil(round(amount * pool_size, 9))
    if size < 1 or size > pool_size:
        raise SplitError(f"split ({where}): {kind} {amount:g} gives {size} {unit} but the training pool "
                         f"has {pool_size}; use {kind}s that select between 1 and {pool_size} {unit}")
    return size


def _holdout_sizes(n: int, spec: SplitSpec, unit: str = "subjects") -> tuple[int, int]:
    n_test, n_val = _round_half_up(spec.test * n), _round_half_up(spec.val * n)
    if n_test < 1:
        raise SplitError(f"split: test={spec.test:g} of {n} labelled {unit} gives no test {unit[:-1]}")
    if n_val < 1:
        raise SplitError(f"split: val={spec.val:g} of {n} labelled {unit} gives no validation {unit[:-1]}")
    if n - n_test - n_val < 1:
        raise SplitError(f"split: test={spec.test:g} and val={spec.val:g} of {n} labelled {unit} "
                         f"leave no training {unit[:-1]}")
    return n_test, n_val


def _fold_test_sets(ids: Sequence[str], spec: SplitSpec, repeat: int, unit: str = "subjects") -> list[list[str]]:
    if spec.folds > len(ids):
        raise SplitError(f"split: folds={spec.folds} needs at least {spec.folds} labelled {unit}, "
                         f"the dataset has {len(ids)}")
    order = _rng(spec.seed, _PARTITION, repeat).permutation(len(ids))
    return [[ids[i] for i in part] for part in np.array_split(order, spec.folds)]


def _carve_val(rest: list[str], spec: SplitSpec, fold: int, repeat: int,
               unit: str = "subjects") -> tuple[list[str], list[str]]:
    share = spec.val if spec.val is not None else DEFAULT_FOLD_VAL
    n_val = _round_half_up(share * len(rest))
    where = f"fold {fold}, repeat {repeat}"
    if n_val < 1:
        raise SplitError(f"split ({where}): val={share:g} of {len(rest)} non-test {unit} gives no "
                         f"validation {unit[:-1]}; raise val or use fewer folds")
    if n_val >= len(rest):
        raise SplitError(f"split ({where}): val={share:g} of {len(rest)} non-test {unit} leaves no "
                         f"training {unit[:-1]}")
    order = _rng(spec.seed, _VALIDATION, fold, repeat).permutation(len(rest))
    val = [rest[i] for i in order[:n_val]]
    pool = [rest[i] for i in order[n_val:]]
    return val, pool


@dataclass(frozen=True)
class _Units:
    """What the draws permute: groups (each subject its own group without a group column)."""

    members: dict  # unit -> sorted labelled subjects
    group: dict    # subject (labelled or unlabelled) -> unit
    unlabelled: tuple[str, ...]
    word: str      # "subjects" or "groups", for messages

    def subjects(self, units: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(i for u in units for i in self.members[u]))

    def unlabelled_outside(self, held_out: Iterable[str]) -> tuple[str, ...]:
        held = set(held_out)
        return tuple(u for u in self.unlabelled if self.group[u] not in held)


def _nested_splits(pool: list[str], val: list[str], test: list[str], spec: SplitSpec, fold: int,
                   repeat: int, units: _Units) -> list[Split]:
    """The splits of one (fold, repeat) at every amount; ``pool``, ``val`` and ``test`` are units."""
    pool = sorted(pool)
    order = [pool[i] for i in _rng(spec.seed, _NESTING, fold, repeat).permutation(len(pool))]
    val_ids, test_ids, pool_ids = units.subjects(val), units.subjects(test), units.subjects(pool)
    unlabelled = units.unlabelled_outside([*val, *test])
    splits = []
    for amount in spec.amounts:
        size = _subset_size(amount, spec.amount_kind, len(pool), f"fold {fold}, repeat {repeat}", units.word)
        splits.append(Split(fold=fold, repeat=repeat, amount=amount, train=units.subjects(order[:size]),
                            val=val_ids, test=test_ids, pool=pool_ids, unlabelled=unlabelled))
    return splits


def _units(ids: list[str], unlabelled: tuple[str, ...], groups: dict | None) -> _Units:
    group = {i: str((groups or {}).get(i, i)) for i in (*ids, *unlabelled)}
    members: dict[str, list[str]] = {}
    for i in ids:
        members.setdefault(group[i], []).append(i)
    word = "groups" if any(g != i for i, g in group.items()) else "subjects"
    return _Units(members={u: sorted(m) for u, m in sorted(members.items())}, group=group,
                  unlabelled=unlabelled, word=word)


def build_splits(labelled_ids: Iterable[str], spec: SplitSpec, *, unlabelled_ids: Iterable[str] = (),
                 groups: dict[str, str] | None = None) -> SplitPlan:
    """Every split of ``spec`` over these subjects, drawn over ``groups`` (subject -> group,
    e.g. the manifest's ``groups``; None: each subject alone). The result does not depend on
    the order in which the ids are given (they are sorted first) and is checked before it is
    returned."""
    given = [str(i) for i in labelled_ids]
    if _duplicates(given):
        raise SplitError(f"split: duplicate labelled subject ids: {_duplicates(given)}")
    ids = sorted(given)
    units = _units(ids, tuple(sorted(str(i) for i in unlabelled_ids)), groups)
    if not ids:
        raise SplitError("split: the dataset has no labelled subject")
    names = list(units.members)  # sorted
    splits: list[Split] = []
    for repeat in range(spec.repeats):
        if spec.folds is not None:
            for fold, test in enumerate(_fold_test_sets(names, spec, repeat, units.word)):
                rest = [u for u in names if u not in set(test)]
                val, pool = _carve_val(rest, spec, fold, repeat, units.word)
                splits += _nested_splits(pool, val, test, spec, fold, repeat, units)
        else:
            n_test, n_val = _holdout_sizes(len(names), spec, units.word)
            order = [names[i] for i in _rng(spec.seed, _PARTITION, repeat).permutation(len(names))]
            test, val, pool = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
            splits += _nested_splits(pool, val, test, spec, 0, repeat, units)
    plan = SplitPlan(spec=spec, labelled_ids=tuple(ids), unlabelled_ids=units.unlabelled, splits=tuple(splits),
                     groups=units.group)
    plan.check()
    return plan


# --- generator blocks ------------------------------------------------------------------------------


def nesting_order(plan: SplitPlan, fold: int, repeat: int) -> list[tuple[str, ...]]:
    """The units (groups; each a tuple of its labelled subjects) of a (fold, repeat)'s training
    pool in the order its nested subsets take them: the same permutation ``_nested_splits``
    drew, recomputed from the plan's seed, so it does not depend on which amounts a study has."""
    split = next((s for s in plan.splits if s.fold == fold and s.repeat == repeat), None)
    if split is None:
        raise SplitError(f"split: no split at fold {fold}, repeat {repeat}")
    members: dict[str, list[str]] = {}
    for sid in split.pool:
        members.setdefault(str(plan.group(sid)), []).append(sid)
    names = sorted(members)
    order = [names[i] for i in _rng(plan.spec.seed, _NESTING, fold, repeat).permutation(len(names))]
    return [tuple(sorted(members[u])) for u in order]


def training_blocks(plan: SplitPlan, split: Split, size: int | None) -> list[tuple[str, ...]]:
    """A split's training subset cut into blocks of ``size`` units (subjects, or groups as the
    counts count them), in nesting order: block i of a larger subset is block i of every
    smaller subset that holds it (001 section III-F's "groups of 6 images", DESIGN rule 2). A
    subset of at most ``size`` units (or ``size`` None) is one block; the last block of a
    subset that is not a multiple of ``size`` holds the remainder. Each block is sorted."""
    order = nesting_order(plan, split.fold, split.repeat)
    train, taken, units = set(split.train), set(), []
    for unit in order:
        if taken >= train:
            break
        units.append(unit)
        taken |= set(unit)
    if taken != train:
        raise SplitError(f"split ({split.name}): the training subset is not a prefix of the nesting order")
    if size is None or len(units) <= size:
        return [tuple(sorted(train))]
    return [tuple(sorted(s for u in units[i:i + size] for s in u)) for i in range(0, len(units), size)]
