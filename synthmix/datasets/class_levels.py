"""The ``classes`` factor: named remappings of the dataset's label set (004 trains on 7, 4 and
2 classes of one dataset).

A study declares the levels as a mapping, level name -> remapping, in ``factors``::

    factors:
      classes:
        7: identity                          # the dataset's labels as they are
        4: {4: 0, 5: 0, 6: 0}                # old: new; a label not listed keeps its value
        2: {2: 1, 3: 1, 4: 0, 5: 0, 6: 0}
        # wt: {remap: {2: 1, 3: 1, 4: 0, 5: 0, 6: 0}, names: [background, whole tumour]}

Rules (``parse_class_levels``; every problem names ``factors.classes.<level>``):

- the dataset's label set must be known when the study is planned: the phantom's ``classes``,
  or ``dataset.preprocess.num_classes`` (or its ``remap``) for a manifest;
- a key is a label of that set (0 .. K-1), a value a non-negative label;
- background stays background (0 -> 0: the metrics leave class 0 out);
- the classes after remapping are contiguous, 0 .. k-1 (k is the level's class count);
- a level named by a number has that many classes (``4`` must give 4), so a slip in the
  remapping is caught by its name.

A level's class names are the ``names`` given, else the dataset's names (the phantom's, else
``class <c>``) of the labels merged into each new class, joined by ``+`` (class 0 stays
``background``).

At training time (``orchestrator/cells.py``) a cell's real training, validation and test labels
and its synthetic labels are remapped with its level's lookup table (``remap_slices``,
``remap_synthetic``). The generator is trained once on the full label set and its pool drawn
once: neither key holds the level, so one generator and one pool serve every level. Class
weights (``weighted_dice``) come from the remapped real training labels, and metrics, rows and
the report carry the level's own classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from synthmix.datasets.arrays import SliceSet, SyntheticPool
from synthmix.errors import DataError

IDENTITY = "identity"


@dataclass(frozen=True)
class ClassLevel:
    """One level: ``lut[old] = new`` for every label of the dataset, and the new classes' names."""

    name: Any
    lut: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"level": self.name, "lut": list(self.lut), "names": list(self.names),
                "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassLevel":
        return cls(name=d["level"], lut=tuple(int(v) for v in d["lut"]), names=tuple(d["names"]))


def dataset_label_count(dataset: Any) -> int | None:
    """The label count of a study's dataset section when the study tells it (None: unknown
    before the data is read)."""
    pre = dataset.preprocess or {}
    if isinstance(pre.get("num_classes"), int):
        return pre["num_classes"]
    remap = pre.get("remap")
    if isinstance(remap, dict) and remap and all(isinstance(v, int) for v in remap.values()):
        return max(remap.values()) + 1
    return dataset.phantom.classes if dataset.phantom else None


def dataset_class_names_default(count: int) -> tuple[str, ...]:
    return ("background", *(f"class {c}" for c in range(1, count)))


def dataset_class_names(dataset: Any, count: int) -> tuple[str, ...]:
    """The phantom's class names (unless preprocess remaps them), else ``class <c>``."""
    pre = dataset.preprocess or {}
    if dataset.phantom and not pre.get("remap") and not pre.get("num_classes"):
        from synthmix.datasets.phantom import CLASS_NAMES

        names = CLASS_NAMES.get(dataset.phantom.classes)
        if names and len(names) == count:
            return tuple(names)
    return dataset_class_names_default(count)


def _label(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def parse_class_levels(raw: Any, *, count: int | None, names: tuple[str, ...] | None,
                       path: str = "factors.classes") -> tuple[tuple[ClassLevel, ...], list[str]]:
    """The levels of ``raw`` (the YAML mapping) over a dataset of ``count`` labels named
    ``names``; returns (levels, problems)."""
    if not isinstance(raw, dict) or not raw:
        return (), [f"{path}: must be a mapping of level name -> remapping (identity, or {{old: new}}), "
                    f"e.g. {{7: identity, 4: {{4: 0, 5: 0, 6: 0}}}}; got {raw!r}"]
    if count is None:
        return (), [f"{path}: the dataset's label set is not known when the study is planned; set "
                    "dataset.preprocess.num_classes (the labels, background included)"]
    names = tuple(names) if names and len(names) == count else dataset_class_names_default(count)
    levels, problems = [], []
    for level, spec in raw.items():
        where = f"{path}.{level}"
        if isinstance(level, bool) or not isinstance(level, (int, str)) or str(level) == "":
            problems.append(f"{where}: a level name must be a number or a name, got {level!r}")
            continue
        parsed = _one_level(level, spec, count, names, where)
        if isinstance(parsed, list):
            problems += parsed
        else:
            levels.append(parsed)
    texts = [str(lv.name) for lv in levels]
    problems += [f"{path}: two levels print the same ({t!r})" for t in sorted({t for t in texts if texts.count(t) > 1})]
    return tuple(levels), problems


def _one_level(level: Any, spec: Any, count: int, names: tuple[str, ...], where: str) -> ClassLevel | list[str]:
    given_names = None
    if isinstance(spec, dict) and ("remap" in spec or "names" in spec):
        unknown = [k for k in spec if k not in ("remap", "names")]
        if unknown:
            return [f"{where}.{k}: unknown key; known: remap, names" for k in unknown]
        given_names, spec = spec.get("names"), spec.get("remap", IDENTITY)
    if spec == IDENTITY or spec is None or spec == {}:
        mapping: dict[int, int] = {}
    elif isinstance(spec, dict):
        mapping, problems = {}, []
        for old, new in spec.items():
            o, n = _label(old), _label(new)
            if o is None or n is None or n < 0:
                problems.append(f"{where}.{old}: must map a label to a non-negative label, got {old!r}: {new!r}")
            elif not 0 <= o < count:
                problems.append(f"{where}.{old}: {old!r} is not a label of the dataset (its labels are 0..{count - 1})")
            else:
                mapping[o] = n
        if problems:
            return problems
    else:
        return [f"{where}: must be identity or a remapping {{old: new}}, got {spec!r}"]
    lut = tuple(mapping.get(old, old) for old in range(count))
    if lut[0] != 0:
        return [f"{where}.0: background (0) must stay 0 (the metrics leave class 0 out), got 0: {lut[0]}"]
    result = sorted(set(lut))
    k = len(result)
    if result != list(range(k)):
        missing = sorted(set(range(max(result) + 1)) - set(result))
        return [f"{where}: the classes after remapping are {result}, not contiguous 0..{k - 1} "
                f"(nothing maps to {', '.join(map(str, missing))}); renumber them"]
    if isinstance(level, int) and not isinstance(level, bool) and level != k:
        return [f"{where}: a level named {level} must give {level} classes; this remapping gives {k} ({result})"]
    if given_names is not None:
        if not isinstance(given_names, list) or len(given_names) != k or not all(isinstance(n, str) and n for n in given_names):
            return [f"{where}.names: must list {k} class names (background first), got {given_names!r}"]
        return ClassLevel(name=level, lut=lut, names=tuple(given_names))
    merged = tuple("background" if new == 0 else "+".join(names[o] for o in range(count) if lut[o] == new)
                   for new in range(k))
    return ClassLevel(name=level, lut=lut, names=merged)


# --- at training time ----------------------------------------------------------------------------


def remap_labels(labels: np.ndarray, lut: tuple[int, ...], what: str) -> np.ndarray:
    """``lut[labels]``; DataError naming ``what`` when a label is outside the lookup table."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(lut)):
        raise DataError(f"classes: {what} has labels in [{labels.min()}, {labels.max()}], but the classes level "
                        f"remaps the dataset's {len(lut)} labels (0..{len(lut) - 1})")
    return np.asarray(lut, dtype=np.int64)[labels]


def remap_slices(slices: SliceSet, level: ClassLevel, what: str = "the real data") -> SliceSet:
    """The same slices with the level's labels and class count."""
    if slices.num_classes != len(level.lut):
        raise DataError(f"classes: {what} has {slices.num_classes} classes, but level {level.name!r} remaps "
                        f"{len(level.lut)} (set dataset.preprocess.num_classes to the dataset's label count)")
    return SliceSet(images=slices.images, labels=remap_labels(slices.labels, level.lut, what),
                    subject_ids=slices.subject_ids, positions=slices.positions, spacing=slices.spacing,
                    num_classes=level.num_classes)


def remap_synthetic(synthetic: Any, level: ClassLevel) -> Any:
    """A pool (or an on-the-fly ``generate(n, rng)``) with labels remapped to the level; None
    stays None."""
    if synthetic is None:
        return None
    if isinstance(synthetic, SyntheticPool):
        return SyntheticPool(synthetic.images, remap_labels(synthetic.labels, level.lut, "the synthetic pool"),
                             meta={**synthetic.meta, "classes": level.name})
    generate: Callable = synthetic

    def remapped(n: int, rng: np.random.Generator):
        images, labels = generate(n, rng)
        return images, remap_labels(labels, level.lut, "the on-the-fly samples")

    return remapped
