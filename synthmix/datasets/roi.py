"""Regions of interest fitted on training labels: ``preprocess.crop: {labels: true, margin_mm: m}``.

The box is the bounding box, in world (RAS, mm) coordinates, of the foreground voxels of every
training subject's label map, grown by ``margin_mm`` on each side. It is fitted per (fold,
repeat) on that split's training *pool* (every labelled subject that is neither validation nor
test): never on validation or test labels (rule 4), and the same box for every real fraction of
the fold, so cells compared with each other see the same region of the same test subjects.
World coordinates rather than voxels, so subjects of different shapes and affines get the same
anatomical region; each subject is then cut to the voxels that overlap the box
(``preprocess.crop_box_voxels``).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterable

import numpy as np

from synthmix.datasets.preprocess import PreprocessConfig, remap_labels
from synthmix.errors import DataError


def voxel_extent_mm(lo: np.ndarray, hi: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(3, 2) world box of the voxels lo..hi (inclusive): their outer faces, at index -+ 0.5."""
    corners = np.array(list(itertools.product(*zip(np.asarray(lo) - 0.5, np.asarray(hi) + 0.5))))
    world = (affine @ np.c_[corners, np.ones(len(corners))].T)[:3].T
    return np.stack([world.min(axis=0), world.max(axis=0)], axis=1)


_BOXES: dict[tuple, tuple | None] = {}


def label_box_mm(record: Any, config: PreprocessConfig) -> np.ndarray | None:
    """(3, 2) world box of a labelled subject's foreground, or None for an empty label map.
    Cached per file (path, size, mtime) and remap within the process."""
    from synthmix.datasets.nifti import read_label

    stat = record.label_path.stat()
    remap = tuple(sorted(config.remap.items())) if config.remap else None
    key = (str(record.label_path), stat.st_size, stat.st_mtime_ns, remap)
    if key not in _BOXES:
        label, affine = read_label(record)
        if remap:
            label = remap_labels(label, dict(remap), where=f"subject {record.subject_id} ({record.label_path})")
        idx = np.argwhere(label > 0)
        _BOXES[key] = tuple(map(tuple, voxel_extent_mm(idx.min(axis=0), idx.max(axis=0), affine))) \
            if len(idx) else None
    return None if _BOXES[key] is None else np.asarray(_BOXES[key])


def fit_crop_box(manifest: Any, subject_ids: Iterable[str], config: PreprocessConfig) -> list[list[float]]:
    """The union of these subjects' label boxes grown by the crop's margin, as [[lo, hi] x 3] mm."""
    ids = list(subject_ids)
    boxes = [b for b in (label_box_mm(manifest.subject(i), config) for i in ids) if b is not None]
    if not boxes:
        raise DataError(f"preprocess.crop: labels: the training subjects ({', '.join(ids[:5])}"
                        f"{', ...' if len(ids) > 5 else ''}) have no foreground label to fit a region of interest on")
    stacked = np.stack(boxes)
    margin = float(config.crop.get("margin_mm", 0))
    lo, hi = stacked[:, :, 0].min(axis=0) - margin, stacked[:, :, 1].max(axis=0) + margin
    return [[round(float(a), 4), round(float(b), 4)] for a, b in zip(lo, hi)]


def resolve_crop(manifest: Any, config: PreprocessConfig, training_ids: Iterable[str]) -> PreprocessConfig:
    """``config`` with a labels crop replaced by the ``box_mm`` fitted on ``training_ids``
    (unchanged when it has no labels crop)."""
    if not config.crop_needs_fitting:
        return config
    box = fit_crop_box(manifest, training_ids, config)
    return dataclasses.replace(config, crop={"box_mm": box})
