"""The synthetic-data pipeline between a generator and a segmentation network: draw, clean up
the labels, filter, keep the best ``size``.

Contract:

- A generator's sampler is wrapped by the caller as ``sample(n, seed) -> Samples``: ``n``
  image+label pairs in the data's normalised intensity space, with per-sample ``extras`` that
  clean-ups and filters may use (``critic`` (n,), ``latent_norm`` (n,), ``label_channels``
  (n, L, H, W): the raw generator label output in [-1, 1], L = 1 for a binary label
  (thresholded at 0, as 003) or one channel per class).
- Clean-ups and filters see the samples and a ``Reference``: the cell's labelled training
  subset only (DESIGN rule 3), never validation or test subjects.
- ``LABEL_CLEANUPS`` entry: ``fn(samples, reference, **options) -> Samples`` (same samples, labels
  repaired; it may drop samples). A clean-up that turns a non-empty label map into an empty
  one has made the pair inconsistent (the image still shows the structure), so ``draw`` drops
  such samples and counts them as removed.
- ``SYNTHETIC_FILTERS`` entry: ``SyntheticFilter(fn, whole_pool)`` with
  ``fn(samples, reference, *, seed, **options) -> FilterResult`` (keep mask, score: higher is
  more realistic). ``whole_pool`` filters judge a sample against the others (a percentile over
  the pool, a classifier fitted on it), so they are refused for on-the-fly sampling.
- Options are an entry's keyword-only parameters. Their annotations are the schema: ``int``,
  ``float``, ``bool``, ``Literal[...]`` or a union of these, optionally
  ``Annotated[..., Interval(...)]``; ``build_pool_spec`` checks YAML options against them, so
  adding an entry is one function in cleanup.py or filters.py and one ``.add`` line below.
- ``draw(sample, spec, reference, seed=...)`` draws ceil(size x oversample) pairs, runs the
  clean-ups then the filters (each on the survivors of the previous step), keeps ``size`` and
  returns them with the counts of every step. Fixed pools and on-the-fly batches both use it.

Option checking is written here (typing introspection, ~40 lines) because pydantic is not a
dependency and the options are a handful of scalars per entry.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, NamedTuple

import numpy as np
import scipy.stats

from synthmix.datasets.arrays import SliceSet
from synthmix.errors import StudyError
from synthmix.registry import Registry

SOURCE = "generator.pool"


class Samples(NamedTuple):
    """Generated pairs. images (n, C, H, W) float32 in the data's normalised intensity space;
    labels (n, H, W) int64 in [0, num_classes); extras: per-sample arrays, first dim n."""

    images: np.ndarray
    labels: np.ndarray
    extras: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        """The number of pairs (``len()`` of a NamedTuple counts its three fields)."""
        return len(self.images)

    def take(self, index: np.ndarray) -> "Samples":
        """The subset at ``index`` (a bool mask or integer indices), extras included."""
        index = np.asarray(index)
        return Samples(self.images[index], self.labels[index], {k: v[index] for k, v in self.extras.items()})

    def with_labels(self, labels: np.ndarray) -> "Samples":
        return Samples(self.images, np.asarray(labels, np.int64), self.extras)

    @staticmethod
    def concat(parts: typing.Sequence["Samples"]) -> "Samples":
        """One Samples from several with the same extras keys."""
        parts = list(parts)
        keys = set(parts[0].extras)
        if any(set(p.extras) != keys for p in parts):
            raise ValueError(f"cannot concatenate samples with different extras: {[sorted(p.extras) for p in parts]}")
        return Samples(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                       {k: np.concatenate([p.extras[k] for p in parts]) for k in keys})


@dataclass(frozen=True, eq=False)
class Reference:
    """What clean-ups and filters may use: the cell's labelled training subset only (rule 3)."""

    real: SliceSet


class FilterResult(NamedTuple):
    keep: np.ndarray   # (n,) bool
    score: np.ndarray  # (n,) float, higher = more realistic / better


@dataclass(frozen=True)
class SyntheticFilter:
    """fn(samples, reference, *, seed, **options) -> FilterResult; ``whole_pool``: the filter
    needs the whole pool (rejected for on-the-fly sampling)."""

    fn: Callable[..., FilterResult]
    whole_pool: bool


LABEL_CLEANUPS: Registry[Callable[..., Samples]] = Registry("label clean-up")
"""name -> ``fn(samples: Samples, reference: Reference, **options) -> Samples``: labels repaired
(images untouched), the same samples in the same order unless the entry drops some."""

SYNTHETIC_FILTERS: Registry[SyntheticFilter] = Registry("synthetic filter")
"""name -> ``SyntheticFilter(fn, whole_pool)``, ``fn(samples, reference, *, seed, **options)
-> FilterResult``: which samples to keep and a score (higher is better) used to rank them."""


# ---- options -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """Annotated metadata: the allowed range of a numeric option; ``closed`` in both | left |
    right | neither."""

    low: float = -math.inf
    high: float = math.inf
    closed: str = "both"

    def __contains__(self, v: float) -> bool:
        lo_ok = v >= self.low if self.closed in ("both", "left") else v > self.low
        hi_ok = v <= self.high if self.closed in ("both", "right") else v < self.high
        return lo_ok and hi_ok

    def __str__(self) -> str:
        left = "[" if self.closed in ("both", "left") and not math.isinf(self.low) else "("
        right = "]" if self.closed in ("both", "right") and not math.isinf(self.high) else ")"
        fmt = lambda v: ("inf" if v > 0 else "-inf") if math.isinf(v) else f"{v:g}"  # noqa: E731
        return f"{left}{fmt(self.low)}, {fmt(self.high)}{right}"


def _options(fn: Callable) -> dict[str, inspect.Parameter]:
    """An entry's options: its keyword-only parameters, minus ``seed`` (supplied by draw)."""
    return {n: p for n, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY and n != "seed"}


def _scalar(value: Any, hint: Any) -> tuple[bool, Any]:
    """(value fits the non-union hint, value converted to it)."""
    if typing.get_origin(hint) is Literal:
        return value in typing.get_args(hint) and isinstance(value, str | bool | int), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    return isinstance(value, hint), value


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def check_option(value: Any, hint: Any) -> tuple[str | None, Any]:
    """(problem or None, converted value) for one option against its annotation."""
    interval = None
    if typing.get_origin(hint) is typing.Annotated:
        hint, *meta = typing.get_args(hint)
        interval = next((m for m in meta if isinstance(m, Interval)), None)
    choices = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for choice in choices:
        ok, converted = _scalar(value, choice)
        if ok:
            if interval is not None and choice in (int, float) and converted not in interval:
                return f"must be in {interval}, got {value!r}", value
            return None, converted
    return f"must be {' or '.join(_describe(c) for c in choices)}, got {value!r}", value


def _check_step(entry: Any, path: str, name: str, given: dict) -> tuple[list[str], dict]:
    fn = entry.fn if isinstance(entry, SyntheticFilter) else entry
    params = _options(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    problems = [f"{path}.{k}: unknown option of {name!r}; known: {', '.join(params) or 'none'}"
                for k in given if k not in params]
    options = {}
    for key, p in params.items():
        if key not in given:
            if p.default is p.empty:
                problems.append(f"{path}.{key}: required option of {name!r} is missing")
            options[key] = p.default
            continue
        problem, options[key] = check_option(given[key], hints.get(key, Any))
        if problem:
            problems.append(f"{path}.{key}: {problem}")
    return problems, dict(sorted(options.items()))


Step = tuple[str, dict]


def _steps(raw: Any, section: str, registry: Registry) -> tuple[list[str], tuple[Step, ...]]:
    if raw is None:
        return [], ()
    if not isinstance(raw, list):
        return [f"{section}: must be a list of names or {{name: ..., option: value}} mappings, got {raw!r}"], ()
    problems, steps = [], []
    for i, item in enumerate(raw):
        path = f"{section}[{i}]"
        if isinstance(item, str):
            name, given = item, {}
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            name, given = item["name"], {k: v for k, v in item.items() if k != "name"}
        else:
            problems.append(f"{path}: must be a name or a mapping with a 'name', got {item!r}")
            continue
        if name not in registry:
            problems.append(f"{path}: unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}")
            continue
        found, options = _check_step(registry.get(name), path, name, given)
        problems += found
        steps.append((name, options))
    return problems, tuple(steps)


# ---- pool spec ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolSpec:
    """How a pool is drawn: ``size`` samples kept out of ceil(size x oversample) drawn, after
    the ``cleanup`` steps and the ``filters`` (each a (name, complete options) pair)."""

    size: int = 512
    oversample: float = 1.0
    cleanup: tuple[Step, ...] = ()
    filters: tuple[Step, ...] = field(default=())

    @property
    def drawn(self) -> int:
        return math.ceil(self.size * self.oversample - 1e-9)

    def to_dict(self) -> dict:
        """Canonical JSON-able form (every option spelt out), what the pool key hashes."""
        as_list = lambda steps: [{"name": n, **dict(sorted(o.items()))} for n, o in steps]  # noqa: E731
        return {"size": self.size, "oversample": float(self.oversample),
                "cleanup": as_list(self.cleanup), "filters": as_list(self.filters)}


POOL_KEYS = ("size", "oversample", "cleanup", "filters")


def build_pool_spec(d: dict) -> PoolSpec:
    """A PoolSpec from the YAML ``generator.pool`` mapping; every problem (unknown key, unknown
    clean-up or filter, unknown or ill-typed option) is raised at once, each by field path."""
    if not isinstance(d, dict):
        raise StudyError([f"must be a mapping with keys {', '.join(POOL_KEYS)}, got {d!r}"], source=SOURCE)
    problems = [f"{k}: unknown key; known: {', '.join(POOL_KEYS)}" for k in d if k not in POOL_KEYS]
    size, oversample = d.get("size", PoolSpec.size), d.get("oversample", PoolSpec.oversample)
    problem, size = check_option(size, typing.Annotated[int, Interval(1)])
    if problem:
        problems.append(f"size: {problem}")
    problem, oversample = check_option(oversample, typing.Annotated[float, Interval(1)])
    if problem:
        problems.append(f"oversample: {problem}")
    found, cleanup = _steps(d.get("cleanup"), "cleanup", LABEL_CLEANUPS)
    problems += found
    found, filters = _steps(d.get("filters"), "filters", SYNTHETIC_FILTERS)
    problems += found
    if problems:
        raise StudyError(problems, source=SOURCE)
    return PoolSpec(size=size, oversample=oversample, cleanup=cleanup, filters=filters)


def on_the_fly_problems(spec: PoolSpec) -> list[str]:
    """Why ``spec`` cannot run for on-the-fly sampling (filters that need the whole pool)."""
    return [f"filters[{i}]: {name!r} needs the whole pool (it ranks each sample against the others), "
            "so it cannot be used with mixing source: on_the_fly"
            for i, (name, _) in enumerate(spec.filters) if SYNTHETIC_FILTERS.get(name).whole_pool]


# ---- drawing a pool ------------------------------------------------------------------------

def _check_samples(samples: Samples, n: int, num_classes: int, what: str) -> None:
    images, labels = samples.images, samples.labels
    if images.ndim != 4 or len(images) != n or labels.shape != (n, *images.shape[2:]):
        raise ValueError(f"{what} returned images {images.shape} and labels {labels.shape}; "
                         f"expected ({n}, C, H, W) and ({n}, H, W)")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what} returned labels outside [0, {num_classes})")
    bad = {k: v.shape for k, v in samples.extras.items() if len(v) != n}
    if bad:
        raise ValueError(f"{what} returned extras whose first dimension is not {n}: {bad}")


def _cleanup_step(name: str, options: dict, samples: Samples, reference: Reference) -> tuple[Samples, dict]:
    cleaned = LABEL_CLEANUPS.get(name)(samples, reference, **options)
    _check_samples(cleaned, cleaned.n, reference.real.num_classes, f"clean-up {name!r}")
    if cleaned.n == samples.n:
        had = samples.labels.reshape(samples.n, -1).any(axis=1)
        emptied = had & ~cleaned.labels.reshape(cleaned.n, -1).any(axis=1)
        changed = (samples.labels != cleaned.labels).reshape(samples.n, -1).any(axis=1)
        cleaned = cleaned.take(~emptied)
        record = {"removed": int(emptied.sum()), "emptied": int(emptied.sum()),
                  "changed": int((changed & ~emptied).sum())}
    else:  # an entry that drops samples reports no per-sample changes
        record = {"removed": samples.n - cleaned.n, "emptied": 0, "changed": None}
    return cleaned, {"name": name, "kind": "cleanup", "before": samples.n, "after": cleaned.n, **record}


def _filter_seed(seed: int, index: int) -> int:
    return int(np.random.default_rng([seed, index]).integers(2 ** 31))


def _best(scores: list[np.ndarray], n: int, size: int) -> np.ndarray:
    """Indices (in draw order) of the ``size`` of ``n`` samples with the best mean rank over
    the filters' scores (the first ``size`` without filters)."""
    if not scores:
        return np.arange(n)[:size]
    mean_rank = np.mean([scipy.stats.rankdata(s) for s in scores], axis=0)
    order = np.argsort(-mean_rank, kind="stable")
    return np.sort(order[:size])


def draw(sample: Callable[[int, int], Samples], spec: PoolSpec, reference: Reference, *, seed: int,
         on_the_fly: bool = False) -> tuple[Samples, dict]:
    """Draw ceil(size x oversample) samples with ``sample(n, seed)``, apply each clean-up, then
    each filter (each on the survivors of the previous step), then keep ``size`` survivors.

    When more than ``size`` survive, the kept ones are those with the best mean rank of the
    filters' scores: the scores have unrelated units (a distance, a variance, a logit), so
    ranks make them comparable without weights, and a sample must do well under every filter
    to be kept. Without filters the first ``size`` in draw order are kept (the draw order is
    already random). Fewer survivors than ``size`` are all kept and ``short_by`` says by how
    many; the pool is never padded. The kept samples stay in draw order.

    Returns (samples, counts) with counts ``{drawn, kept, size, short_by, trimmed, steps:
    [{name, kind, before, after, removed, ...}]}``; ``trimmed`` is what survived every step
    but was not kept, so drawn - sum(removed) - trimmed = kept.
    """
    if on_the_fly:
        problems = on_the_fly_problems(spec)
        if problems:
            raise StudyError(problems, source=SOURCE)
    num_classes = reference.real.num_classes
    drawn = spec.drawn
    samples = sample(drawn, seed)
    _check_samples(samples, drawn, num_classes, "the generator's sampler")
    steps = []
    for name, options in spec.cleanup:
        samples, record = _cleanup_step(name, options, samples, reference)
        steps.append(record)
    scores: list[np.ndarray] = []
    for index, (name, options) in enumerate(spec.filters):
        before = samples.n
        if before:
            result = SYNTHETIC_FILTERS.get(name).fn(samples, reference, seed=_filter_seed(seed, index), **options)
            keep, score = np.asarray(result.keep, bool), np.asarray(result.score, np.float64)
            if keep.shape != (before,) or score.shape != (before,):
                raise ValueError(f"filter {name!r} returned keep {keep.shape} and score {score.shape}; expected ({before},)")
            scores = [s[keep] for s in scores] + [score[keep]]
            samples = samples.take(keep)
        steps.append({"name": name, "kind": "filter", "before": before, "after": samples.n,
                      "removed": before - samples.n})
    chosen = _best(scores, samples.n, spec.size)
    survivors = samples.n
    samples = samples.take(chosen)
    counts = {"drawn": drawn, "kept": samples.n, "size": spec.size,
              "short_by": max(0, spec.size - survivors), "trimmed": survivors - samples.n, "steps": steps}
    return samples, counts


def _register() -> None:
    from synthmix.trainers.synthetic import cleanup, filters

    LABEL_CLEANUPS.add("argmax", cleanup.argmax)
    LABEL_CLEANUPS.add("threshold", cleanup.threshold)
    LABEL_CLEANUPS.add("fill_holes", cleanup.fill_holes)
    LABEL_CLEANUPS.add("remove_small", cleanup.remove_small)
    LABEL_CLEANUPS.add("opening", cleanup.opening)
    LABEL_CLEANUPS.add("training_mask", cleanup.training_mask)
    LABEL_CLEANUPS.add("bowles_postprocess", cleanup.bowles_postprocess)

    SYNTHETIC_FILTERS.add("nearest_neighbour", SyntheticFilter(filters.nearest_neighbour, whole_pool=True))
    SYNTHETIC_FILTERS.add("zscore_norm", SyntheticFilter(filters.zscore_norm, whole_pool=False))
    SYNTHETIC_FILTERS.add("blur", SyntheticFilter(filters.blur, whole_pool=True))
    SYNTHETIC_FILTERS.add("realism", SyntheticFilter(filters.realism, whole_pool=True))


_register()

__all__ = ["Samples", "Reference", "FilterResult", "SyntheticFilter", "LABEL_CLEANUPS", "SYNTHETIC_FILTERS",
           "Interval", "PoolSpec", "Step", "build_pool_spec", "on_the_fly_problems", "draw"]
