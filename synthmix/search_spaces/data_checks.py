"""A study checked against its dataset before any training: what ``synthmix plan`` reports and
``synthmix run`` refuses before Ray starts, each problem naming the study field to change.

``check_study_data(study, manifest, splits)`` works from the manifest and the NIfTI headers
(shape and affine; no voxel is read), except for a ``crop: {labels: true}`` region of interest,
whose box it fits on each split's training pool (``datasets.roi``), reading those label maps.
It returns the ``DataPlan``: the preprocessing each (fold, repeat) runs with (the fitted box
filled in) and the slice shapes training and evaluation will see. It checks:

- every subject's region of interest lies in its volume;
- the slices of every subject come out the same size (else ``pad_to`` or ``resize``);
- the patches fit in the slices;
- the generator family can learn slices of the training shape (patches when ``patch_size`` is
  set): its ``fit_shape`` accepts them;
- an additive pool holds the synthetic samples each cell draws (the level times its real
  training slices or patches; counted exactly unless ``skip_empty`` drops slices).
"""

from __future__ import annotations

import math

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from synthmix.errors import DataError, StudyError

_MAX_LISTED = 4  # subjects named per problem
POOL_SIZE = 512  # generator.pool.size when not given (the schema's default)


@dataclass(frozen=True)
class DataPlan:
    """preprocess: (fold, repeat) -> the preprocess dict its cells run with (the study's, with a
    labels crop replaced by the box fitted on that split's pool). slice_size: the whole slices'
    (H, W) (validation and test); train_size: what training batches hold (the patch size, else
    slice_size); plane_spacing: the smallest and largest in-plane spacing (mm) of the
    preprocessed slices over all subjects, the spacing metrics are computed with."""

    preprocess: dict
    slice_size: tuple[int, int] | None = None
    train_size: tuple[int, int] | None = None
    plane_spacing: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        crops = [{"fold": f, "repeat": r, "crop": p.get("crop")} for (f, r), p in sorted(self.preprocess.items())]
        fitted = any((c["crop"] or {}).get("box_mm") for c in crops)
        return {"slice_size": list(self.slice_size) if self.slice_size else None,
                "train_size": list(self.train_size) if self.train_size else None,
                "plane_spacing_mm": list(self.plane_spacing) if self.plane_spacing else None,
                "fitted_crops": crops if fitted else None}

    def render(self) -> str:
        if self.slice_size is None:
            return ""
        h, w = self.slice_size
        text = f"slices: {h}x{w} whole slices for validation and test"
        if self.train_size != self.slice_size:
            text += f", training on {self.train_size[0]}x{self.train_size[1]} patches"
        if self.plane_spacing:
            lo, hi = self.plane_spacing
            text += f"; in-plane spacing {lo:.3g} mm" if lo == hi else f"; in-plane spacing {lo:.3g}-{hi:.3g} mm"
        return text


def _listed(ids: list[str]) -> str:
    more = f" and {len(ids) - _MAX_LISTED} more" if len(ids) > _MAX_LISTED else ""
    return ", ".join(ids[:_MAX_LISTED]) + more


def _headers(manifest: Any, problems: list[str]) -> dict[str, tuple]:
    """subject -> (shape, affine) of its first image after reorientation, from the header."""
    from synthmix.datasets.nifti import header_geometry

    out = {}
    for record in manifest.subjects:
        try:
            out[record.subject_id] = header_geometry(record.image_paths[0])
        except Exception as err:  # any unreadable header is that file's problem
            problems.append(f"dataset.manifest: subject {record.subject_id}: cannot read the header of "
                            f"{record.image_paths[0]}: {' '.join(str(err).split())}")
    return out


def _resolved(manifest: Any, splits: Any, base: Any, problems: list[str]) -> dict:
    """(fold, repeat) -> PreprocessConfig with any labels crop fitted on that split's pool."""
    from synthmix.datasets.roi import resolve_crop

    out = {}
    for s in splits.splits:
        if (s.fold, s.repeat) in out:
            continue
        try:
            out[(s.fold, s.repeat)] = resolve_crop(manifest, base, s.pool)
        except DataError as err:
            problems.append(f"dataset.preprocess.crop: fold {s.fold}, repeat {s.repeat}: {err}")
            return {}
    return out


def _sizes(config: Any, headers: dict, problems: list[str], where: str) -> tuple[dict, dict, dict]:
    """subject -> final (H, W), spacing and number of its slices under ``config``."""
    from synthmix.datasets.preprocess import slice_geometry

    sizes, spacing, depth, outside = {}, {}, {}, []
    for sid, (shape, affine) in headers.items():
        try:
            g = slice_geometry(shape, affine, config, where=f"subject {sid}")
        except DataError as err:
            outside.append(str(err))
            continue
        sizes[sid], spacing[sid], depth[sid] = g.size, g.spacing, g.slices
    if outside:
        key = "box" if "box" in (config.crop or {}) else ""
        problems.append(f"dataset.preprocess.crop{'.' + key if key else ''}{where}: {outside[0]}"
                        + (f" (and {len(outside) - 1} more subjects)" if len(outside) > 1 else ""))
    return sizes, spacing, depth


def _common_size(sizes: dict, problems: list[str], where: str) -> tuple[int, int] | None:
    by_size = defaultdict(list)
    for sid, size in sizes.items():
        by_size[tuple(size)].append(sid)
    if len(by_size) > 1:
        listing = "; ".join(f"{h}x{w} ({_listed(ids)})" for (h, w), ids in sorted(by_size.items()))
        problems.append(f"dataset.preprocess{where}: the subjects' slices come out in different sizes: {listing}; "
                        "set dataset.preprocess.resize: [H, W] (resample to one size) or pad_to: [H, W] "
                        "(pad or crop to one size)")
        return None
    return next(iter(by_size)) if by_size else None


def generator_size_problems(name: str, size: tuple[int, int], patches: bool) -> list[str]:
    """What the generator family ``name`` cannot learn about slices of ``size``: its own
    ``fit_shape`` says (the platform pads smaller slices to the size it returns)."""
    from synthmix.trainers.generators import GENERATORS

    try:
        GENERATORS.get(name).fit_shape(*size)
    except ValueError as err:
        what = "patches (dataset.preprocess.patch_size)" if patches else "slices"
        return [f"generator: {name} cannot learn the training {what} of {size[0]}x{size[1]}: {err}"]
    return []


def _generator_problems(study: Any, train_size: tuple[int, int], patches: bool) -> list[str]:
    if not study.generator_sections() or not any(study.uses_synthetic(v) for v in study.factors.get("synthetic", ())):
        return []
    problems = []
    for name in dict.fromkeys(n for g in study.generator_sections().values() for n in g.configs):
        problems += generator_size_problems(name, train_size, patches)
    return problems


def _training_samples(config: Any, size: tuple[int, int], depth: dict, subjects: Any) -> int:
    """Training slices (or patches) of these subjects, before any skip_empty."""
    from synthmix.datasets.preprocess import patch_origins

    per_slice = 1
    if config.patch_size:
        per_slice = len(patch_origins(size[0], config.patch_size[0], config.patch_stride[0])) * \
            len(patch_origins(size[1], config.patch_size[1], config.patch_stride[1]))
    return sum(depth[s] for s in subjects) * per_slice


def _pool_problems(study: Any, splits: list, config: Any, size: tuple[int, int], depth: dict) -> list[str]:
    """Additive levels drawing more distinct synthetic samples than the fixed pool holds."""
    from synthmix.datasets.mixing import MIXING_POLICIES
    if study.mixing.policy != "additive" or study.mixing.source != "pool" or not study.generator_sections():
        return []
    from synthmix.search_spaces.expand import grid

    if config.skip_empty:  # the count needs the labels; the run checks it
        return []
    policy, real_factor = MIXING_POLICIES.get("additive"), study.real_factor
    # Per real amount, the largest level any cell of the grid (exclusions removed) uses with it.
    tops: dict = {}
    for combo in grid(study):
        tops[combo[real_factor]] = max(tops.get(combo[real_factor], 0.0), policy.amount(combo["synthetic"])[0])
    draws = []  # (top level, real samples, training subjects) per split that draws synthetic data
    for s in splits:
        top = tops.get(s.amount, 0.0)
        if top > 0:
            draws.append((top, _training_samples(config, size, depth, s.train), len(s.train)))
    problems = []
    for level, section in study.generator_sections().items():
        block, worst = section.block_size, None
        for top, real, subjects in draws:
            # With generator blocks the cell draws an equal share of each block's pool
            # (mixing.pool_blocks): each pool needs its share (blocks counted in subjects).
            blocks = math.ceil(subjects / block) if block else 1
            need = math.ceil(round(top * real) / blocks)
            if worst is None or need > worst[0]:
                worst = (need, top, real)
        pool = section.pool.get("size", POOL_SIZE)
        if worst is not None and isinstance(pool, int) and pool < worst[0]:
            need, top, real = worst
            what = "patches" if config.patch_size else "slices"
            path = "generator" if level is None else f"factors.generator.{level}"
            per = " per generator block" if block else ""
            problems.append(f"{path}.pool.size: {pool} is too small: the additive level {top:g} of a training "
                            f"subset of {real} real {what} draws {need} distinct synthetic samples{per}; set it "
                            f"to at least {need}")
    return problems


def _check_config(study: Any, config: Any, splits: list, headers: dict, where: str,
                  problems: list[str]) -> tuple[tuple[int, int], list[float]] | None:
    """Problems of one resolved preprocessing (used by ``splits``); its slice size and the
    in-plane spacings it gives, or None when the slices cannot be made."""
    sizes, spacing, depth = _sizes(config, headers, problems, where)
    size = _common_size(sizes, problems, where)
    if size is None or len(sizes) < len(headers):  # some subject's slices cannot be made
        return None
    if config.patch_size and any(p > s for p, s in zip(config.patch_size, size)):
        problems.append(f"dataset.preprocess.patch_size{where}: {list(config.patch_size)} is larger than the "
                        f"slices, {size[0]}x{size[1]} after preprocessing; lower patch_size or set resize or pad_to")
        return None
    train = tuple(config.patch_size) if config.patch_size else size
    problems += _generator_problems(study, train, bool(config.patch_size))
    problems += _pool_problems(study, splits, config, size, depth)
    return size, [s for sp in spacing.values() for s in sp[1:]]


def check_study_data(study: Any, manifest: Any, splits: Any) -> DataPlan:
    """The DataPlan of this study on this dataset, or a StudyError listing every problem."""
    from synthmix.datasets.preprocess import build_preprocess_config

    raw = dict(study.dataset.preprocess)
    base = build_preprocess_config(raw)
    problems: list[str] = []
    headers = _headers(manifest, problems)
    resolved = _resolved(manifest, splits, base, problems)
    users: dict[str, list] = defaultdict(list)  # distinct slicing -> the splits that use it
    for s in splits.splits:
        if (s.fold, s.repeat) in resolved:
            users[repr(resolved[(s.fold, s.repeat)].cache_fields())].append(s)
    size, spacings = None, []
    for group in users.values():
        config = resolved[(group[0].fold, group[0].repeat)]
        where = f" (fold {group[0].fold}, repeat {group[0].repeat})" if len(users) > 1 else ""
        checked = _check_config(study, config, group, headers, where, problems)
        if checked is not None:
            size, spacings = checked[0], spacings + checked[1]
    problems = list(dict.fromkeys(problems))
    if problems:
        raise StudyError(problems, study.source)
    preprocess = {k: ({**raw, "crop": c.crop} if base.crop_needs_fitting else raw) for k, c in resolved.items()}
    return DataPlan(preprocess=preprocess, slice_size=size,
                    train_size=tuple(base.patch_size) if base.patch_size else size,
                    plane_spacing=(round(min(spacings), 4), round(max(spacings), 4)) if spacings else None)
