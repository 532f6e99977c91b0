"""The typed cell spec: everything one Ray Tune trial needs, built once from the plan.

``build_cell_specs`` turns a Plan into one ``CellSpec`` per pending cell; Tune carries it as
``spec.to_dict()`` (plain JSON values) and the trial rebuilds it with ``CellSpec.from_dict``.
Every stage reads its typed part: the generator training its ``GeneratorJob``, the pool its
``PoolJob``, the segmentation its split and segmenter config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from synthmix.search_spaces.expand import Candidate, Cell, ChoiceJob, GeneratorJob, Plan, PoolJob
from synthmix.search_spaces.schema import Study


@dataclass(frozen=True)
class DataSpec:
    manifest: str
    phantom: dict | None
    preprocess: dict


@dataclass(frozen=True)
class SplitSubjects:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    n_pool: int        # labelled subjects neither test nor validation: what the subset is drawn from
    unlabelled: tuple[str, ...] = ()


@dataclass(frozen=True)
class CellSpec:
    root: str
    study: str
    factors: tuple[str, ...]
    cell: Cell
    data: DataSpec
    split: SplitSubjects
    generator: GeneratorJob | None
    pool: PoolJob | None
    segmenter: dict
    mixing: dict
    scaling: dict
    max_failures: int
    plugins: tuple[str, ...] = ()
    classes: dict | None = None  # factor classes: the cell's ClassLevel.to_dict(), else None
    # generator.block_size: (generator job, pool job) per block, when the cell has several
    blocks: tuple[tuple[GeneratorJob, PoolJob], ...] = ()
    evaluate: dict = dataclasses.field(default_factory=dict)  # the study's evaluate section
    choice: ChoiceJob | None = None  # model selection: generator and pool are set once it is made

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    def to_dict(self) -> dict:
        return asdict(self)

    def block_specs(self) -> list["CellSpec"]:
        """One spec per generator the cell needs: itself without blocks, else one per block
        whose split's training subjects are the block's (what its generator and its pool's
        clean-up and filters may see: rule 3)."""
        if not self.blocks:
            return [self]
        return [dataclasses.replace(self, generator=job, pool=pool, blocks=(),
                                    split=dataclasses.replace(self.split, train=tuple(job.subjects)))
                for job, pool in self.blocks]

    @classmethod
    def from_dict(cls, d: dict) -> "CellSpec":
        d = dict(d)
        gen, pool, choice = d.pop("generator"), d.pop("pool"), d.pop("choice", None)
        blocks = tuple((_tuples(GeneratorJob, g), PoolJob(**p)) for g, p in d.pop("blocks", ()))
        cell = dict(d.pop("cell"))
        cell["blocks"] = tuple(tuple(b) for b in cell.get("blocks", ()))
        return cls(cell=Cell(**cell), choice=_choice(choice) if choice else None, data=DataSpec(**d.pop("data")),
                   blocks=blocks,
                   split=SplitSubjects(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("split").items()}),
                   generator=_tuples(GeneratorJob, gen) if gen else None,
                   pool=PoolJob(**pool) if pool else None,
                   factors=tuple(d.pop("factors")), plugins=tuple(d.pop("plugins", ())), **d)


def _tuples(cls, d: dict):
    """A frozen dataclass from JSON, lists back to the tuples its fields declare."""
    names = {f.name for f in dataclasses.fields(cls) if "tuple" in str(f.type)}
    return cls(**{k: tuple(v) if k in names else v for k, v in d.items()})


def _choice(d: dict) -> ChoiceJob:
    d = dict(d)
    candidates = tuple(Candidate(overrides=c["overrides"], generator=_tuples(GeneratorJob, c["generator"]),
                                 pool=PoolJob(**c["pool"])) for c in d.pop("candidates"))
    return ChoiceJob(candidates=candidates, by=tuple(d.pop("by")), **d)


def _class_level(study: Study, cell: Cell) -> dict | None:
    level = study.class_level(cell.factors["classes"]) if "classes" in cell.factors else None
    return level.to_dict() if level is not None else None


def build_cell_specs(study: Study, root: str, plan: Plan, cells: list[Cell]) -> list[CellSpec]:
    """One spec per cell of ``cells`` (cells of ``plan``)."""
    r = study.resources
    scaling = {"workers": r.workers, "cpus_per_worker": r.cpus_per_worker, "gpus_per_worker": r.gpus_per_worker}
    phantom = asdict(study.dataset.phantom) if study.dataset.phantom else None
    specs = []
    for c in cells:
        # The cell's preprocessing: a labels region of interest is fitted on its split's pool.
        data = DataSpec(manifest=str(plan.manifest), preprocess=plan.cell_preprocess(c), phantom=phantom)
        split = plan.splits.get(c.fold, c.repeat, c.amount)
        segmenter = {**study.segmenter_config(c.factors.get("architecture", "unet"),
                                              c.factors.get("augmentation", "none")), "seed": c.seed}
        specs.append(CellSpec(
            root=root, study=study.name, factors=tuple(study.factors), cell=c, data=data,
            split=SplitSubjects(train=tuple(split.train), val=tuple(split.val), test=tuple(split.test),
                                n_pool=len(getattr(split, "pool", ()) or ()), unlabelled=tuple(split.unlabelled)),
            generator=plan.generator_jobs.get(c.generator_key) if c.generator_key else None,
            pool=plan.pool_jobs.get(c.pool_key) if c.pool_key else None,
            segmenter=segmenter, mixing={"policy": study.mixing.policy, "source": study.mixing.source,
                                         "draw": study.mixing.draw},
            scaling=scaling, max_failures=r.max_failures, plugins=tuple(study.plugins),
            classes=_class_level(study, c),
            blocks=tuple((plan.generator_jobs[g], plan.pool_jobs[p]) for g, p in c.blocks),
            evaluate=asdict(study.evaluate), choice=plan.choices.get(c.choice_key) if c.choice_key else None))
    return specs
