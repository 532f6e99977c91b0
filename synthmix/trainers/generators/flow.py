"""The generator training flow, top to bottom: check the data, fit its slice shape to the
family's architecture, open a session, let the family train, keep the selected snapshot,
measure quality, write the artifact (tensors + JSON, then a rename).

Every family goes through this one function; a family module holds only its own options,
networks and loop (see ``generators/__init__``). The orchestrator runs it on Ray Train
workers (``orchestrator/cells.py``); tests call it with a LocalContext.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from synthmix.datasets.arrays import SliceSet
from synthmix.errors import DataError, StudyError
from synthmix.trainers.checkpoint import save_tensors
from synthmix.trainers.context import TrainContext
from synthmix.trainers.generators import GENERATORS, GeneratorData, GeneratorFamily
from synthmix.trainers.generators.artifact import (
    MASKS_FILE, QUALITY_FILE, REAL_FILE, SAMPLES_FILE, SPEC_FILE, SUBJECTS_FILE, WEIGHTS_FILE, GeneratorArtifact,
    ShapedSampler, save_masks, save_sample_grid, write_artifact_folder)
from synthmix.trainers.generators.encoding import IntensityMap, JointEncoding, ShapeFit
from synthmix.trainers.generators.masks import MaskSource, build_mask_spec
from synthmix.trainers.generators.session import GeneratorSession, build_select_spec
from synthmix.trainers.synthetic import Samples

GRID_SAMPLES = 32


@dataclass(frozen=True)
class QualitySpec:
    """``generator.quality``: how many samples the FCN score, blur and NN distance use (the
    SWD's real halves hold up to samples/2 training slices each, its compared sets as many,
    over 8 splits: ``quality.matched_swd``), and the training steps of the FCN score's
    reference segmenter."""

    samples: int = 512
    reference_steps: int = 200

    def __post_init__(self) -> None:
        problems = [f"{k}: must be a positive integer, got {getattr(self, k)!r}" for k in ("samples", "reference_steps")
                    if isinstance(getattr(self, k), bool) or not isinstance(getattr(self, k), int)
                    or getattr(self, k) < 1]
        if problems:
            raise StudyError(problems, source="generator.quality")


def build_quality_spec(d: dict | None) -> QualitySpec:
    d = dict(d or {})
    unknown = sorted(set(d) - set(QualitySpec.__dataclass_fields__))
    if unknown:
        raise StudyError([f"{k}: unknown key; known: samples, reference_steps" for k in unknown],
                         source="generator.quality")
    return QualitySpec(**d)


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything that decides one generator training (its key hashes it): serialisable."""

    key: str
    name: str
    config: dict
    seed: int
    select: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorSpec":
        return cls(**d)

    @property
    def family(self) -> GeneratorFamily:
        return GENERATORS.get(self.name)


def check_data(data: SliceSet) -> None:
    """Fail before any training time is spent on data no generator can learn from."""
    if len(data) == 0:
        raise DataError("generator training data is empty: the cell's training subset has no slices")
    if data.num_classes < 2:
        raise DataError(f"generator training data has num_classes={data.num_classes}; need at least 2")
    if data.labels.min() < 0 or data.labels.max() >= data.num_classes:
        raise DataError(f"generator training labels lie in [{data.labels.min()}, {data.labels.max()}], "
                        f"outside [0, {data.num_classes})")
    if not np.isfinite(data.images).all():
        raise DataError("generator training images contain NaN or infinite values")


def _padded(real: SliceSet, unlabelled: np.ndarray | None, fit: ShapeFit) -> GeneratorData:
    images, labels = fit.pad(real.images, real.labels)
    padded = SliceSet(images, labels, real.subject_ids, real.positions, real.spacing, real.num_classes)
    if unlabelled is not None:
        unlabelled = fit.pad(unlabelled, np.zeros((len(unlabelled), *unlabelled.shape[2:]), np.int64))[0]
    return GeneratorData(labelled=padded, unlabelled=unlabelled)


SampleFn = Callable[[int, int], Samples]


def sample_fn(sampler: ShapedSampler, masks: MaskSource | None, device) -> SampleFn:
    """``(n, seed) -> Samples``: the form the quality figures and pools draw through; a
    conditional family gets n masks from ``masks`` for each draw."""
    def draw(n: int, seed: int) -> Samples:
        return sampler.sample(n, seed=seed, device=device, masks=masks.take(n, seed) if masks else None)
    return draw


def train_generator(spec: GeneratorSpec, data: GeneratorData, context: TrainContext, out_dir: Path,
                    *, val: SliceSet | None = None) -> GeneratorArtifact | None:
    """Train ``spec``'s family on ``data`` (the cell's subset, plus unlabelled images if the
    family asks: rule 3) and write the artifact to ``out_dir`` on rank 0, which returns it;
    other ranks return None. ``val`` real validation slices only give the FCN score's
    reference segmenter its own Dice, for scale; nothing is selected on them."""
    family = spec.family
    config = family.config(spec.config)
    select, quality, mask_spec = build_select_spec(spec.select), build_quality_spec(spec.quality), \
        build_mask_spec(spec.masks)
    real = data.labelled
    check_data(real)
    if family.uses_unlabelled and (data.unlabelled is None or len(data.unlabelled) == 0):
        raise DataError(f"generator {spec.name} learns from unlabelled images, but the study has none "
                        "(dataset: add unlabelled subjects)")
    try:
        fit = ShapeFit(tuple(real.images.shape[2:]), tuple(family.fit_shape(*real.images.shape[2:])))
    except ValueError as err:
        raise DataError(f"generator {spec.name}: {err}") from None
    padded = _padded(real, data.unlabelled if family.uses_unlabelled else None, fit)
    encoding = JointEncoding(real.images.shape[1], real.num_classes, IntensityMap.fit(padded.labelled.images))
    device = context.device

    def sampler(weights: dict | None) -> ShapedSampler:
        return ShapedSampler(family.load(config, encoding, weights, seed=spec.seed, shape=fit.model,
                                         device=device), fit)

    masks = MaskSource(real.labels, mask_spec) if family.needs_masks else None
    reference = _ReferenceSegmenter(real, seed=spec.seed, steps=quality.reference_steps, device=device)
    scorer = _scorer(select.by, sampler, masks, real, reference, n=max(64, quality.samples // 2),
                     seed=spec.seed, device=device)
    session = GeneratorSession(context, seed=spec.seed, total_steps=config.steps,
                               checkpoint_every=config.checkpoint_every, select=select, scorer=scorer)
    final = family.train(config, padded, encoding, session)
    if context.world_rank != 0:
        return None
    weights, selection = session.selected(final)
    record = {"family": spec.name, "key": spec.key, "config": _jsonable(dataclasses.asdict(config)),
              "seed": spec.seed, "encoding": encoding.to_dict(), "shape": fit.to_dict(),
              "masks": dataclasses.asdict(mask_spec), "step": session.step, "selection": selection,
              "data": {"slices": len(real), "subjects": len(real.subjects),
                       "unlabelled_images": 0 if padded.unlabelled is None else len(padded.unlabelled)}}
    figures = _quality(sampler(weights), sampler(None), masks, real, val, reference, quality, spec.seed, device)
    figures["selection"] = selection

    def write(tmp: Path) -> None:
        save_tensors({k: v.detach().cpu() for k, v in weights.items()}, tmp / WEIGHTS_FILE)
        (tmp / SPEC_FILE).write_text(json.dumps(record, indent=2))
        (tmp / QUALITY_FILE).write_text(json.dumps(figures, indent=2, default=float))
        grid = sample_fn(sampler(weights), masks, device)(GRID_SAMPLES, spec.seed + 2)
        save_sample_grid(grid.images, grid.labels, tmp / SAMPLES_FILE, num_classes=real.num_classes)
        idx = np.random.default_rng(spec.seed).permutation(len(real))[:GRID_SAMPLES]
        save_sample_grid(real.images[idx], real.labels[idx], tmp / REAL_FILE, num_classes=real.num_classes,
                         title="real training slices")
        (tmp / SUBJECTS_FILE).write_text(json.dumps(sorted(real.subjects), indent=2))
        if masks is not None:  # what `synthmix sample` conditions on: the subset's own masks
            save_masks(real.labels, tmp / MASKS_FILE)

    write_artifact_folder(Path(out_dir), write)
    return GeneratorArtifact(out_dir)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=list))


class _ReferenceSegmenter:
    """The FCN score's reference segmenter, trained on the training subset the first time it
    is needed (rank 0), then reused for every snapshot and the final figures."""

    def __init__(self, real: SliceSet, *, seed: int, steps: int, device):
        self.real, self.seed, self.steps, self.device = real, seed, steps, device
        self._model = None

    def get(self):
        if self._model is None:
            from synthmix.trainers.quality import train_reference_segmenter

            self._model = train_reference_segmenter(self.real, seed=self.seed, steps=self.steps, device=self.device)
        return self._model


def _scorer(by: str, sampler, masks, real: SliceSet, reference: _ReferenceSegmenter, *, n: int,
            seed: int, device) -> Callable[[dict], float] | None:
    """Snapshot score from the training subset only (rule 3): SWD of n samples against it,
    or the reference segmenter's Dice on n samples."""
    from synthmix.trainers import quality as q

    if by == "swd":
        return lambda weights: q.swd_against(sample_fn(sampler(weights), masks, device)(n, seed + 3), real, seed=seed)
    if by == "fcn_score":
        return lambda weights: q.fcn_score(reference.get(), sample_fn(sampler(weights), masks, device)(n, seed + 3))[
            "dice_mean"]
    return None


def _quality(trained: ShapedSampler, untrained: ShapedSampler, masks, real: SliceSet, val: SliceSet | None,
             reference: _ReferenceSegmenter, quality: QualitySpec, seed: int, device) -> dict:
    """quality.json: the flat figures (trained; ``_untrained`` and ``_real`` for the references),
    which rows and the report read, plus the full report under ``report``."""
    from synthmix.trainers.quality import quality_report

    report = quality_report(sample_fn(trained, masks, device), real, seed=seed, n=quality.samples,
                            untrained=sample_fn(untrained, masks, device), val=val,
                            reference_segmenter=reference.get(), device=device)
    flat = {}
    for part, suffix in (("trained", ""), ("untrained", "_untrained"), ("real", "_real")):
        for key, value in (report.get(part) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{key}{suffix}"] = value
    return {**flat, "n_samples": quality.samples, "report": report}
