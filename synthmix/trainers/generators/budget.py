"""``generator.budget: {cpu_seconds: N}``: a family's step counts set by its own cost model.

A generator bake-off gives every family the same CPU time rather than the same steps, which
mean different work per family. ``plan`` resolves the budget into the family's config: the
most steps whose modelled seconds (``GeneratorFamily.cost`` at the study's slice size, one CPU
core) fit the budget. The resolved config, with its steps, is what the generator key hashes,
so a budget and the steps it resolves to name the same generator.

A family with several step counts (``steps_of``: YAML path -> steps, e.g. both stages of
``spade_two_stage``) keeps their proportions: its defaults' or the config's own. Families with
a minimum (``pggan`` must grow to the model size) refuse a budget below the smallest valid
training, with the reason.
"""

from __future__ import annotations

from typing import Any

from synthmix.errors import StudyError

KEYS = ("cpu_seconds",)
MAX_STEPS = 10**8  # the search's upper end: no family trains that long on a CPU budget


def build_budget_spec(d: dict, *, family: str | None = None, config: dict | None = None) -> dict:
    """Check a budget mapping (and, given the family and its config, that the config sets no
    step count the budget would replace); returns it unchanged."""
    problems = [f"{k}: unknown key; known: {', '.join(KEYS)}" for k in d if k not in KEYS]
    seconds = d.get("cpu_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        problems.append(f"cpu_seconds: must be a positive number of seconds, got {seconds!r}")
    if family is not None and config is not None:
        for path in step_paths(family, config):
            if _get(config, path) is not None:
                problems.append(f"cpu_seconds: the budget sets config.{path}; give one of them")
    if problems:
        raise StudyError(problems, source="generator.budget")
    return d


def step_paths(family: str, config: dict) -> tuple[str, ...]:
    return tuple(_steps(family, config))


def _steps(family: str, config: dict) -> dict[str, int]:
    """YAML path -> step count of the family's built config."""
    from synthmix.trainers.generators import GENERATORS

    fam = GENERATORS.get(family)
    built = fam.config(dict(config))
    return dict(fam.steps_of(built)) if fam.steps_of else {"steps": int(built.steps)}


def resolve_budget(family: str, config: dict, cpu_seconds: float, shape: tuple[int, int]) -> dict:
    """``config`` with its step counts set to the most whose modelled cost fits ``cpu_seconds``
    at slices of ``shape``; StudyError when even the smallest valid training does not fit (or
    the family has no cost model)."""
    from synthmix.trainers.generators import GENERATORS

    fam = GENERATORS.get(family)
    if fam.cost is None:
        raise StudyError([f"budget: {family} has no cost model; give config steps instead"], source="generator")
    base = _steps(family, config)
    lead = next(iter(base))

    def scaled(n: int) -> dict:
        out = _copy(config)
        for path, steps in base.items():
            _set(out, path, max(1, round(steps * n / base[lead])) if path != lead else n)
        return out

    def seconds(n: int) -> float | None:  # None: the family refuses that many steps (too few)
        try:
            built = fam.config(scaled(n))
            if fam.check_steps is not None:
                fam.check_steps(built, shape)
            return float(fam.cost(built, shape))
        except StudyError:
            return None

    fits = lambda n: (seconds(n) or 0.0) <= cpu_seconds  # noqa: E731 - refused counts lie below the valid ones
    hi = 1
    while fits(hi) and hi < MAX_STEPS:
        hi *= 2
    lo = 0  # fits(lo) holds (or lo is 0); fits(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if lo < 1 or seconds(lo) is None:
        low = _smallest_valid(seconds, hi)
        need = f"; its smallest valid training is modelled at {low:.0f} s" if low is not None else ""
        raise StudyError([f"budget: cpu_seconds {cpu_seconds:g} is too small for {family} at "
                          f"{shape[0]}x{shape[1]}{need}"], source="generator")
    return scaled(lo)


def _smallest_valid(seconds, start: int) -> float | None:
    """The modelled seconds of the fewest steps the family accepts (None: none below MAX_STEPS)."""
    n = max(start, 1)
    while seconds(n) is None:
        if n >= MAX_STEPS:
            return None
        n *= 2
    lo, hi = n // 2, n  # seconds(lo) refused (or lo is 0), seconds(hi) valid
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if seconds(mid) is not None else (mid, hi)
    return seconds(hi)


def _copy(config: dict) -> dict:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in config.items()}


def _get(config: dict, path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(config: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
