"""Grid expansion: a validated Study + its dataset -> the Plan (cells, generator jobs, estimate).

One cell is one combination of factor levels x one (fold, repeat); the grid is the full
factorial of the factors in YAML order x folds x repeats, minus the ``exclude`` assignments.

Identity and seeds (DESIGN rules 5 and 6):

- ``cell_id`` = readable levels + fold/repeat + 8 hex digits of (study fingerprint, dataset
  fingerprint), e.g. ``rf0.5-syn1-unet-none-f0-r2-1a2b3c4d``; the same study and data give the
  same ids on every run, a changed config gives new ones.
- a cell's ``seed`` derives from the study seed and the cell's coordinates (levels, fold, repeat).
- the generator key hashes what decides a generator: dataset fingerprint, preprocess config,
  study seed, fold, repeat, the sorted training subset, the unlabelled subjects (only for a
  family that learns from them), and the generator name, config, select, quality and masks
  settings. Cells that differ only in architecture, augmentation or synthetic level share a
  key; a key is one generator training (``Plan.generator_jobs``).
- the classes level (factor ``classes``) is in neither key: a generator is trained on the
  full label set and its pool serves every level, remapped when a cell trains.
- the pool key hashes the generator key and the pool settings (``generator.pool``, the mixing
  source): a changed pool draws a new pool from the same trained generator (``Plan.pool_jobs``).
- blocks (``generator.block_size: B``, 001 section III-F): a subset of more than B subjects
  (units, with groups) trains one generator per block of B, cut in the nesting order of the
  subsets (``splits.training_blocks``), so block i of a larger subset is the same generator key
  as block i of every smaller subset holding it (the 6-subject subset is the first block of the
  12). A block's key is ``generator_key`` over its subjects only (rule 3; B itself is not
  hashed: a block is the training of its subjects), each block has its own pool job, and the
  cell lists its blocks in ``Cell.blocks``; its ``generator_key``/``pool_key`` are the first
  block's. The cell's pool takes an equal share of each block's pool (``mixing.pool_blocks``).
- factor generator: a level is a family (list form, ``generator.configs``) or a whole named
  section (``factors.generator: {LEVEL: {name, config, ...}}``); a level's key is the key the
  same section gets as the study's one ``generator``, so a bake-off reuses the generators of
  single-family studies. Cells of every level share the real subsets (same (fold, repeat,
  amount) -> same subjects). A cell without synthetic data needs no generator, so the grid
  holds it once, at generator level ``none`` (``schema.NO_GENERATOR``), as the baseline of
  every level (``grid``); the aggregator compares each level with it.
- ``generator.budget: {cpu_seconds: N}``: the family's cost model sets its steps
  (``trainers.generators.budget``) at the study's slice size; the resolved config is in the
  job (plan.json) and in its key.
- model selection (``generator.choose``): each candidate is a generator key of its own (a
  ``Plan.generator_jobs`` entry, so counted as a generator training); a cell that uses synthetic
  data has no generator key yet but a choice key (``Plan.choices``: the subset's candidates, each
  with the pool it would draw) and gets the chosen candidate's key and pool when it runs.

The compute estimate is a model, not a measurement of the study: per training step,
a fixed overhead + a cost per (batch x pixel) sample, times the steps (per cell: a budget in
real exposures trains more steps at higher synthetic shares; ``epochs_real`` assumes a
phantom's size/2 slices per subject, or ``ASSUMED_SLICES`` for a manifest). The constants in
``STEP_COST`` were measured with one torch thread on the 2-CPU development VM (a shared x86
cloud core): the default 4-level UNet (16-128 filters, Adam, batch 8) took 110 ms per step at
32x32 and 265 ms at 64x64; the default DCGAN (resize-conv, 16 filters, batch 16, 2 WGAN-GP critic
steps per generator step) 300 generator steps in 36 s at 32x32 and 282 s at 64x64 (under load).
Validation passes and data loading are not modelled, nor are GPUs: on a GPU cluster the
estimate is an upper bound. Each training also pays
``RAY_START_SECONDS`` for its Ray Train worker group.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synthmix.search_spaces.schema import NO_GENERATOR, Study, content_hash
from synthmix.errors import StudyError

# (seconds per step, seconds per million batch x pixel samples) on one CPU thread; for the
# generator, per critic or generator update. See the module docstring for the measurements.
STEP_COST = {"segmenter": (0.058, 6.3)}  # generators: each family's own ``cost``
# Starting one Ray Train run (a Tune trial's TorchTrainer: controller + worker processes that
# import torch, then the final report) measured about 15 s on a quiet 2-CPU machine, up to 30 s
# under load (benchmarks/orchestration_overhead.py); charged once per training.
RAY_START_SECONDS = 15.0
# Slices per subject assumed by the estimate of an epochs_real budget on a manifest's data (its
# slice count is known only after preprocessing).
ASSUMED_SLICES = 100
# Short prefixes that keep cell ids readable; other factors show their level alone.
_ID_PREFIX = {"real_fraction": "rf", "real_count": "rc", "synthetic": "syn", "classes": "cls"}


@dataclass(frozen=True)
class Cell:
    cell_id: str
    factors: dict
    fold: int
    repeat: int
    amount: float | int  # the cell's real_fraction or real_count
    generator_key: str | None
    seed: int
    pool_key: str | None = None
    # (generator key, pool key) per block when the subset is cut into more than one block
    # (generator.block_size); empty otherwise. The first block is generator_key/pool_key.
    blocks: tuple[tuple[str, str], ...] = ()

    @property
    def generator_keys(self) -> tuple[str, ...]:
        """Every generator the cell draws from: its blocks', or its one key (none without)."""
        if self.blocks:
            return tuple(g for g, _ in self.blocks)
        return (self.generator_key,) if self.generator_key else ()
    choice_key: str | None = None  # model selection: the choice that gives its generator and pool

    def to_dict(self) -> dict:
        return {"cell_id": self.cell_id, **self.factors, "fold": self.fold, "repeat": self.repeat,
                "amount": self.amount, "generator_key": self.generator_key, "pool_key": self.pool_key,
                "seed": self.seed, **({"blocks": [list(b) for b in self.blocks]} if self.blocks else {}),
                **({"choice_key": self.choice_key} if self.choice_key else {})}


@dataclass(frozen=True)
class GeneratorJob:
    key: str
    fold: int
    repeat: int
    amount: float | int
    subjects: tuple[str, ...]  # the labelled training subset the generator may see (rule 3)
    config: dict               # the family's own options
    name: str = "dcgan_wgangp"
    seed: int = 0              # derived from the study seed and the key
    unlabelled: tuple[str, ...] = ()  # only for a family that learns from unlabelled images
    select: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)
    level: str | None = None   # the factor generator level it serves (the first, when several share it)

    def generator_spec(self):
        from synthmix.trainers.generators.flow import GeneratorSpec

        return GeneratorSpec(key=self.key, name=self.name, config=dict(self.config), seed=self.seed,
                             select=dict(self.select), quality=dict(self.quality), masks=dict(self.masks))


@dataclass(frozen=True)
class PoolJob:
    """One synthetic pool (or, on the fly, the clean-up of every draw) of one generator."""

    key: str
    generator_key: str
    spec: dict    # generator.pool settings (synthetic.PoolSpec)
    source: str   # pool | on_the_fly
    seed: int     # derived from the study seed and the key


@dataclass(frozen=True)
class Candidate:
    """One configuration of a model selection: its overrides of ``generator.config``, its
    generator job and the pool the subset's cells draw if it is chosen."""

    overrides: dict
    generator: GeneratorJob
    pool: PoolJob


@dataclass(frozen=True)
class ChoiceJob:
    """One model selection: the candidates of one subset (fold, repeat, amount), ranked by
    ``by`` (``choose_section``) once all are trained."""

    key: str
    fold: int
    repeat: int
    amount: float | int
    by: tuple[str, ...]
    candidates: tuple[Candidate, ...]

    def summary(self) -> dict:
        """plan.json's entry (the jobs themselves are in generator_jobs)."""
        return {"key": self.key, "fold": self.fold, "repeat": self.repeat, "amount": self.amount, "by": list(self.by),
                "candidates": [{"overrides": dict(c.overrides), "generator_key": c.generator.key,
                                "pool_key": c.pool.key} for c in self.candidates]}


@dataclass
class Plan:
    study: Study
    manifest: Path
    dataset_fingerprint: str
    splits: Any  # synthmix.datasets.splits.SplitPlan
    cells: list[Cell]
    generator_jobs: dict[str, GeneratorJob]
    estimate: dict = field(default_factory=dict)
    pool_jobs: dict[str, PoolJob] = field(default_factory=dict)
    data: Any = None  # data_checks.DataPlan, when the plan was checked against its dataset
    choices: dict[str, ChoiceJob] = field(default_factory=dict)  # model selection, per subset

    def cell_preprocess(self, cell: Cell) -> dict:
        """The preprocess options a cell runs with: the study's, with a labels crop fitted on
        its split's training pool (data_checks)."""
        if self.data is None:
            return dict(self.study.dataset.preprocess)
        return dict(self.data.preprocess[(cell.fold, cell.repeat)])

    def cells_per_key(self) -> dict[str, int]:
        counts = {k: 0 for k in self.generator_jobs}
        for c in self.cells:
            for key in c.generator_keys:
                counts[key] += 1
            for cand in self.choices[c.choice_key].candidates if c.choice_key else ():
                counts[cand.generator.key] += 1  # a candidate serves its subset's cells if chosen
        return counts

    def cells_without_generator(self) -> int:
        return sum(c.generator_key is None and c.choice_key is None for c in self.cells)

    def to_dict(self) -> dict:
        per_key = self.cells_per_key()
        return {
            "study": self.study.name,
            "fingerprint": self.study.fingerprint(),
            "dataset_fingerprint": self.dataset_fingerprint,
            "manifest": str(self.manifest),
            "factors": list(self.study.factors),
            "levels": {k: list(v) for k, v in self.study.factors.items()},
            "mixing": asdict(self.study.mixing),
            "baseline": self.study.statistics.baseline,
            "counts": {"cells": len(self.cells), "generator_trainings": len(self.generator_jobs),
                       "pools": len(self.pool_jobs),
                       "cells_without_generator": self.cells_without_generator(),
                       **({"choice_groups": len(self.choices)} if self.choices else {})},
            "cells": [c.to_dict() for c in self.cells],
            "generator_jobs": [{**asdict(j), "subjects": list(j.subjects), "unlabelled": list(j.unlabelled),
                                "cells": per_key[k]} for k, j in self.generator_jobs.items()],
            "pool_jobs": [asdict(j) for j in self.pool_jobs.values()],
            **({"choices": [j.summary() for j in self.choices.values()]} if self.choices else {}),
            "estimate": self.estimate,
            "data": self.data.to_dict() if self.data is not None else None,
            **({"tune": _tune_block(self)} if self.study.tune else {}),
            # Factor classes: each level's lookup table (lut[old label] = new) and class names.
            **({"classes": [c.to_dict() for c in self.study.classes]} if self.study.classes else {}),
            **({"generator_levels": generator_levels(self)} if "generator" in self.study.factors else {}),
        }

    def to_json(self) -> str:
        """The study's plan.json (what the results aggregator reads)."""
        return json.dumps(self.to_dict(), indent=2)

    def render(self) -> str:
        s, e, per_key = self.study, self.estimate, self.cells_per_key()
        lines = [f"study {s.name} ({s.source})", f"  {s.description}" if s.description else "",
                 "factors:"]
        lines += [f"  {k}: {', '.join(map(str, v))}" for k, v in s.factors.items()]
        folds = s.split.folds or 1
        lines += [f"folds x repeats: {folds} x {s.split.repeats}",
                  f"mixing: {s.mixing.policy} ({s.mixing.source})",
                  self.data.render() if self.data is not None else "",
                  f"cells: {len(self.cells)}",
                  f"generator trainings (unique keys): {len(self.generator_jobs)}"]
        if s.generator is not None and s.generator.block_size is not None:
            lines.append(f"  one generator per block of {s.generator.block_size} subjects: "
                         f"{sum(bool(c.blocks) for c in self.cells)} cells pool several blocks")
        if per_key:
            counts = sorted(per_key.values())
            lines.append(f"  cells per key: min {counts[0]}, max {counts[-1]}; "
                         f"{self.cells_without_generator()} cells use no generator")
        if "generator" in s.factors:
            for row in generator_levels(self):
                lines.append(f"  generator {row['level']}: " + (
                    f"{row['family']}, {row['cells']} cells, {row['trainings']} trainings of {row['steps']} steps, "
                    f"{_hours(row['cpu_seconds_each'])} CPU each (cost model)" if row["family"] else
                    f"{row['cells']} cells without synthetic data (the baseline of every level)"))
        if self.choices:
            lines += render_choices(self)
        if e:
            r = e["per_trial"]
            lines += [f"resources per training: {r['workers']} worker(s) x ({r['cpus_per_worker']:g} CPU, "
                      f"{r['gpus_per_worker']:g} GPU) = {r['cpus']:g} CPU, {r['gpus']:g} GPU",
                      f"estimated compute (a model, see synthmix.search_spaces.expand): "
                      f"{_hours(e['total_cpu_seconds'])} CPU time "
                      f"(segmentation {_hours(e['segmenter_cpu_seconds'])}, generators "
                      f"{_hours(e['generator_cpu_seconds'])}, Ray start-ups {_hours(e['ray_start_seconds'])}); "
                      f"about {_hours(e['wall_seconds'])} wall "
                      f"with {e['parallel_trials']} trial(s) at a time"]
            if e.get("gpu_seconds"):
                shared = e.get("trainings_per_gpu")
                lines.append(f"GPU time held: {_hours(e['gpu_seconds'])} (the model's seconds x {r['gpus']:g} GPU "
                             "per training" + (f"; {shared:g} trainings share each GPU)" if shared else ")"))
        if s.tune:
            from synthmix.search_spaces.tune_section import render_block

            lines += render_block(s, _tune_block(self)["estimate_cpu_seconds"])
        return "\n".join(line for line in lines if line)


def _tune_block(plan: "Plan") -> dict:
    """plan.json's ``tune`` block, with the search's modelled compute: one training per trial
    (none when a generator figure scores it), plus the generator of the tuned cell: once, or
    once per trial when the search changes the generator."""
    from synthmix.search_spaces.tune_section import plan_block

    study = plan.study
    t, pixels = study.tune, _image_pixels(study)
    seg_steps, seg_batch = _budget(study.segmenter)
    per_trial = RAY_START_SECONDS + (0.0 if t.scores_generator else
                                     seg_steps * _step_seconds("segmenter", seg_batch, pixels))
    on = next((c for c in plan.cells if c.fold == t.on["fold"] and c.repeat == t.on["repeat"]
               and all(c.factors[k] == t.on[k] for k in c.factors)), None)
    gen = 0.0
    if on is not None and on.generator_key:
        one = RAY_START_SECONDS + generator_seconds(plan.generator_jobs[on.generator_key], pixels)
        gen = one * (t.trials if any(p.startswith("generator.") for p in t.space) else 1)
    return {**plan_block(study), "estimate_cpu_seconds": round(t.trials * per_trial + gen, 1)}


def render_choices(plan: Plan) -> list[str]:
    """``synthmix plan``'s lines on model selection: the groups and their candidates."""
    jobs = list(plan.choices.values())
    first = jobs[0]
    lines = [f"model selection: {len(jobs)} choice group(s) (one per subset) x {len(first.candidates)} candidates, "
             f"by mean rank of {', '.join(first.by)}; every candidate is a generator training above"]
    for job in jobs:
        cands = "; ".join(f"{json.dumps(c.overrides, sort_keys=True)} {c.generator.key[:8]}" for c in job.candidates)
        lines.append(f"  f{job.fold} r{job.repeat} amount {job.amount:g} ({len(job.candidates[0].generator.subjects)} "
                     f"subjects): {cands}")
    return lines


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- dataset -----------------------------------------------------------------------------------


def resolve_dataset(study: Study, data_root: str | Path) -> Path:
    """The manifest path of the study's dataset. A phantom is written once into
    ``data_root/phantom-<hash of its parameters>/`` (built in a temporary folder and renamed, so
    a concurrent or interrupted run never sees half a dataset)."""
    if study.dataset.manifest:
        return Path(study.dataset.manifest)
    from synthmix.datasets.phantom import write_phantom_dataset

    params = study.dataset.phantom.params()
    root = Path(data_root)
    final = root / f"phantom-{content_hash(params, 12)}"
    manifest = final / "manifest.csv"
    if manifest.is_file():
        return manifest
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".phantom.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per data root; others wait, then reuse
        if not manifest.is_file():
            tmp = root / f".{final.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            written = write_phantom_dataset(tmp, **params)
            os.replace(tmp, final)
            manifest = final / Path(written).relative_to(tmp)
    return manifest


# --- expansion -----------------------------------------------------------------------------------


def derive_seed(*parts: Any) -> int:
    """A seed in [0, 2**31) from the canonical JSON of ``parts``."""
    return int(content_hash(list(parts), 16), 16) % 2**31


def grid(study: Study) -> list[dict]:
    """Every factor-level combination, in YAML factor order, minus the excluded ones."""
    names = list(study.factors)
    combos = [dict(zip(names, levels)) for levels in itertools.product(*study.factors.values())]
    return shared_baselines(study, [c for c in combos if not any(_matches(c, ex) for ex in study.exclude)])


def shared_baselines(study: Study, combos: list[dict]) -> list[dict]:
    """With factor generator, a combination without synthetic data at generator level
    ``none``, once: its cell trains on real data only, so one baseline per subset serves every
    generator level instead of one identical copy per level."""
    if "generator" not in study.factors or "synthetic" not in study.factors:
        return combos
    out, seen = [], set()
    for combo in combos:
        if not study.uses_synthetic(combo["synthetic"]):
            combo = {**combo, "generator": NO_GENERATOR}
            text = json.dumps(combo, sort_keys=True, default=str)
            if text in seen:
                continue
            seen.add(text)
        out.append(combo)
    return out


def _matches(combo: dict, exclusion: dict) -> bool:
    return all(combo[k] in levels for k, levels in exclusion.items())


def _level_text(value: Any) -> str:
    text = format(value, "g") if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text)


def cell_id(factors: dict, fold: int, repeat: int, suffix: str) -> str:
    parts = [_ID_PREFIX.get(k, "") + _level_text(v) for k, v in factors.items()]
    return "-".join([*parts, f"f{fold}", f"r{repeat}", suffix])


def generator_key(*, dataset_fingerprint: str, preprocess: dict, seed: int, split: Any,
                  name: str, config: dict, unlabelled: tuple = (), shared: dict | None = None,
                  subjects: tuple | None = None) -> str:
    """``unlabelled``: the unlabelled subjects the family learns from (empty for the others);
    ``shared``: the generator section's select / quality / masks settings; ``subjects``: the
    labelled subjects it trains on, when not the split's whole subset (a block)."""
    return content_hash({
        "dataset": dataset_fingerprint, "preprocess": preprocess, "seed": seed,
        "fold": split.fold, "repeat": split.repeat,
        "subjects": sorted(split.train if subjects is None else subjects),
        "unlabelled": sorted(unlabelled), "generator": name, "config": config, **(shared or {})}, 24)


def pool_key(generator_key_: str, pool: dict, source: str) -> str:
    return content_hash({"generator": generator_key_, "pool": pool, "source": source}, 24)


def build_split_plan(study: Study, labelled_ids, unlabelled_ids=(), groups: dict | None = None) -> Any:
    from synthmix.datasets.splits import SplitSpec, build_splits

    real = study.real_factor
    amounts = {"fractions": list(study.factors[real])} if real == "real_fraction" else \
        {"counts": list(study.factors[real])}
    spec = SplitSpec(folds=study.split.folds, test=study.split.test, val=study.split.val,
                     repeats=study.split.repeats, seed=study.seed, **amounts)
    return build_splits(labelled_ids, spec, unlabelled_ids=unlabelled_ids, groups=groups)


def expand_study(study: Study, manifest: str | Path) -> Plan:
    """The study's plan over the dataset at ``manifest`` (see resolve_dataset)."""
    from synthmix.datasets.manifest import read_manifest
    from synthmix.search_spaces.data_checks import check_study_data

    m = read_manifest(manifest)
    splits = build_split_plan(study, m.labelled_ids, m.unlabelled_ids, m.groups)
    data = check_study_data(study, m, splits)  # StudyError naming the field, before anything runs
    return expand_cells(study, splits, dataset_fingerprint=m.fingerprint(), manifest=Path(manifest), data=data)


def expand_cells(study: Study, splits: Any, *, dataset_fingerprint: str, manifest: Path,
                 data: Any = None) -> Plan:
    """Cells and generator jobs from a split plan (``splits.get(fold, repeat, amount)``);
    ``data`` is the plan's check against its dataset (data_checks.check_study_data)."""
    suffix = content_hash([study.fingerprint(), dataset_fingerprint], 8)
    real = study.real_factor
    cells: list[Cell] = []
    jobs: dict[str, GeneratorJob] = {}
    pools: dict[str, PoolJob] = {}
    choices: dict[str, ChoiceJob] = {}
    for repeat in range(study.split.repeats):
        for fold in range(study.split.folds or 1):
            for combo in grid(study):
                split = splits.get(fold, repeat, combo[real])
                key = pkey = ckey = None
                blocks: tuple = ()
                if study.uses_synthetic(combo["synthetic"]) and study.generator_of(combo.get("generator"))[2].choose:
                    ckey = _choice_job(study, combo, split, dataset_fingerprint, jobs, choices, data).key
                elif study.uses_synthetic(combo["synthetic"]):
                    blocks = tuple((k, _pool_job(study, combo, k, pools).key)
                                   for k in _block_keys(study, combo, splits, split, dataset_fingerprint, jobs, data))
                    (key, pkey), blocks = blocks[0], blocks if len(blocks) > 1 else ()
                level = study.level_fingerprint(combo.get("generator"))
                own = suffix if level is None else content_hash([study.fingerprint(), dataset_fingerprint, level], 8)
                cells.append(Cell(cell_id=cell_id(combo, fold, repeat, own), factors=combo, fold=fold,
                                  repeat=repeat, amount=combo[real], generator_key=key,
                                  seed=derive_seed(study.seed, "cell", combo, fold, repeat), pool_key=pkey,
                                  blocks=blocks, choice_key=ckey))
    if not cells:
        raise StudyError(["exclude: removes every cell; the grid is empty"], study.source)
    ids = [c.cell_id for c in cells]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise StudyError([f"factors: two levels print the same in cell ids ({dup}); rename one"], study.source)
    plan = Plan(study=study, manifest=manifest, dataset_fingerprint=dataset_fingerprint, splits=splits,
                cells=cells, generator_jobs=jobs, pool_jobs=pools, data=data, choices=choices)
    plan.estimate = estimate(plan)
    problems = on_the_fly_problems(plan)
    if problems:
        raise StudyError(problems, study.source)
    return plan


def _block_keys(study: Study, combo: dict, splits: Any, split: Any, dataset_fingerprint: str,
                jobs: dict[str, GeneratorJob], data: Any = None) -> list[str]:
    """The generator key of each block of the cell's subset (one without ``block_size``)."""
    size = study.generator_of(combo.get("generator"))[2].block_size
    if size is None:
        return [_job(study, combo, split, dataset_fingerprint, jobs, data).key]
    from synthmix.datasets.splits import training_blocks

    return [_job(study, combo, split, dataset_fingerprint, jobs, data, subjects=b).key
            for b in training_blocks(splits, split, size)]


def _job(study: Study, combo: dict, split: Any, dataset_fingerprint: str,
         jobs: dict[str, GeneratorJob], data: Any = None, subjects: tuple | None = None, *,
         overrides: dict | None = None) -> GeneratorJob:
    """``subjects``: a block of the split's subset (default: the whole subset); ``overrides``: a
    model-selection candidate's."""
    from synthmix.trainers.generators import GENERATORS

    name, config, g = study.generator_of(combo.get("generator"))
    config = {**config, **(overrides or {})}
    if g.budget:
        at = f"factors.generator.{combo['generator']}" if study.generator_levels else "generator"
        config = resolved_config(study, name, config, g.budget, data, path=at)
    unlabelled = tuple(sorted(split.unlabelled)) if GENERATORS.get(name).uses_unlabelled else ()
    shared = {"select": g.select, "quality": g.quality, "masks": g.masks}
    trained_on = tuple(sorted(split.train if subjects is None else subjects))
    key = generator_key(dataset_fingerprint=dataset_fingerprint, preprocess=study.dataset.preprocess,
                        seed=study.seed, split=split, name=name, config=config, unlabelled=unlabelled,
                        shared=shared, subjects=trained_on)
    if key not in jobs:
        # amount: of the first cell that needs the key (a block serves every larger subset too)
        jobs[key] = GeneratorJob(key=key, fold=split.fold, repeat=split.repeat, amount=split.amount,
                                 subjects=trained_on, config=dict(config), name=name,
                                 seed=derive_seed(study.seed, "generator", key), unlabelled=unlabelled,
                                 level=combo.get("generator"), **{k: dict(v) for k, v in shared.items()})
    return jobs[key]


def resolved_config(study: Study, name: str, config: dict, budget: dict, data: Any = None, *,
                    path: str = "generator") -> dict:
    """``config`` with the steps that ``budget`` affords at the study's slice size (StudyError
    naming the section at ``path`` when it affords no valid training)."""
    from synthmix.trainers.generators.budget import resolve_budget

    side = int(round(_image_pixels(study, data) ** 0.5))
    try:
        return resolve_budget(name, config, float(budget["cpu_seconds"]), (side, side))
    except StudyError as err:
        raise StudyError([f"{path}.{p}" for p in err.problems], study.source) from None


def _choice_job(study: Study, combo: dict, split: Any, dataset_fingerprint: str,
                jobs: dict[str, GeneratorJob], choices: dict[str, ChoiceJob], data: Any = None) -> ChoiceJob:
    """The model selection of this subset: one generator job per candidate (in ``jobs``, so
    each is trained once and counted), each with the pool its cells would draw (not in the
    plan's pools: only the chosen one is drawn)."""
    choose = study.generator.choose
    candidates = []
    for overrides in choose["candidates"]:
        job = _job(study, combo, split, dataset_fingerprint, jobs, data, overrides=overrides)
        candidates.append(Candidate(overrides=dict(overrides), generator=job, pool=_pool_job(study, combo, job.key, {})))
    key = content_hash({"candidates": [c.generator.key for c in candidates], "by": choose["by"]}, 24)
    if key not in choices:
        choices[key] = ChoiceJob(key=key, fold=split.fold, repeat=split.repeat, amount=split.amount,
                                 by=tuple(choose["by"]), candidates=tuple(candidates))
    return choices[key]


def _pool_job(study: Study, combo: dict, gen_key: str, pools: dict[str, PoolJob]) -> PoolJob:
    spec, source = dict(study.generator_of(combo.get("generator"))[2].pool), study.mixing.source
    key = pool_key(gen_key, spec, source)
    if key not in pools:
        pools[key] = PoolJob(key=key, generator_key=gen_key, spec=spec, source=source,
                             seed=derive_seed(study.seed, "pool", key))
    return pools[key]


def generator_levels(plan: "Plan") -> list[dict]:
    """Per level of factor generator: its family, cells, trainings, steps and modelled seconds
    of one training (what ``plan`` prints and plan.json records)."""
    pixels = _image_pixels(plan.study, plan.data)
    out: dict = {}
    for cell in plan.cells:
        level = cell.factors.get("generator")
        job = plan.generator_jobs.get(cell.generator_key) if cell.generator_key else None
        row = out.setdefault(level, {"level": level, "family": job.name if job else None, "cells": 0,
                                     "trainings": set(), "steps": None, "cpu_seconds_each": None})
        row["cells"] += 1
        if job:
            row["trainings"].add(job.key)
            row["steps"] = _job_steps(job)
            row["cpu_seconds_each"] = round(generator_seconds(job, pixels), 1)
    return [{**r, "trainings": len(r["trainings"])} for r in out.values()]


def _job_steps(job: GeneratorJob) -> int:
    from synthmix.trainers.generators import GENERATORS

    family = GENERATORS.get(job.name)
    built = family.config(dict(job.config))
    return int(sum(family.steps_of(built).values()) if family.steps_of else built.steps)


# --- estimate ----------------------------------------------------------------------------------


def _image_pixels(study: Study, data: Any = None) -> int:
    pre = study.dataset.preprocess
    size = data.train_size if data is not None and data.train_size else \
        pre.get("patch_size") or pre.get("pad_to") or pre.get("resize")
    if size is None and study.dataset.phantom:
        size = study.dataset.phantom.size
    if size is None:
        size = 128  # a manifest's slice size is only known after loading; assume a common one
    h, w = (size, size) if isinstance(size, int) else size
    return int(h) * int(w)


def _budget(config: dict) -> tuple[int, int]:
    """(steps, batch size) of a segmentation training: the study's values, else the defaults."""
    from synthmix.trainers.segmentation import SegmentationConfig

    defaults = SegmentationConfig()
    return int(config.get("max_steps", defaults.max_steps)), int(config.get("batch_size", defaults.batch_size))


def _cell_steps(plan: Plan, cell: Cell) -> int:
    """A cell's segmentation steps: max_steps, or its real-exposure budget at its synthetic share."""
    s = plan.study
    if not s.segmenter.get("budget"):
        return _budget(s.segmenter)[0]
    from synthmix.datasets.mixing import MIXING_POLICIES
    from synthmix.trainers.augmentation import build_augmentation
    from synthmix.trainers.segmentation import build_segmentation_config, training_steps

    config = build_segmentation_config(s.segmenter_config(cell.factors.get("architecture", "unet"),
                                                          cell.factors.get("augmentation", "none")))
    n_real = _cell_real_slices(plan, cell)
    policy, level = MIXING_POLICIES.get(s.mixing.policy), cell.factors["synthetic"]
    share = policy.real_share(level, n_real=n_real, batch_size=config.batch_size)
    offline = build_augmentation(config.augmentation, config.augmentation_params)
    if getattr(offline, "offline", False):  # its copies are real draws; an additive level counts the originals
        n_all = n_real * (1 + offline.copies)
        if s.mixing.policy == "additive" and not policy.amount(level)[1]:
            m = round(policy.amount(level)[0] * n_real)
            share = n_all / (n_all + m)
        n_real = n_all
    return training_steps(config, n_real=n_real, real_share=share)


def _cell_real_slices(plan: Plan, cell: Cell) -> int:
    """The cell's real training slices as the plan models them (before loading any volume)."""
    s = plan.study
    per_subject = s.dataset.phantom.size // 2 if s.dataset.phantom else ASSUMED_SLICES
    return per_subject * len(plan.splits.get(cell.fold, cell.repeat, cell.amount).train)


def generator_seconds(job: GeneratorJob, pixels: int) -> float:
    """The family's own cost model (one CPU core), or 0 for a family without one."""
    from synthmix.trainers.generators import GENERATORS

    family = GENERATORS.get(job.name)
    if family.cost is None:
        return 0.0
    side = int(round(pixels ** 0.5))
    return float(family.cost(family.config(job.config), (side, side)))


def _step_seconds(kind: str, batch: int, pixels: int) -> float:
    overhead, per_mpix = STEP_COST[kind]
    return overhead + batch * pixels / 1e6 * per_mpix


def segmentation_seconds(study: Study) -> float:
    """Modelled seconds of one cell's segmentation training, its Ray start-up included."""
    steps, batch = _budget(study.segmenter)
    return steps * _step_seconds("segmenter", batch, _image_pixels(study)) + RAY_START_SECONDS


def cell_costs(plan: Plan) -> dict[str, tuple[float, float]]:
    """cell id -> (modelled seconds of its generator's training with its Ray start-up, 0
    without one; of its segmentation): what the cell queue orders by (``orchestrator.capacity``)."""
    pixels = _image_pixels(plan.study, plan.data)
    _, batch = _budget(plan.study.segmenter)
    step = _step_seconds("segmenter", batch, pixels)
    gen = generator_costs(plan)
    return {c.cell_id: (sum(gen[k] for k in c.generator_keys), _cell_steps(plan, c) * step + RAY_START_SECONDS)
            for c in plan.cells}


def generator_costs(plan: Plan) -> dict[str, float]:
    """generator key -> modelled seconds of its training with its Ray start-up."""
    pixels = _image_pixels(plan.study, plan.data)
    return {key: generator_seconds(job, pixels) + RAY_START_SECONDS for key, job in plan.generator_jobs.items()}


def on_the_fly_problems(plan: Plan) -> list[str]:
    """``mixing.source: on_the_fly`` cells whose generator family refuses the sampling their
    training would need (its ``on_the_fly_problem``): the synthetic items drawn over the cell's
    steps against the segmentation's own modelled time. The first such cell per generator."""
    from synthmix.datasets.mixing import MIXING_POLICIES
    from synthmix.trainers.generators import GENERATORS

    s = plan.study
    if s.mixing.source != "on_the_fly" or not plan.generator_jobs:
        return []
    pixels = _image_pixels(s, plan.data)
    side = int(round(pixels ** 0.5))
    _, batch = _budget(s.segmenter)
    problems: dict[str, str] = {}
    for cell in plan.cells:
        job = plan.generator_jobs.get(cell.generator_key)
        family = GENERATORS.get(job.name) if job else None
        if family is None or family.on_the_fly_problem is None or job.key in problems:
            continue
        steps = _cell_steps(plan, cell)
        share = MIXING_POLICIES.get(s.mixing.policy).real_share(cell.factors["synthetic"], n_real=_cell_real_slices(plan, cell),
                                                              batch_size=batch)
        draws = int(round(steps * batch * (1.0 - share)))
        problem = family.on_the_fly_problem(family.config(job.config), (side, side), draws,
                                            steps * _step_seconds("segmenter", batch, pixels))
        if problem:
            problems[job.key] = f"mixing.source: on_the_fly with generator {job.name} (cell {cell.cell_id}): {problem}"
    return list(problems.values())


def estimate(plan: Plan) -> dict:
    """Per-trial resources and the modelled total compute (see the module docstring)."""
    s, r = plan.study, plan.study.resources
    pixels = _image_pixels(s, plan.data)
    seg_steps, seg_batch = _budget(s.segmenter)
    cell_steps = [_cell_steps(plan, c) for c in plan.cells]
    seg = sum(cell_steps) * _step_seconds("segmenter", seg_batch, pixels)
    gen = sum(generator_seconds(job, pixels) for job in plan.generator_jobs.values())
    # A model selection draws its chosen pool in a Ray Train run of its own.
    overhead = (len(plan.cells) + len(plan.generator_jobs) + len(plan.choices)) * RAY_START_SECONDS
    cpus, gpus = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    parallel = r.max_concurrent_trials or max(1, int((os.cpu_count() or 1) // max(cpus, 1)))
    total = seg + gen + overhead
    return {
        "per_trial": {"workers": r.workers, "cpus_per_worker": r.cpus_per_worker,
                      "gpus_per_worker": r.gpus_per_worker, "cpus": cpus, "gpus": gpus},
        "image_pixels": pixels, "segmenter_steps": max(cell_steps, default=seg_steps), "segmenter_batch": seg_batch,
        "segmenter_cpu_seconds": round(seg, 1), "generator_cpu_seconds": round(gen, 1),
        "ray_start_seconds": round(overhead, 1),
        "total_cpu_seconds": round(total, 1), "parallel_trials": parallel,
        # Each training spreads over its trial's CPUs; trials run `parallel` at a time.
        "wall_seconds": round(total / (min(parallel, max(len(plan.cells), 1)) * max(cpus, 1)), 1),
        # GPU time the trainings hold (a training on a fraction of a GPU holds that fraction),
        # and how many trainings share one GPU; 0 / None for a CPU study.
        "gpu_seconds": round(total * gpus, 1),
        "trainings_per_gpu": round(1 / gpus, 3) if 0 < gpus < 1 else None,
        "model": "steps x (overhead + batch x pixels x cost), one CPU thread, plus a Ray start-up per "
                 "training (an estimate; GPU speed not modelled: on a GPU it is an upper bound)",
    }
