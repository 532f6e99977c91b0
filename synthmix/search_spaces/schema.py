"""The study schema: a YAML file -> a typed, validated ``Study``, or a StudyError listing every
problem, each naming its dotted field path (``factors.real_fraction[2]: 1.5 is outside (0, 1]``).

Validation runs before anything is launched and rejects unknown keys everywhere. Component
configs (preprocess, segmenter, generator) are checked by their owners' ``build_*`` functions;
names (architecture, augmentation, generator, mixing policy) by their registries.

A fully commented example (every section; defaults noted)::

    name: my-study                 # required; names the study's storage folder
    seed: 0                        # every split, subset and training seed derives from it
    description: "what and why"    # free text, shown by `synthmix spaces list`
    dataset:                       # exactly one of phantom / manifest
      phantom: {subjects: 12, size: 32, classes: 3, unlabelled: 0, seed: 0}   # built-in data
      # phantom options: age: [20, 50], unlabelled_age: [40, 90] (age-covariate ranges, within
      # 20-90), truth: true (also write the unlabelled subjects' labels, never trained on)
      # manifest: data/manifest.csv  # a NIfTI manifest, relative to this YAML file
      preprocess: {axis: 2}        # synthmix.datasets.preprocess options (default: none)
    split:                         # exactly one of folds / test+val
      test: 0.25                   # test share of the labelled subjects
      val: 0.25                    # validation share (with folds: share of the non-test ones)
      # folds: 3                   # k-fold cross-validation instead of test/val
      repeats: 3                   # independent redraws (default 1)
    factors:                       # ordered; the grid is their full factorial x folds x repeats
      real_fraction: [0.5, 1.0]    # nested shares of the training pool, in (0, 1]
      # real_count: [1, 3, 6]      # or nested numbers of labelled training subjects
      synthetic: [0, 1.0]          # read by mixing.policy (additive: +100% synthetic; quoted
                                   # levels such as ["0", "1 only"]: "1 only" = synthetic only)
      architecture: [unet]         # synthmix.trainers.networks.NETWORKS names
      augmentation: [none]         # AUGMENTATIONS names (default [none]); traditional: 002's
                                   # offline copies, one per real training slice
      # generator: [dcgan_wgangp]  # optional factor; then generator.configs per name
      # generator: {dcgan: {name: dcgan_wgangp, config: {steps: 300}}, ddpm: {name: ddpm}}
                                   # or named levels, each a whole generator section (name,
                                   # config, budget, select, pool, quality, masks); a top-level
                                   # generator section then holds only defaults for every level
                                   # (not name/config). Cells of every level share the real
                                   # subsets; synthetic-0 cells run once, with level "none"
      # classes: {7: identity, 4: {4: 0, 5: 0, 6: 0}}  # optional: named remappings of the
                                   # dataset's labels (synthmix.datasets.class_levels); one
                                   # generator and one pool serve every level
    exclude:                       # partial assignments removed from the grid (default none)
      - {real_fraction: 0.5, synthetic: 1.0}   # a level or a list of levels per factor
    segmenter:                     # build_segmentation_config options, minus architecture,
      max_steps: 60                # augmentation (from the factors) and seed (derived per cell)
      # budget: {real_draws: 480}  # or, instead of max_steps, a budget in real exposures:
                                   # {epochs_real: E} passes over the real slices, or
                                   # {real_draws: N} real items; synthetic data adds steps
      batch_size: 8                # the global batch, split over resources.workers
      network: {levels: 3}         # options of the one architecture, or per architecture:
      # networks: {unet: {levels: 3}, uresnet: {levels: 3, num_res_units: 2}}
      # augmentation_params: {intensity_shift_std: 0.02}   # over every augmentation level's defaults
      # augmentations: {standard: {translate_std_px: 5}}   # per level, over augmentation_params
      # detection: {min_false_positive_px: 200, min_dice: 0.25}   # 002's thresholded precision/recall
    generator:                     # required when some synthetic level uses synthetic data
      name: dcgan_wgangp           # a GENERATORS name
      config: {steps: 40}          # that family's own options (not seed: derived)
      # budget: {cpu_seconds: 600} # instead of the config's steps: the most steps whose modelled
                                   # CPU time (the family's cost model) fits, resolved by plan
      # configs: {dcgan_wgangp: {steps: 40}}   # instead of name/config with factor generator
      select: {by: swd, every: 20} # keep the best snapshot: swd | fcn_score | last (default)
      pool:                        # the synthetic pool drawn from each trained generator
        size: 256                  # samples kept (default 512)
        oversample: 2              # draw size x oversample, keep the best size after filters
        cleanup: [fill_holes, remove_small]          # LABEL_CLEANUPS names (or {name, options})
        filters: [{name: nearest_neighbour, percentile: 75}]   # SYNTHETIC_FILTERS
      quality: {samples: 512, reference_steps: 200}  # quality figures' sample count, FCN reference
      masks: {transform: false}    # conditional families: transform the subset's masks
      # block_size: 6              # one generator per block of 6 subjects of a larger subset,
                                   # their pools combined in equal shares (001 III-F)
      # choose:                  # model selection (choose_section): one config per subset
      #   candidates: [{steps: 100}, {steps: 300}]   # overrides of config, one generator key each
      #   by: [fcn_score, blur, realism]             # CHOICE_CRITERIA, combined by mean rank
    plugins: [my_lab.generators]   # modules imported first (driver and workers): your own
                                   # registry entries, e.g. a generator family
    mixing:
      policy: additive             # additive | probability | minibatch | count | synthetic_only
      source: pool                 # pool (sampled once per generator) | on_the_fly
      draw: fixed                  # additive/count: fixed (the pool's first m samples) | fresh
                                   # (uniform over the whole pool at the same synthetic share)
    statistics:
      test: auto                   # auto | student (the papers') | welch | paired | wilcoxon
                                   # | corrected (resampled t-test): the STAT_TESTS registry
      correction: holm             # none | holm | bh
      alpha: 0.05
      baseline: {synthetic: 0}     # default: the synthetic level that uses no synthetic data
    resources:
      workers: 1                   # Ray Train workers per training (in the fingerprint)
      cpus_per_worker: 1
      gpus_per_worker: 0
      max_concurrent_trials: null  # null: derived from the cluster
      max_failures: 1              # retries of a failed trial
    tune:                          # optional: an Optuna search before the grid, scored on one
      on: {fold: 0, repeat: 0}     # resample's validation subjects; the winner is frozen into
      trials: 20                   # the grid (see synthmix.search_spaces.tune_section)
      metric: val_dice_mean
      sampler: {name: tpe, seed: 0}
      space: {segmenter.lr: {float: [1.0e-4, 1.0e-2], log: true}}
    evaluate:                      # optional
      unlabelled: false            # true: each cell's model also segments the unlabelled
                                   # subjects (structure volumes + metadata, Dice where their
                                   # labels are known: results/unlabelled/), for
                                   # `synthmix results --stratify COLUMN` (001 Table II)

``fingerprint()`` hashes what can change a cell's result (seed, dataset, split, the real-amount
levels, segmenter, generator, mixing, ``resources.workers``, and the ``tune:`` section with its frozen winner) and leaves out name,
description, statistics, the other resources, exclude and the other factors' level lists, so
adding an architecture to a finished study keeps the ids (and results) of its finished cells.
Named levels of factor generator are hashed into their own cells' ids instead
(``level_fingerprint``), so adding or changing one keeps the ids of the other levels' cells and
of the shared baseline.
Batches are global and drawn alike on any number of workers, but the number of workers still
changes results (batch-norm statistics and the Dice loss are computed per rank's share), so a
study resumed with another ``workers`` is a different study. Options added later are hashed only
when they differ from their default (``workers: 1``, ``mixing.draw: fixed``), so the ids of
studies written before them stay the same.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from synthmix.datasets.mixing import DRAWS, MIXING_POLICIES, SOURCES
from synthmix.errors import StudyError, SynthmixError

TOP_KEYS = ("name", "seed", "description", "plugins", "dataset", "split", "factors", "exclude", "segmenter",
            "generator", "mixing", "statistics", "resources", "tune", "evaluate")
GENERATOR_KEYS = ("name", "config", "configs", "select", "pool", "quality", "masks", "budget", "block_size",
                  "choose")
# The keys of one named level of factor generator (a whole section of one family).
LEVEL_KEYS = ("name", "config", "budget", "select", "pool", "quality", "masks", "block_size")
# The generator level of the cells that use no synthetic data: one baseline per subset serves
# every level of factor generator (expand.grid), so it is no level of its own.
NO_GENERATOR = "none"
REAL_FACTORS = ("real_fraction", "real_count")
FACTORS = (*REAL_FACTORS, "synthetic", "architecture", "augmentation", "generator", "classes")
CORRECTIONS = ("none", "holm", "bh")
# Registries that name factor levels: (module, attribute). Imported lazily (torch is slow).
_REGISTRIES = {
    "architecture": ("synthmix.trainers.networks", "NETWORKS"),
    "augmentation": ("synthmix.trainers.augmentation", "AUGMENTATIONS"),
    "generator": ("synthmix.trainers.generators", "GENERATORS"),
}
# Component config builders: (module, function); each raises StudyError on bad options.
_BUILDERS = {
    "preprocess": ("synthmix.datasets.preprocess", "build_preprocess_config"),
    "segmenter": ("synthmix.trainers.segmentation", "build_segmentation_config"),
    "select": ("synthmix.trainers.generators.session", "build_select_spec"),
    "pool": ("synthmix.trainers.synthetic", "build_pool_spec"),
    "quality": ("synthmix.trainers.generators.flow", "build_quality_spec"),
    "masks": ("synthmix.trainers.generators.masks", "build_mask_spec"),
    "budget": ("synthmix.trainers.generators.budget", "build_budget_spec"),
}


# --- typed sections --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomSpec:
    subjects: int = 12
    size: int = 32
    classes: int = 3
    unlabelled: int = 0
    seed: int = 0
    age: tuple | None = None             # [low, high] of the labelled subjects' age covariate
    unlabelled_age: tuple | None = None  # of the unlabelled ones (001: older)
    truth: bool = False                  # write the unlabelled subjects' labels (not trained on)

    def params(self) -> dict:
        """write_phantom_dataset's arguments; the options added later only when set, so the
        data folder and the fingerprint of a phantom without them stay what they were."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()
                if k in ("subjects", "size", "classes", "unlabelled", "seed") or v not in (None, False)}


@dataclass(frozen=True)
class DatasetSpec:
    phantom: PhantomSpec | None
    manifest: str | None  # absolute path
    preprocess: dict


@dataclass(frozen=True)
class SplitSection:
    folds: int | None
    test: float | None
    val: float | None
    repeats: int


@dataclass(frozen=True)
class GeneratorSection:
    configs: dict  # generator name -> its config dict (one entry without a generator factor)
    select: dict = field(default_factory=dict)
    pool: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)
    # One generator per block of this many subjects of a larger subset, samples pooled (001
    # III-F; expand.py and splits.training_blocks); None: one generator per subset.
    block_size: int | None = None
    budget: dict = field(default_factory=dict)  # {cpu_seconds: N}: steps set by the cost model at plan time
    choose: dict = field(default_factory=dict)  # model selection (choose_section.ChooseSpec.to_dict())

    @property
    def family(self) -> str:
        """The family of a one-family section (a named level, or a study without the factor)."""
        return next(iter(self.configs))


@dataclass(frozen=True)
class GeneratorLevel:
    """One named level of factor generator: a whole generator section of one family."""

    name: str
    section: GeneratorSection


@dataclass(frozen=True)
class MixingSection:
    policy: str
    source: str
    draw: str = "fixed"


@dataclass(frozen=True)
class StatisticsSection:
    test: str
    correction: str
    alpha: float
    baseline: dict | None


@dataclass(frozen=True)
class EvaluateSection:
    # Each cell's final model also segments the study's unlabelled subjects: their structure
    # volumes (and Dice where the dataset holds their true labels) go to results/unlabelled/.
    unlabelled: bool = False


@dataclass(frozen=True)
class ResourcesSection:
    workers: int = 1
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    max_concurrent_trials: int | None = None
    max_failures: int = 1


@dataclass(frozen=True, eq=False)
class Study:
    """A validated study. ``factors`` keeps YAML order: name -> tuple of canonical levels."""

    name: str
    seed: int
    description: str
    dataset: DatasetSpec
    split: SplitSection
    factors: dict
    exclude: tuple
    segmenter: dict
    generator: GeneratorSection | None
    mixing: MixingSection
    statistics: StatisticsSection
    resources: ResourcesSection
    source: str = field(default="study")
    batch_size: int | None = None  # the segmenter's, when known
    plugins: tuple = ()
    tune: Any = None   # tune_section.TuneSection: a search before the grid
    tuned: dict | None = None  # the search's winner frozen into this study: {parameters, trial, value}
    classes: tuple = ()  # class_levels.ClassLevel per level of factor classes, in level order
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    generator_levels: tuple = ()  # GeneratorLevel per named level of factor generator (then generator is None)

    @property
    def real_factor(self) -> str:
        return next(f for f in REAL_FACTORS if f in self.factors)

    def uses_synthetic(self, level: Any) -> bool:
        return MIXING_POLICIES.get(self.mixing.policy).uses_synthetic(level)

    def class_level(self, name: Any):
        """The ClassLevel of factor ``classes`` level ``name`` (None without the factor)."""
        return next((c for c in self.classes if c.name == name), None)

    def generator_sections(self) -> dict:
        """Level name (None without factor generator) -> its GeneratorSection; a list-form
        factor's levels share one section, named by their family."""
        if self.generator_levels:
            return {lv.name: lv.section for lv in self.generator_levels}
        return {None: self.generator} if self.generator is not None else {}

    def generator_of(self, level: Any = None) -> tuple[str, dict, GeneratorSection]:
        """(family, its config, the section) of a cell at factor generator ``level``."""
        if self.generator_levels:
            section = self.generator_sections()[level]
            return section.family, section.configs[section.family], section
        g = self.generator
        name = level if level in g.configs else g.family
        return name, g.configs[name], g

    def segmenter_config(self, architecture: str, augmentation: str) -> dict:
        """The segmentation config dict of a cell with these levels (seed not included: the
        orchestrator sets the cell's seed)."""
        return segmenter_config(self.segmenter, architecture, augmentation)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("source", "batch_size")}
        d["plugins"] = list(self.plugins)
        d["factors"] = {k: list(v) for k, v in self.factors.items()}
        d["exclude"] = [dict(e) for e in self.exclude]
        return d

    def fingerprint(self, *, without_pool: bool = False) -> str:
        """``without_pool``: the same hash with generator.pool left out: a study that differs
        from its stored version only there reuses its trained generators (new pools, new cells)."""
        d = self.to_dict()
        kept = {k: d[k] for k in ("seed", "dataset", "split", "segmenter", "generator", "mixing")}
        if kept["generator"]:
            kept["generator"] = _hashed_section(kept["generator"], without_pool)
        # Named generator levels are not hashed here but into their own cells' ids
        # (level_fingerprint), so adding a level to a finished bake-off keeps every other cell.
        kept["real"] = {self.real_factor: d["factors"][self.real_factor]}
        if kept["mixing"].get("draw") == "fixed":  # the default: hashed as before it existed
            del kept["mixing"]["draw"]
        if self.dataset.phantom is not None:
            kept["dataset"]["phantom"] = self.dataset.phantom.params()
        if self.evaluate.unlabelled:  # only then, so that studies without it keep their ids
            kept["evaluate"] = d["evaluate"]
        if self.resources.workers != 1:
            kept["workers"] = self.resources.workers
        if self.classes:  # only then, so that studies without the factor keep their ids
            kept["classes"] = d["classes"]
        if self.tune is not None:  # only then, so that studies without one keep their ids
            kept["tune"] = d["tune"]
            kept["tuned"] = self.tuned["parameters"] if self.tuned else None
        return content_hash(kept)


    def level_fingerprint(self, level: Any) -> str | None:
        """The hash a named level of factor generator adds to its cells' ids: its whole section
        (pool included: a new pool gives its cells new rows); None for any other cell."""
        section = self.generator_sections().get(level) if self.generator_levels else None
        return None if section is None else content_hash(_hashed_section(asdict(section), False))


def _hashed_section(section: dict, without_pool: bool) -> dict:
    """A generator section as the fingerprint hashes it: ``budget``, ``block_size`` and ``choose``
    only when given (studies written before them keep their ids), ``pool`` left out for ``without_pool``."""
    return {k: v for k, v in section.items()
            if not (k in ("budget", "choose") and not v) and not (k == "block_size" and v is None)
            and not (without_pool and k == "pool")}


def content_hash(obj: Any, n: int = 16) -> str:
    """Hex digest of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


# --- validation helpers ----------------------------------------------------------------------------


class _Problems(list):
    def add(self, path: str, message: str) -> None:
        self.append(f"{path}: {message}")

    def extend_from(self, path: str, err: StudyError) -> None:
        for p in err.problems:
            # Builders say "key: problem"; join as path.key so the field is fully named.
            self.append(f"{path}.{p}" if re.match(r"^[\w\[\]]+: ", p) else f"{path}: {p}")


def _mapping(raw: Any, path: str, problems: _Problems, known: tuple[str, ...] | None) -> dict:
    """``raw`` as a dict (None -> {}); unknown keys reported when ``known`` is given."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(path, f"must be a mapping, got {type(raw).__name__} {raw!r}")
        return {}
    for key in raw:
        if known is not None and key not in known:
            problems.add(f"{path}.{key}" if path else str(key), f"unknown key; known: {', '.join(known)}")
    return raw


def _int(raw: dict, key: str, path: str, problems: _Problems, *, default: Any, minimum: int | None = None,
         allow_none: bool = False) -> Any:
    value = raw.get(key, default)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(f"{path}.{key}", f"must be an integer, got {value!r}")
        return default
    if minimum is not None and value < minimum:
        problems.add(f"{path}.{key}", f"must be >= {minimum}, got {value}")
    return value


def _num(raw: dict, key: str, path: str, problems: _Problems, *, default: Any,
         check: Callable[[float], bool] = lambda x: True, bounds: str = "") -> Any:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.add(f"{path}.{key}", f"must be a number, got {value!r}")
        return default
    if not check(value):
        problems.add(f"{path}.{key}", f"{value!r} is outside {bounds}")
    return value


def _choice(raw: dict, key: str, path: str, problems: _Problems, *, default: str, choices) -> str:
    value = raw.get(key, default)
    if value not in choices:
        problems.add(f"{path}.{key}", f"unknown {key} {value!r}; known: {', '.join(choices)}")
    return value


def _bool(raw: dict, key: str, path: str, problems: _Problems, *, default: bool = False) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        problems.add(f"{path}.{key}", f"must be true or false, got {value!r}")
        return default
    return value


def _age_range(raw: dict, key: str, problems: _Problems) -> tuple | None:
    """dataset.phantom.age / unlabelled_age: [low, high] within the phantom's covariate span."""
    value = raw.get(key)
    if value is None:
        return None
    lo, hi = (20.0, 90.0)  # phantom.AGE_RANGE (not imported: the schema loads before the data code)
    if not (isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and lo <= value[0] < value[1] <= hi):
        problems.add(f"dataset.phantom.{key}", f"must be [low, high] ages with {lo:g} <= low < high <= {hi:g}, "
                     f"got {value!r}")
        return None
    return tuple(float(v) for v in value)


def _import(spec: tuple[str, str]) -> Any | None:
    """The named attribute, or None while its module is not written yet (any other import
    error is a bug and propagates)."""
    module, attr = spec
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            return None
        raise


def known_names(kind: str) -> list[str] | None:
    """Names in the registry behind factor ``kind``, or None while it does not exist."""
    registry = _import(_REGISTRIES[kind])
    return None if registry is None else registry.names()


def _build(kind: str, config: dict, path: str, problems: _Problems, builder: Callable | None = None) -> Any:
    builder = builder or _import(_BUILDERS[kind])
    if builder is None:
        return None
    try:
        return builder(dict(config))
    except StudyError as err:
        problems.extend_from(path, err)
    except (SynthmixError, TypeError, ValueError) as err:
        problems.add(path, str(err))
    return None


# --- sections ----------------------------------------------------------------------------------


def _dataset(raw: Any, base_dir: Path, problems: _Problems) -> DatasetSpec:
    d = _mapping(raw, "dataset", problems, ("phantom", "manifest", "preprocess"))
    if raw is None:
        problems.add("dataset", "missing; give dataset.phantom or dataset.manifest")
    phantom = manifest = None
    if ("phantom" in d) == ("manifest" in d) and raw is not None:
        problems.add("dataset", "give exactly one of phantom (built-in data) or manifest (a path)")
    if "phantom" in d:
        p = _mapping(d["phantom"], "dataset.phantom", problems, tuple(PhantomSpec.__dataclass_fields__))
        dflt = PhantomSpec()
        phantom = PhantomSpec(
            subjects=_int(p, "subjects", "dataset.phantom", problems, default=dflt.subjects, minimum=3),
            size=_int(p, "size", "dataset.phantom", problems, default=dflt.size, minimum=16),
            classes=_int(p, "classes", "dataset.phantom", problems, default=dflt.classes, minimum=2),
            unlabelled=_int(p, "unlabelled", "dataset.phantom", problems, default=dflt.unlabelled, minimum=0),
            seed=_int(p, "seed", "dataset.phantom", problems, default=dflt.seed, minimum=0),
            age=_age_range(p, "age", problems), unlabelled_age=_age_range(p, "unlabelled_age", problems),
            truth=_bool(p, "truth", "dataset.phantom", problems))
        known = _import(("synthmix.datasets.phantom", "PHANTOM_CLASSES"))
        if known is not None and phantom.classes not in known:
            problems.add("dataset.phantom.classes", f"{phantom.classes} is not one of {list(known)}")
    if "manifest" in d:
        if not isinstance(d["manifest"], str) or not d["manifest"]:
            problems.add("dataset.manifest", f"must be a path, got {d['manifest']!r}")
        else:
            path = (base_dir / Path(d["manifest"]).expanduser()).resolve()
            if not path.exists():
                problems.add("dataset.manifest", f"{path} does not exist")
            manifest = str(path)
    preprocess = _mapping(d.get("preprocess"), "dataset.preprocess", problems, None)
    _build("preprocess", preprocess, "dataset.preprocess", problems)
    return DatasetSpec(phantom=phantom, manifest=manifest, preprocess=dict(preprocess))


def _split(raw: Any, problems: _Problems) -> SplitSection:
    s = _mapping(raw, "split", problems, ("folds", "test", "val", "repeats"))
    if raw is None:
        problems.add("split", "missing; give folds (cross-validation) or test and val proportions")
    folds = _int(s, "folds", "split", problems, default=None, minimum=2, allow_none=True)
    inside = lambda x: 0 < x < 1  # noqa: E731
    test = _num(s, "test", "split", problems, default=None, check=inside, bounds="(0, 1)")
    val = _num(s, "val", "split", problems, default=None, check=inside, bounds="(0, 1)")
    repeats = _int(s, "repeats", "split", problems, default=1, minimum=1)
    if raw is not None and (folds is None) == (test is None):
        problems.add("split", "give exactly one of folds or test (with val)")
    if test is not None and val is None:
        problems.add("split.val", "required with split.test")
    if test is not None and val is not None and test + val >= 1:
        problems.add("split", f"test + val = {test + val:g} leaves no training subjects")
    return SplitSection(folds=folds, test=test, val=val, repeats=repeats)


def _mixing(raw: Any, problems: _Problems) -> MixingSection:
    m = _mapping(raw, "mixing", problems, ("policy", "source", "draw"))
    section = MixingSection(
        policy=_choice(m, "policy", "mixing", problems, default="additive", choices=MIXING_POLICIES.names()),
        source=_choice(m, "source", "mixing", problems, default="pool", choices=SOURCES),
        draw=_choice(m, "draw", "mixing", problems, default="fixed", choices=DRAWS))
    if section.draw == "fresh" and section.policy == "synthetic_only":
        problems.add("mixing.draw", "fresh makes every synthetic_only level the same (the level is the "
                     "number of distinct samples); use fixed")
    return section


def _level_parser(name: str, mixing: MixingSection) -> Callable[[Any], Any]:
    """A function turning a raw level of factor ``name`` into its canonical value, raising
    ValueError with the problem."""
    if name == "real_fraction":
        def parse(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{v!r} is not a number")
            if not 0 < v <= 1:
                raise ValueError(f"{v!r} is outside (0, 1]")
            return float(v)
        return parse
    if name == "real_count":
        def parse(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{v!r} is not a whole number of subjects >= 1")
            return v
        return parse
    if name == "classes":  # names declared in the study; checked against them by _class_levels
        def parse_class(v: Any) -> Any:
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ValueError(f"{v!r} is not a classes level name")
            return v
        return parse_class
    if name == "synthetic":
        if mixing.policy not in MIXING_POLICIES:
            return lambda v: v
        return MIXING_POLICIES.get(mixing.policy).parse
    known = known_names(name)

    def parse_name(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"{v!r} is not a name")
        if known is not None and v not in known:
            raise ValueError(f"unknown {name} {v!r}; known: {', '.join(known)}")
        return v
    return parse_name


def _factors(raw: Any, mixing: MixingSection, problems: _Problems) -> dict:
    f = _mapping(raw, "factors", problems, FACTORS)
    if raw is None:
        problems.add("factors", "missing; give at least real_fraction (or real_count), synthetic and architecture")
    if raw is not None:
        if all(r in f for r in REAL_FACTORS):
            problems.add("factors", "give real_fraction or real_count, not both")
        elif not any(r in f for r in REAL_FACTORS):
            problems.add("factors", "needs real_fraction (e.g. [1.0]) or real_count")
        for required in ("synthetic", "architecture"):
            if required not in f:
                problems.add(f"factors.{required}", "missing; list at least one level")
    factors: dict[str, tuple] = {}
    for name, levels in f.items():
        if name not in FACTORS:
            continue
        path = f"factors.{name}"
        if name == "generator" and isinstance(levels, dict):  # named sections (see _generator_levels)
            if not levels:
                problems.add(path, "is empty; give at least one level")
            else:
                factors[name] = tuple(levels)
            continue
        if name == "classes":  # a mapping of level name -> remapping (see _class_levels)
            if not isinstance(levels, dict) or not levels:
                problems.add(path, "must be a mapping of level name -> remapping, e.g. "
                             f"{{7: identity, 4: {{4: 0, 5: 0, 6: 0}}}}; got {levels!r}")
            else:
                factors[name] = tuple(levels)
            continue
        if not isinstance(levels, list):
            problems.add(path, f"must be a list of levels, got {levels!r}")
            continue
        if not levels:
            problems.add(path, "is empty; give at least one level")
            continue
        parse, parsed = _level_parser(name, mixing), []
        for i, level in enumerate(levels):
            try:
                parsed.append(parse(level))
            except ValueError as err:
                problems.add(f"{path}[{i}]", str(err))
        if name == "synthetic" and len({isinstance(v, str) for v in parsed}) > 1:
            problems.add(path, "mixes numbers and quoted levels, which would give the results a column of two "
                         f"types; quote every level (e.g. [\"0\", \"0.5\", \"1 only\"]) or none")
        dupes = sorted({str(v) for v in parsed if parsed.count(v) > 1})
        if dupes:
            problems.add(path, f"duplicate levels: {', '.join(dupes)}")
        factors[name] = tuple(parsed)
    if raw is not None and "augmentation" not in f:
        factors["augmentation"] = ("none",)
    return factors


def _assignment(raw: Any, path: str, factors: dict, mixing: MixingSection, problems: _Problems) -> dict:
    """A partial assignment {factor: level or [levels]} -> {factor: tuple of canonical levels}."""
    a = _mapping(raw, path, problems, tuple(factors))
    out = {}
    for name, value in a.items():
        if name not in factors:
            continue
        parse, levels = _level_parser(name, mixing), []
        for v in value if isinstance(value, list) else [value]:
            try:
                level = parse(v)
            except ValueError as err:
                problems.add(f"{path}.{name}", str(err))
                continue
            if level not in factors[name]:
                problems.add(f"{path}.{name}", f"{v!r} is not a level of factors.{name} {list(factors[name])}")
            levels.append(level)
        out[name] = tuple(levels)
    return out


def _exclude(raw: Any, factors: dict, mixing: MixingSection, problems: _Problems) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add("exclude", f"must be a list of partial assignments, got {raw!r}")
        return ()
    out = []
    for i, item in enumerate(raw):
        a = _assignment(item, f"exclude[{i}]", factors, mixing, problems)
        if isinstance(item, dict) and not item:
            problems.add(f"exclude[{i}]", "is empty; it would exclude every cell")
        out.append(a)
    return tuple(out)


def _segmenter(raw: Any, factors: dict, problems: _Problems) -> tuple[dict, int | None]:
    s = dict(_mapping(raw, "segmenter", problems, None))
    for key in ("architecture", "augmentation"):
        if key in s:
            problems.add(f"segmenter.{key}", f"set it in factors.{key} (a factor, possibly one level)")
            s.pop(key)
    if "seed" in s:  # rule 5: a cell's seed derives from the study seed and its coordinates
        problems.add("segmenter.seed", "set the study's seed instead; each cell derives its own")
        s.pop("seed")
    _mapping(s.get("networks"), "segmenter.networks", problems, factors.get("architecture"))  # validates its keys
    _mapping(s.get("augmentations"), "segmenter.augmentations", problems, factors.get("augmentation"))
    if "networks" in s and "network" in s:
        problems.add("segmenter.networks", "give network (one architecture) or networks (per architecture)")
    batch_size = s.get("batch_size")
    # Every architecture x augmentation combination must build; the first failure is reported.
    combos = [(a, g) for a in factors.get("architecture", ()) for g in factors.get("augmentation", ())]
    for arch, aug in combos or [(None, None)]:
        cfg = segmenter_config(s, arch, aug) if arch else \
            {k: v for k, v in s.items() if k not in ("networks", "augmentations")}
        before = len(problems)
        built = _build("segmenter", cfg, "segmenter", problems)
        if len(problems) > before:
            break
        batch_size = getattr(built, "batch_size", batch_size)
    return s, batch_size


def segmenter_config(segmenter: dict, architecture: str, augmentation: str) -> dict:
    """The build_segmentation_config dict of one cell: the segmenter section with the cell's
    architecture, augmentation, (from ``networks``) that architecture's network options and
    (from ``augmentations``) that augmentation's parameters over ``augmentation_params``: so a
    level such as ``none`` stays what its name says while another is tuned."""
    cfg = {k: v for k, v in segmenter.items() if k not in ("networks", "augmentations")}
    networks = segmenter.get("networks") or {}
    if architecture in networks:
        cfg["network"] = dict(networks[architecture] or {})
    per_level = (segmenter.get("augmentations") or {}).get(augmentation)
    if per_level:
        cfg["augmentation_params"] = {**(cfg.get("augmentation_params") or {}), **per_level}
    return {**cfg, "architecture": architecture, "augmentation": augmentation}


def _generator(raw: Any, factors: dict, needs: bool, problems: _Problems) -> GeneratorSection | None:
    g = _mapping(raw, "generator", problems, GENERATOR_KEYS)
    if raw is None:
        if needs:
            problems.add("generator", "missing; some synthetic levels use synthetic data")
        return None
    if "generator" not in factors:
        section = _one_generator(g, "generator", problems)
        if "choose" in g:
            section = replace(section, choose=_choose(g["choose"], section, problems))
        return section
    if "choose" in g:
        problems.add("generator.choose", "only with one generator (name and config), not with factor generator")
    if "name" in g or "config" in g:
        problems.add("generator", "with factor generator, give configs: {name: config} instead of name/config")
    configs = _mapping(g.get("configs", {}), "generator.configs", problems, None)
    for name in factors["generator"]:
        if name not in configs:
            configs[name] = {}
    for name in configs:
        if name not in factors["generator"]:
            problems.add(f"generator.configs.{name}", "is not a level of factors.generator")
    return _section_checks(configs, g, "generator", lambda name: f"generator.configs.{name}", problems)


def _one_generator(g: dict, path: str, problems: _Problems) -> GeneratorSection:
    """A section of one family (``name`` + ``config``) at ``path``: the study's ``generator``, or
    a named level of factor generator (``factors.generator.LEVEL``)."""
    if "configs" in g:
        problems.add(f"{path}.configs", "only with factor generator; give name and config")
    name = g.get("name")
    known = known_names("generator")
    if not isinstance(name, str):
        problems.add(f"{path}.name", f"must be a generator name, got {name!r}")
    elif known is not None and name not in known:
        problems.add(f"{path}.name", f"unknown generator {name!r}; known: {', '.join(known)}")
    configs = {name: _mapping(g.get("config", {}), f"{path}.config", problems, None)}
    return _section_checks(configs, g, path, lambda _: f"{path}.config", problems)


def _section_checks(configs: dict, g: dict, path: str, config_path: Callable[[str], str],
                    problems: _Problems) -> GeneratorSection:
    """The section of these family configs and ``g``'s shared settings, each checked by its
    owner (the family's builder; select, pool, quality, masks, budget builders)."""
    shared = {k: dict(_mapping(g.get(k), f"{path}.{k}", problems, None))
              for k in ("select", "pool", "quality", "masks", "budget")}
    block_size = _int(g, "block_size", path, problems, default=None, minimum=1, allow_none=True)
    section = GeneratorSection(configs={str(k): dict(v or {}) for k, v in configs.items()}, **shared,
                               block_size=block_size)
    registry = _import(_REGISTRIES["generator"])
    for name, cfg in section.configs.items():
        if "seed" in cfg:  # rule 5: each generator's seed derives from the study seed and its key
            problems.add(f"{config_path(name)}.seed", "set the study's seed instead; each generator derives its own")
            continue
        if registry is not None and name in registry:
            before = len(problems)
            _build("generator", cfg, config_path(name), problems, builder=registry.get(name).config)  # the family's own builder
            if section.budget and len(problems) == before:
                _build("budget", section.budget, f"{path}.budget", problems,
                       builder=lambda b, n=name, c=cfg: _import(_BUILDERS["budget"])(b, family=n, config=c))
    for kind in ("select", "pool", "quality", "masks"):
        _build(kind, shared[kind], f"{path}.{kind}", problems)
    return section


def _generator_levels(raw: Any, factors: dict, defaults: Any, problems: _Problems) -> tuple:
    """Named levels of factor generator (``factors.generator: {LEVEL: section}``), each a whole
    section validated as the study's ``generator`` is; a top-level ``generator`` section holds
    only defaults that every level may replace (budget, select, pool, quality, masks)."""
    levels = raw.get("generator") if isinstance(raw, dict) else None
    if not isinstance(levels, dict) or "generator" not in factors:
        return ()
    shared = LEVEL_KEYS[2:]
    base = _mapping(defaults, "generator", problems, shared)
    out = []
    for level, section in levels.items():
        path = f"factors.generator.{level}"
        if not isinstance(level, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", level):
            problems.add(path, "a level name is letters, digits, '.', '_' or '-' (it names cells)")
            continue
        if level == NO_GENERATOR:
            problems.add(path, f"{NO_GENERATOR!r} is the level of the cells without synthetic data; rename it")
            continue
        g = _mapping(section, path, problems, LEVEL_KEYS)
        merged = {**{k: v for k, v in base.items() if k in shared}, **g}
        out.append(GeneratorLevel(name=level, section=_one_generator(merged, path, problems)))
    return tuple(out)


def _choose(raw: Any, section: GeneratorSection, problems: _Problems) -> dict:
    """``generator.choose`` (model selection, ``choose_section``): candidates override the one
    generator's config (with factor generator each level is its own comparison, so not there)."""
    from synthmix.search_spaces.choose_section import validate_choose

    if section.block_size is not None:
        problems.add("generator.choose", "not with generator.block_size: a choice is made per subset, not per block")
        return {}
    registry = _import(_REGISTRIES["generator"])
    name, config = next(iter(section.configs.items()))
    builder = registry.get(name).config if registry is not None and name in registry else None
    spec, found = validate_choose(raw, base_config=config, build_config=builder)
    problems.extend(found)
    return spec.to_dict() if spec else {}


def _stat_test_names() -> tuple[str, ...]:
    from synthmix.results import STAT_TESTS
    from synthmix.results.analysis import AUTO

    return (AUTO, *STAT_TESTS.names())


def _statistics(raw: Any, factors: dict, mixing: MixingSection, problems: _Problems) -> StatisticsSection:
    s = _mapping(raw, "statistics", problems, ("test", "correction", "alpha", "baseline"))
    test = _choice(s, "test", "statistics", problems, default="auto", choices=_stat_test_names())
    correction = _choice(s, "correction", "statistics", problems, default="holm", choices=CORRECTIONS)
    alpha = _num(s, "alpha", "statistics", problems, default=0.05, check=lambda x: 0 < x < 1, bounds="(0, 1)")
    if "baseline" in s:
        assigned = _assignment(s["baseline"], "statistics.baseline", factors, mixing, problems)
        baseline = {k: v[0] for k, v in assigned.items() if len(v) == 1}
        if any(len(v) != 1 for v in assigned.values()):
            problems.add("statistics.baseline", "give one level per factor")
    else:
        baseline = _default_baseline(factors, mixing)
    return StatisticsSection(test=test, correction=correction, alpha=alpha, baseline=baseline)


def _default_baseline(factors: dict, mixing: MixingSection) -> dict | None:
    if mixing.policy not in MIXING_POLICIES:
        return None
    policy = MIXING_POLICIES.get(mixing.policy)
    real_only = [v for v in factors.get("synthetic", ()) if not policy.uses_synthetic(v)]
    return {"synthetic": real_only[0]} if len(real_only) == 1 else None


def _resources(raw: Any, problems: _Problems) -> ResourcesSection:
    r = _mapping(raw, "resources", problems, tuple(ResourcesSection.__dataclass_fields__))
    dflt = ResourcesSection()
    section = ResourcesSection(
        workers=_int(r, "workers", "resources", problems, default=dflt.workers, minimum=1),
        cpus_per_worker=_num(r, "cpus_per_worker", "resources", problems, default=dflt.cpus_per_worker,
                             check=lambda x: x > 0, bounds="(0, inf)"),
        gpus_per_worker=_num(r, "gpus_per_worker", "resources", problems, default=dflt.gpus_per_worker,
                             check=lambda x: x >= 0, bounds="[0, inf)"),
        max_concurrent_trials=_int(r, "max_concurrent_trials", "resources", problems, default=None,
                                   minimum=1, allow_none=True),
        max_failures=_int(r, "max_failures", "resources", problems, default=dflt.max_failures, minimum=0))
    _check_gpu_share(section, problems)
    return section


def _check_gpu_share(r: ResourcesSection, problems: _Problems) -> None:
    """What Ray or NCCL would only refuse at run time: Ray takes a fraction of a GPU below 1 and
    whole GPUs above, in steps of 0.0001; NCCL refuses two ranks of one training on one GPU."""
    g = r.gpus_per_worker
    if not isinstance(g, (int, float)) or isinstance(g, bool) or g <= 0:
        return
    if g > 1 and g != int(g):
        problems.add("resources.gpus_per_worker", f"{g!r}: above 1 it must be a whole number of GPUs")
    elif g < 1 and abs(g * 10000 - round(g * 10000)) > 1e-6:
        problems.add("resources.gpus_per_worker", f"{g!r}: a fraction of a GPU has at most 4 decimals")
    elif g < 1 and isinstance(r.workers, int) and r.workers > 1:
        problems.add("resources.gpus_per_worker", f"{g!r} with workers: {r.workers}: the workers of one "
                     "training could share a GPU, which NCCL refuses; use whole GPUs for several workers")


def _cross_checks(study_factors: dict, mixing: MixingSection, batch_size: int | None,
                  generator: GeneratorSection | None, resources: ResourcesSection, problems: _Problems,
                  *, segmenter: dict) -> None:
    """Checks that need several sections: policy levels against the batch size and source, a
    fixed pool large enough for an absolute synthetic count, filters that need a whole pool
    against on-the-fly sampling, global batches against the number of workers, and a
    real-exposure budget only for levels that draw real data."""
    if isinstance(batch_size, int) and resources.workers > 1 and batch_size % resources.workers:
        problems.add("segmenter.batch_size", f"{batch_size} is the global batch and must split evenly "
                     f"over resources.workers={resources.workers}")
    if mixing.policy not in MIXING_POLICIES:
        return
    policy = MIXING_POLICIES.get(mixing.policy)
    budget = segmenter.get("budget")
    for i, level in enumerate(study_factors.get("synthetic", ())):
        for msg in policy.check(level, batch_size=batch_size, source=mixing.source):
            problems.add(f"factors.synthetic[{i}]", msg)
        if isinstance(budget, dict) and budget and isinstance(batch_size, int) and \
                policy.real_share(level, n_real=1, batch_size=batch_size) == 0:
            problems.add(f"factors.synthetic[{i}]", f"{level!r} draws no real data, so segmenter.budget "
                         f"({', '.join(budget)}) in real exposures never ends; use segmenter.max_steps")
    if generator:
        _generator_cross_checks(study_factors, mixing, generator, resources, problems, "generator")


def _generator_cross_checks(study_factors: dict, mixing: MixingSection, generator: GeneratorSection,
                            resources: ResourcesSection, problems: _Problems, path: str) -> None:
    """_cross_checks of one generator section at ``path`` (``generator`` or a named level)."""
    if mixing.policy not in MIXING_POLICIES:
        return
    pool_size = generator.pool.get("size", 512)
    if mixing.source == "pool" and mixing.policy in ("count", "synthetic_only") and isinstance(pool_size, int):
        need = max(study_factors.get("synthetic", (0,)))
        if pool_size < need:
            problems.add(f"{path}.pool.size", f"{pool_size} is smaller than the largest synthetic count {need}")
    if generator.block_size is not None and mixing.source == "on_the_fly":
        problems.add(f"{path}.block_size", "blocks pool their generators' fixed pools; use mixing.source: pool")
    filters = _import(("synthmix.trainers.synthetic", "SYNTHETIC_FILTERS"))
    if mixing.source == "on_the_fly" and filters is not None:
        for i, step in enumerate(generator.pool.get("filters") or []):
            name = step.get("name") if isinstance(step, dict) else step
            if name in filters and filters.get(name).whole_pool:
                problems.add(f"{path}.pool.filters[{i}]",
                             f"filter {name!r} ranks samples against the whole pool, which sampling on the fly "
                             "(mixing.source: on_the_fly) never has; use source: pool or drop the filter")
    for name, cfg in generator.configs.items():
        batch = cfg.get("batch_size")
        if isinstance(batch, int) and batch % resources.workers:
            at = f"{path}.config" if len(generator.configs) == 1 else f"{path}.configs.{name}"
            problems.add(f"{at}.batch_size", f"{batch} is not divisible by resources.workers={resources.workers} "
                         "(the batch is global and split across workers)")


# --- entry points ----------------------------------------------------------------------------------


def validate_study(raw: Any, source: str = "study", *, base_dir: str | Path | None = None) -> Study:
    """Validate a parsed YAML mapping; StudyError(problems, source) lists every problem found.
    Relative manifest paths resolve against ``base_dir`` (default: the folder of ``source`` when
    it is a file, else the working directory)."""
    problems = _Problems()
    if base_dir is None:
        base_dir = Path(source).parent if Path(source).is_file() else Path.cwd()
    top = _mapping(raw, "", problems, TOP_KEYS)
    if not isinstance(raw, dict):
        raise StudyError(problems or ["the study must be a YAML mapping"], source)
    name = top.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        problems.add("name", f"must be a name of letters, digits, '.', '_' or '-', got {name!r}")
    seed = _int(top, "seed", "", problems, default=0, minimum=0)
    plugins = _plugins(top.get("plugins"), problems)
    description = top.get("description", "")
    if not isinstance(description, str):
        problems.add("description", "must be text")
    dataset = _dataset(top.get("dataset"), Path(base_dir), problems)
    split = _split(top.get("split"), problems)
    mixing = _mixing(top.get("mixing"), problems)
    factors = _factors(top.get("factors"), mixing, problems)
    classes = _class_levels(top.get("factors"), factors, dataset, problems)
    exclude = _exclude(top.get("exclude"), factors, mixing, problems)
    segmenter, batch_size = _segmenter(top.get("segmenter"), factors, problems)
    needs_generator = mixing.policy in MIXING_POLICIES and any(
        _safe_uses(mixing, v) for v in factors.get("synthetic", ()))
    generator_levels = _generator_levels(top.get("factors"), factors, top.get("generator"), problems)
    generator = None if generator_levels else _generator(top.get("generator"), factors, needs_generator, problems)
    statistics = _statistics(top.get("statistics"), factors, mixing, problems)
    resources = _resources(top.get("resources"), problems)
    _cross_checks(factors, mixing, batch_size, generator, resources, problems, segmenter=segmenter)
    for level in generator_levels:
        _generator_cross_checks(factors, mixing, level.section, resources, problems, f"factors.generator.{level.name}")
    tune = _tune(top, factors, exclude, split, mixing, dataset, source, base_dir, problems)
    evaluate = _evaluate(top.get("evaluate"), dataset, problems)
    problems = [p.lstrip(".") if p.startswith(".") else p for p in problems]
    if problems:
        raise StudyError(problems, source)
    return Study(name=name, seed=seed, description=description.strip(), dataset=dataset, split=split,
                 factors=factors, exclude=exclude, segmenter=segmenter, generator=generator, mixing=mixing,
                 statistics=statistics, resources=resources, source=source, batch_size=batch_size,
                 plugins=plugins, tune=tune, classes=classes, evaluate=evaluate,
                 generator_levels=generator_levels)


def _evaluate(raw: Any, dataset: DatasetSpec, problems: _Problems) -> EvaluateSection:
    e = _mapping(raw, "evaluate", problems, tuple(EvaluateSection.__dataclass_fields__))
    section = EvaluateSection(unlabelled=_bool(e, "unlabelled", "evaluate", problems))
    if section.unlabelled and dataset.phantom is not None and not dataset.phantom.unlabelled:
        problems.add("evaluate.unlabelled", "the phantom has no unlabelled subjects (set dataset.phantom.unlabelled)")
    return section


def _class_levels(raw: Any, factors: dict, dataset: DatasetSpec, problems: _Problems) -> tuple:
    """Factor ``classes``: each level's remapping checked against the dataset's label set."""
    if "classes" not in factors:
        return ()
    from synthmix.datasets.class_levels import dataset_class_names, dataset_label_count, parse_class_levels

    count = dataset_label_count(dataset)
    names = dataset_class_names(dataset, count) if count else None
    levels, found = parse_class_levels(raw["classes"], count=count, names=names)
    for p in found:
        problems.append(p)
    return levels


def _plugins(raw: Any, problems: _Problems) -> tuple:
    """Import the study's plugin modules (registry entries of the user's own), so that every
    name below is checked against registries that hold them."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(m, str) and m for m in raw):
        problems.add("plugins", f"must be a list of module names, got {raw!r}")
        return ()
    for i, module in enumerate(raw):
        try:
            import_plugins([module])
        except ImportError as err:
            problems.add(f"plugins[{i}]", f"cannot import {module!r}: {err}")
    return tuple(raw)


def import_plugins(modules) -> None:
    """Import each plugin module (each registers its entries once, on first import)."""
    for module in modules:
        importlib.import_module(module)


def _tune(top: dict, factors: dict, exclude: tuple, split: SplitSection, mixing: MixingSection,
          dataset: DatasetSpec, source: str, base_dir: Any, problems: _Problems) -> Any:
    """The optional ``tune:`` section (``tune_section.validate_tune``); its paths are checked
    against the rest of the study only when that is valid, so each problem is reported once."""
    if "tune" not in top:
        return None
    from synthmix.search_spaces.tune_section import validate_tune

    pre = dataset.preprocess
    classes = pre.get("num_classes") or (max(int(v) for v in pre["remap"].values()) + 1 if pre.get("remap") else None) \
        or (dataset.phantom.classes if dataset.phantom else None)
    return validate_tune(top["tune"], {k: v for k, v in top.items() if k != "tune"}, factors=factors,
                         exclude=exclude, split=split, mixing=mixing, classes=classes, source=source,
                         base_dir=base_dir, problems=problems, revalidate=not problems)


def _safe_uses(mixing: MixingSection, level: Any) -> bool:
    try:
        return MIXING_POLICIES.get(mixing.policy).uses_synthetic(level)
    except ValueError:
        return False


def load_study(path_or_preset_name: str | Path, *, overrides: dict | None = None) -> Study:
    """Load and validate a study from a YAML file or a shipped preset name. ``overrides`` is
    merged into the YAML first: nested dicts merge, dotted keys ("resources.workers") set one
    field, lists and scalars replace."""
    import yaml

    from synthmix.search_spaces.presets import preset_path

    target = Path(path_or_preset_name).expanduser()
    if not target.is_file():
        target = preset_path(str(path_or_preset_name))  # StudyError naming the presets if unknown
    source = str(target)
    try:
        raw = yaml.safe_load(target.read_text())
    except yaml.YAMLError as err:
        raise StudyError([f"not valid YAML: {err}"], source) from None
    if overrides:
        raw = merge_overrides(raw if isinstance(raw, dict) else {}, overrides)
    return validate_study(raw, source, base_dir=target.parent)


def merge_overrides(raw: dict, overrides: dict) -> dict:
    """A copy of ``raw`` with ``overrides`` applied (see load_study)."""
    out = json.loads(json.dumps(raw, default=str)) if raw else {}
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node = out
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = merge_overrides(node[leaf], value)
        else:
            node[leaf] = value
    return out
