"""The ``tune:`` section of a study: an Optuna search over study fields before the grid,
scored on one resample's validation subjects (or by its generator's quality), whose winner is
frozen into the grid (``synthmix.orchestrator.tuning`` runs it)::

    tune:
      on: {fold: 0, repeat: 0, real_fraction: 1.0}   # the resample whose validation subjects score
                                                     # trials; other factors: their level (needed
                                                     # when a factor has several)
      trials: 20                                     # default 20; with sampler grid, the grid's size
      metric: val_dice_mean                          # val_<dice|iou|precision|recall|hd|hd95>_<mean|class>
                                                     # on the validation subjects, or swd, fcn_score (generator)
      mode: max                                      # default: min for hd, hd95 and swd, else max
      sampler: {name: tpe, seed: 0}                  # tpe | random | grid
      space:                                         # dotted study fields under segmenter or generator
        segmenter.augmentation_params.intensity_shift_std: {float: [0.0, 0.1]}
        segmenter.augmentation_params.elastic_std_px: {choice: [0, 5, 10]}
        generator.config.steps: {int: [100, 1000], log: true}   # also step: N

Every path is checked as part of the study: the study is validated again with the path set to
each end of its range and to every choice, so an unknown path, a value its field rejects or a
choice of the wrong type is reported by ``synthmix plan`` as ``tune.space.<path>: ...``, naming
the field, before anything runs. (Values between the ends are not all tried: a field whose
validity is not monotonic in the value could still fail a trial, which is then recorded.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

KINDS = ("float", "int", "choice")
SAMPLERS = ("tpe", "random", "grid")
TUNABLE_ROOTS = ("segmenter", "generator")
DEFAULT_TRIALS = 20
#: Generator quality figures a search can score trials by: metric name -> (its key in the
#: generator's ``quality.json``, direction). A new figure is one line.
GENERATOR_FIGURES = {"swd": ("swd", "min"), "fcn_score": ("fcn_dice_mean", "max")}
_LOWER_IS_BETTER = ("hd", "hd95")
_PATH = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)+$")


@dataclass(frozen=True)
class ParamSpec:
    """One dimension of the search: a float or int range (``log``, ``step``) or a choice."""

    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def to_dict(self) -> dict:
        """As in YAML: ``{float: [low, high], log: true}``, ``{choice: [...]}``."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        d = {self.kind: [self.low, self.high]}
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d

    def ends(self) -> list:
        """The values validated ahead of the search: both ends, or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def grid(self) -> list | None:
        """Every value, when the dimension is finite (a choice or a stepped range)."""
        if self.kind == "choice":
            return list(self.choices)
        step = self.step if self.step is not None else (1 if self.kind == "int" else None)
        if step is None or self.log:
            return None
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask an Optuna trial for this dimension's value."""
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        suggest = trial.suggest_float if self.kind == "float" else trial.suggest_int
        options = {"log": True} if self.log else {}
        if self.step is not None:
            options["step"] = self.step
        return suggest(name, self.low, self.high, **options)

    def distribution(self) -> Any:
        """The equivalent ``optuna.distributions`` object (for tables and plots)."""
        from optuna import distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution(list(self.choices))
        cls = d.FloatDistribution if self.kind == "float" else d.IntDistribution
        step = self.step if self.step is not None else (None if self.kind == "float" else 1)
        return cls(self.low, self.high, log=self.log, step=step)


@dataclass(frozen=True)
class TuneSection:
    on: dict                 # fold, repeat and one level of every factor: the trials' cell
    trials: int
    metric: str
    mode: str                # "max" | "min"
    sampler: str
    seed: int
    space: dict = field(default_factory=dict)  # path -> ParamSpec, in YAML order

    @property
    def scores_generator(self) -> bool:
        return self.metric in GENERATOR_FIGURES

    def distributions(self) -> dict:
        return {path: spec.distribution() for path, spec in self.space.items()}

    def grid_space(self) -> dict[str, list]:
        return {path: spec.grid() for path, spec in self.space.items()}


# --- validation ----------------------------------------------------------------------------------


def validate_tune(raw: Any, study_raw: dict, *, factors: dict, exclude: tuple, split: Any, mixing: Any,
                  classes: int | None, source: str, base_dir: Any, problems: Any,
                  revalidate: bool) -> TuneSection | None:
    """The validated section, problems added to ``problems`` (schema's ``_Problems``).
    ``study_raw`` is the study's YAML mapping without its ``tune`` key. With ``revalidate`` (the
    rest of the study is valid), each path is checked by validating the study with it set to
    each of its end values."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add("tune", f"must be a mapping, got {raw!r}")
        return None
    # YAML 1.1 (PyYAML) reads a bare `on` key as true; a JSON round trip then makes it "true".
    raw = {("on" if k is True or k == "true" else k): v for k, v in raw.items()}
    for key in raw:
        if key not in ("on", "trials", "metric", "mode", "sampler", "space"):
            problems.add(f"tune.{key}", "unknown key; known: on, trials, metric, mode, sampler, space")
    metric, mode = _metric(raw, classes, problems)
    sampler, seed = _sampler(raw.get("sampler"), problems)
    space = _space(raw.get("space"), study_raw, problems)
    on = _on(raw.get("on"), factors, split, mixing, metric, problems)
    for i, exclusion in enumerate(exclude):
        if exclusion and all(on.get(k) in levels for k, levels in exclusion.items()):
            problems.add("tune.on", f"exclude[{i}] removes this cell from the grid; tune on a cell the grid runs")
    trials = _trials(raw, sampler, space, problems)
    section = TuneSection(on=on, trials=trials, metric=metric, mode=mode, sampler=sampler, seed=seed, space=space)
    _relevance(section, factors, mixing, problems)
    if revalidate:
        for path, spec in space.items():
            if not any(p.startswith((f"tune.space.{path}:", f"tune.space.{path}.")) for p in problems):
                _check_values(path, spec, study_raw, source, base_dir, problems)
    return section


def _metric(raw: dict, classes: int | None, problems: Any) -> tuple[str, str]:
    from synthmix.trainers.metrics import METRIC_NAMES

    metric = raw.get("metric", "val_dice_mean")
    match = re.fullmatch(r"val_([a-z0-9]+)_(mean|\d+)", metric) if isinstance(metric, str) else None
    known = f"val_<{'|'.join(METRIC_NAMES)}>_<mean|class>, {', '.join(GENERATOR_FIGURES)}"
    if metric in GENERATOR_FIGURES:
        default = GENERATOR_FIGURES[metric][1]
    elif match and match.group(1) in METRIC_NAMES:
        default = "min" if match.group(1) in _LOWER_IS_BETTER else "max"
        if match.group(2) != "mean" and classes and not 1 <= int(match.group(2)) < classes:
            problems.add("tune.metric", f"class {match.group(2)} is not a foreground class (1..{classes - 1})")
    else:
        problems.add("tune.metric", f"unknown metric {metric!r}; known: {known} (validation subjects "
                     "only: test metrics never score a trial)")
        default = "max"
    mode = raw.get("mode", default)
    if mode not in ("max", "min"):
        problems.add("tune.mode", f"must be max or min, got {mode!r}")
    return str(metric), mode


def _sampler(raw: Any, problems: Any) -> tuple[str, int]:
    if raw is None:
        return "tpe", 0
    if not isinstance(raw, dict):
        problems.add("tune.sampler", f"must be a mapping {{name, seed}}, got {raw!r}")
        return "tpe", 0
    for key in raw:
        if key not in ("name", "seed"):
            problems.add(f"tune.sampler.{key}", "unknown key; known: name, seed")
    name, seed = raw.get("name", "tpe"), raw.get("seed", 0)
    if name not in SAMPLERS:
        problems.add("tune.sampler.name", f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.add("tune.sampler.seed", f"must be an integer >= 0, got {seed!r}")
        seed = 0
    return str(name), seed


def _space(raw: Any, study_raw: dict, problems: Any) -> dict:
    if not isinstance(raw, dict) or not raw:
        problems.add("tune.space", f"must map study fields to ranges or choices, got {raw!r}")
        return {}
    space = {}
    for path, entry in raw.items():
        where = f"tune.space.{path}"
        if not isinstance(path, str) or not _PATH.match(path):
            problems.add(where, "must be a dotted study field such as segmenter.lr")
            continue
        if path.split(".")[0] not in TUNABLE_ROOTS:
            problems.add(where, f"unknown path: only fields under {' or '.join(TUNABLE_ROOTS)} can be tuned")
            continue
        spec = _param(entry, where, problems)
        if spec is not None:
            _check_field_type(spec, _current(study_raw, path), where, problems)
            space[path] = spec
    return space


def _param(entry: Any, where: str, problems: Any) -> ParamSpec | None:
    if not isinstance(entry, dict):
        problems.add(where, f"must be {{float: [low, high]}}, {{int: [low, high]}} or {{choice: [...]}}, got {entry!r}")
        return None
    kinds = [k for k in KINDS if k in entry]
    for key in entry:
        if key not in (*KINDS, "log", "step"):
            problems.add(f"{where}.{key}", "unknown key; known: float, int, choice, log, step")
    if len(kinds) != 1:
        problems.add(where, "give exactly one of float, int or choice")
        return None
    kind, value = kinds[0], entry[kinds[0]]
    log, step = entry.get("log", False), entry.get("step")
    if kind == "choice":
        return _choice(value, entry, where, problems)
    is_int = kind == "int"
    ok = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if is_int else \
        (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
    if not (isinstance(value, list) and len(value) == 2 and all(ok(v) for v in value)):
        problems.add(f"{where}.{kind}", f"must be [low, high] ({'integers' if is_int else 'numbers'}), got {value!r}")
        return None
    low, high = value
    if low >= high:
        problems.add(f"{where}.{kind}", f"range [{low}, {high}] is empty: low must be below high")
    if not isinstance(log, bool):
        problems.add(f"{where}.log", f"must be true or false, got {log!r}")
    elif log and low <= 0:
        problems.add(f"{where}.log", f"a log range needs low > 0, got {low}")
    if step is not None:
        if not ok(step) or step <= 0:
            problems.add(f"{where}.step", f"must be a positive {'integer' if is_int else 'number'}, got {step!r}")
        elif log:
            problems.add(f"{where}.step", "give log or step, not both")
    return ParamSpec(kind=kind, low=low if is_int else float(low), high=high if is_int else float(high),
                     log=bool(log), step=step)


def _choice(value: Any, entry: dict, where: str, problems: Any) -> ParamSpec | None:
    if "log" in entry or "step" in entry:
        problems.add(where, "log and step apply to float and int ranges, not to a choice")
    if not isinstance(value, list) or not value:
        problems.add(f"{where}.choice", f"must be a non-empty list of values, got {value!r}")
        return None
    bad = [v for v in value if v is not None and not isinstance(v, (bool, int, float, str))]
    if bad:
        problems.add(f"{where}.choice", f"values must be numbers, text, true/false or null, got {bad[0]!r}")
        return None
    kinds = sorted({_kind(v) for v in value if v is not None})
    if len(kinds) > 1:
        problems.add(f"{where}.choice", f"mixes types ({', '.join(kinds)}): {value!r}")
    if len({repr(v) for v in value}) != len(value):
        problems.add(f"{where}.choice", f"has duplicate values: {value!r}")
    return ParamSpec(kind="choice", choices=tuple(value))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    return "a number" if isinstance(value, (int, float)) else "text"


def _current(study_raw: dict, path: str) -> Any:
    node: Any = study_raw
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _check_field_type(spec: ParamSpec, current: Any, where: str, problems: Any) -> None:
    """A value of another type than the one the study gives the field (the builders accept
    some that would still mean something else, e.g. text where a number stands)."""
    if current is None or isinstance(current, (dict, list)):
        return
    for value in spec.ends():
        if value is not None and _kind(value) != _kind(current):
            problems.add(where, f"{value!r} is {_kind(value)}, but the study's value of this field is "
                         f"{_kind(current)} ({current!r})")
            return


def _on(raw: Any, factors: dict, split: Any, mixing: Any, metric: str, problems: Any) -> dict:
    from synthmix.datasets.mixing import MIXING_POLICIES

    on = raw if isinstance(raw, dict) else {}
    if raw is not None and not isinstance(raw, dict):
        problems.add("tune.on", f"must be a mapping {{fold, repeat, factor: level}}, got {raw!r}")
    for key in on:
        if key not in ("fold", "repeat", *factors):
            problems.add(f"tune.on.{key}", f"unknown key; known: fold, repeat, {', '.join(factors)}")
    folds, repeats = (split.folds or 1) if split else 1, split.repeats if split else 1
    cell = {"fold": on.get("fold", 0), "repeat": on.get("repeat", 0)}
    for key, count in (("fold", folds), ("repeat", repeats)):
        if isinstance(cell[key], bool) or not isinstance(cell[key], int) or not 0 <= cell[key] < count:
            problems.add(f"tune.on.{key}", f"must be an integer in [0, {count}), got {cell[key]!r}")
    policy = MIXING_POLICIES.get(mixing.policy) if mixing.policy in MIXING_POLICIES else None
    for name, levels in factors.items():
        cell[name] = _on_level(name, levels, on, policy, metric, problems)
    return cell


def _on_level(name: str, levels: tuple, on: dict, policy: Any, metric: str, problems: Any) -> Any:
    from synthmix.search_spaces.schema import REAL_FACTORS

    if name in on:
        level = on[name]
        try:
            parsed = policy.parse(level) if name == "synthetic" and policy else level
        except ValueError as err:
            problems.add(f"tune.on.{name}", str(err))
            return levels[0]
        if parsed not in levels:
            problems.add(f"tune.on.{name}", f"{level!r} is not a level of factors.{name} {list(levels)}")
            return parsed
        return next(v for v in levels if v == parsed)  # the canonical level (1 -> 1.0)
    if len(levels) == 1:
        return levels[0]
    if name in REAL_FACTORS:
        return max(levels)  # the whole training pool
    if metric in GENERATOR_FIGURES:
        if name == "synthetic" and policy:
            return next((v for v in levels if policy.uses_synthetic(v)), levels[0])
        if name != "generator":
            return levels[0]  # no segmentation runs: the level does not matter
    problems.add(f"tune.on.{name}", f"factors.{name} has several levels {list(levels)}; name the one trials use")
    return levels[0]


def _trials(raw: dict, sampler: str, space: dict, problems: Any) -> int:
    size = None
    if sampler == "grid":
        values = {path: spec.grid() for path, spec in space.items()}
        infinite = [p for p, v in values.items() if v is None]
        for path in infinite:
            problems.add(f"tune.space.{path}", "the grid sampler needs a choice or a range with a step")
        size = math.prod(len(v) for v in values.values() if v) if not infinite and values else None
    trials = raw.get("trials", size or DEFAULT_TRIALS)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        problems.add("tune.trials", f"must be an integer >= 1, got {trials!r}")
        return 1
    if size is not None and trials > size:
        problems.add("tune.trials", f"{trials} is more than the grid's {size} points")
    return trials


def _relevance(section: TuneSection, factors: dict, mixing: Any, problems: Any) -> None:
    """A parameter that cannot change the score would make the search meaningless."""
    from synthmix.datasets.mixing import MIXING_POLICIES

    if mixing.policy not in MIXING_POLICIES or "synthetic" not in section.on:
        return
    synthetic = MIXING_POLICIES.get(mixing.policy).uses_synthetic(section.on["synthetic"])
    for path in section.space:
        root = path.split(".")[0]
        if section.scores_generator and root == "segmenter":
            problems.add(f"tune.space.{path}", f"metric {section.metric} scores the generator; a "
                         "segmenter field cannot change it")
        elif root == "generator" and not synthetic:
            problems.add(f"tune.space.{path}", f"tune.on trains without synthetic data (synthetic="
                         f"{section.on['synthetic']!r}), so the generator never runs")
    if section.scores_generator and not synthetic:
        problems.add("tune.on.synthetic", f"metric {section.metric} scores a generator: pick a synthetic "
                     "level that uses synthetic data")


def _check_values(path: str, spec: ParamSpec, study_raw: dict, source: str, base_dir: Any, problems: Any) -> None:
    from synthmix.errors import StudyError
    from synthmix.search_spaces.schema import merge_overrides, validate_study

    for value in spec.ends():
        try:
            validate_study(merge_overrides(study_raw, {path: value}), source, base_dir=base_dir)
        except StudyError as err:
            for problem in err.problems:
                problems.add(f"tune.space.{path}", f"with {value!r}: {problem}")
            return


# --- applying parameters ---------------------------------------------------------------------------


def apply_parameters(study_raw: dict, parameters: dict, *, source: str, base_dir: Any,
                     tuned: dict | None = None) -> Any:
    """The study with ``parameters`` (path -> value) set, validated again; ``tuned`` is the
    winner's record when this is the grid that follows the search (it enters the fingerprint)."""
    from synthmix.search_spaces.schema import merge_overrides, validate_study

    study = validate_study(merge_overrides(study_raw, parameters), source, base_dir=base_dir)
    return replace(study, tuned=tuned) if tuned is not None else study


def plan_block(study: Any) -> dict:
    """What ``plan.json`` says about the tuning stage: its search, and the frozen winner once
    the search has finished (``status: done``) or ``status: pending`` before."""
    t = study.tune
    block = {"status": "done" if study.tuned else "pending", "on": t.on, "trials": t.trials, "metric": t.metric,
             "mode": t.mode, "sampler": {"name": t.sampler, "seed": t.seed},
             "space": {p: spec.to_dict() for p, spec in t.space.items()},
             "scored_on": "generator quality" if t.scores_generator else "validation subjects"}
    if study.tuned:
        block.update(parameters=study.tuned["parameters"], best_trial=study.tuned["trial"],
                     best_value=study.tuned["value"])
    return block


def render_block(study: Any, estimate: float | None = None) -> list[str]:
    """Lines of ``synthmix plan`` about the tuning stage (``estimate``: its CPU seconds)."""
    t = study.tune
    on = ", ".join(f"{k}={v}" for k, v in t.on.items())
    lines = [f"tuning: {t.trials} trial(s), {t.sampler} sampler (seed {t.seed}), {t.mode}imise {t.metric} "
             f"on {'the generator' if t.scores_generator else 'the validation subjects'} of {on}"]
    lines += [f"  {path}: {_describe(spec)}" for path, spec in t.space.items()]
    if estimate is not None:
        lines.append(f"  estimated compute of the search (the same model): {estimate / 60:.0f} CPU-minutes")
    if study.tuned:
        chosen = ", ".join(f"{k}={v}" for k, v in study.tuned["parameters"].items())
        lines.append(f"  frozen winner (trial {study.tuned['trial']}, {t.metric}={study.tuned['value']:.4g}): {chosen}")
    else:
        lines.append("  the cells above use the study's own values: `synthmix run` tunes first and freezes "
                     "the winner into the grid (new cell ids)")
    return lines


def _describe(spec: ParamSpec) -> str:
    if spec.kind == "choice":
        return f"choice {list(spec.choices)}"
    extra = " log" if spec.log else (f" step {spec.step}" if spec.step is not None else "")
    return f"{spec.kind} [{spec.low}, {spec.high}]{extra}"
