"""From the preprocessed cache to the SliceSets a trainer receives.

``prepare_split_data`` is what the orchestrator calls for a cell: it builds (or reuses) the
cache, fits the normaliser on the split's training subjects only (DESIGN rule 4), and returns
normalised train, validation and test SliceSets. Training slices get ``skip_empty`` and patch
tiling; validation and test keep every slice of every volume, so 3D metrics see whole volumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from synthmix.datasets.arrays import SliceSet
from synthmix.datasets.cache import CacheEntry, build_cache
from synthmix.datasets.preprocess import Normaliser, PreprocessConfig, tile_patches
from synthmix.datasets.splits import Split
from synthmix.errors import DataError


def _indices(entry: CacheEntry, subject_ids: Sequence[str], *, allow_unlabelled: bool) -> list[np.ndarray]:
    """Per subject, its slice rows in the cache (DataError naming an unknown or unlabelled id)."""
    out = []
    for sid in subject_ids:
        rows = entry.slice_indices(sid)
        if not allow_unlabelled and not entry.labelled[sid]:
            raise DataError(f"subject {sid!r} has no label; it cannot be used for segmentation training "
                            "or evaluation")
        out.append(rows)
    return out


def _check_config(entry: CacheEntry, preprocess: PreprocessConfig) -> None:
    if entry.slicing != preprocess.cache_fields():
        raise DataError(f"cache {entry.path} was built with {entry.slicing}, not with the requested "
                        f"preprocessing {preprocess.cache_fields()}")


def fit_normaliser(entry: CacheEntry, subject_ids: Sequence[str], preprocess: PreprocessConfig) -> Normaliser:
    """Normalisation statistics from these (training) subjects' volumes, one subject at a time."""
    rows = _indices(entry, subject_ids, allow_unlabelled=True)
    if not rows:
        raise DataError("normalisation: no training subject to fit on")
    return Normaliser.fit((entry.images[r[0]:r[-1] + 1] for r in rows), method=preprocess.normalise,
                          foreground_threshold=preprocess.foreground_threshold)


def load_slices(entry: CacheEntry, subject_ids: Sequence[str], *, normaliser: Normaliser | None,
                training: bool, preprocess: PreprocessConfig, allow_unlabelled: bool = False) -> SliceSet:
    """The slices of these subjects from the cache, normalised. With ``training``: empty slices
    dropped (if ``skip_empty``) and slices tiled into patches (if ``patch_size``); otherwise
    every slice, whole. ``normaliser=None`` leaves intensities raw."""
    _check_config(entry, preprocess)
    per_subject = _indices(entry, subject_ids, allow_unlabelled=allow_unlabelled)
    rows = np.concatenate(per_subject) if per_subject else np.zeros(0, dtype=np.int64)
    if training and preprocess.skip_empty:
        rows = rows[entry.nonempty[rows]]
    images = np.asarray(entry.images[rows])  # one gather from the memory map
    labels = np.asarray(entry.labels[rows], dtype=np.int64)
    ids = np.asarray([entry.subject_ids[i] for i in entry.subject_index[rows]], dtype=object).astype(str)
    positions = entry.position[rows].astype(np.int64)
    if training and preprocess.patch_size is not None and len(rows):
        images, labels, source = tile_patches(images, labels, preprocess.patch_size, preprocess.patch_stride)
        ids, positions = ids[source], positions[source]
    if normaliser is not None:
        images = normaliser.apply(images)
    return SliceSet(images=np.ascontiguousarray(images, dtype=np.float32), labels=labels, subject_ids=ids,
                    positions=positions, spacing={sid: entry.spacing[sid] for sid in subject_ids},
                    num_classes=entry.num_classes)


def prepare_split_data(manifest_path: str | Path | Any, split: Split, preprocess: PreprocessConfig,
                       cache_root: str | Path) -> tuple[SliceSet, SliceSet, SliceSet, Normaliser]:
    """(train, val, test, normaliser) for one split: the normaliser is fitted on ``split.train``
    only and applied to all three."""
    entry = build_cache(manifest_path, preprocess, cache_root)
    normaliser = fit_normaliser(entry, split.train, preprocess)
    train = load_slices(entry, split.train, normaliser=normaliser, training=True, preprocess=preprocess)
    if len(train) == 0:
        raise DataError(f"split ({split.name}): the training subjects {list(split.train)} have no "
                        "non-empty slice; set preprocess.skip_empty to false")
    val = load_slices(entry, split.val, normaliser=normaliser, training=False, preprocess=preprocess)
    test = load_slices(entry, split.test, normaliser=normaliser, training=False, preprocess=preprocess)
    return train, val, test, normaliser


def with_known_labels(slices: SliceSet, manifest_path: str | Path, preprocess: PreprocessConfig) -> tuple[SliceSet, tuple[str, ...]]:
    """Unlabelled subjects' slices with the label maps their manifest rows name anyway (a
    phantom written with ``truth``: ``labelled`` false, so nothing trains on them), decoded and
    sliced exactly as the cache slices a labelled subject. Returns the slices (labels filled in
    where known, zeros elsewhere) and the subjects whose labels are known. Only an evaluation
    reads them (``evaluate: {unlabelled: true}``)."""
    from dataclasses import replace

    from synthmix.datasets.cache import subject_slices
    from synthmix.datasets.manifest import read_manifest

    records = {r.subject_id: r for r in read_manifest(manifest_path).subjects}
    labels, known = slices.labels.copy(), []
    for sid in dict.fromkeys(slices.subject_ids.tolist()):
        record = records.get(sid)
        if record is None or record.labelled or record.label_path is None:
            continue
        truth = subject_slices(replace(record, labelled=True), preprocess)[1]
        rows = np.flatnonzero(slices.subject_ids == sid)
        rows = rows[np.argsort(slices.positions[rows], kind="stable")]
        if len(truth) != len(rows):
            raise DataError(f"subject {sid!r}: its label map gives {len(truth)} slices, its image {len(rows)}")
        labels[rows] = truth  # both in volume order: the cache keeps every slice of a subject
        known.append(sid)
    return replace(slices, labels=labels), tuple(known)
