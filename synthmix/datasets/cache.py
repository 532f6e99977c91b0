"""The preprocessed cache: every subject decoded once per (dataset, slicing config), then read
back as memory-mapped arrays by every trial.

A cache is a folder ``<cache_root>/<key>/`` holding

* ``images.npy`` (N, C, H, W) float32 raw (un-normalised) slices of every subject, in manifest
  order, slices in volume order; ``labels.npy`` (N, H, W) uint8 (zeros for unlabelled subjects);
* ``subject_index.npy``, ``position.npy`` (N,) int32 and ``nonempty.npy`` (N,) bool per slice;
* ``subjects.json``: ids, labelled flags, spacing in (slice, row, col) order (of the slices as
  stored: after the crop and any resampling), slice ranges, the slicing config and the
  manifest fingerprint;
* ``COMPLETE``: written last. A folder without it is never used.

The key is a content hash of the manifest's fingerprint and the config's slicing fields
(normalisation is not among them: it depends on each split's training subjects). Builders
write into a private temporary folder beside the final one and publish it with one
``os.rename``; when several processes build the same key at once, the first rename wins and the
others discard their copy, so readers only ever see one complete cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthmix.datasets.preprocess import (PreprocessConfig, crop_volume, nonempty_slices, pad_or_crop,
                                          remap_labels, resample_slices, slice_geometry, volume_to_slices)
from synthmix.errors import DataError

CACHE_FORMAT = 1
MARKER = "COMPLETE"
_COPY_CHUNK = 64 << 20  # bytes per copy when assembling the final .npy files


@dataclass(frozen=True)
class CacheEntry:
    """A finished cache, its arrays memory-mapped read-only."""

    path: Path
    key: str
    subject_ids: tuple[str, ...]
    labelled: dict[str, bool]
    spacing: dict[str, tuple[float, float, float]]
    slice_ranges: dict[str, tuple[int, int]]
    num_classes: int
    slicing: dict[str, Any]
    images: np.ndarray
    labels: np.ndarray
    subject_index: np.ndarray
    position: np.ndarray
    nonempty: np.ndarray

    def slice_indices(self, subject_id: str) -> np.ndarray:
        """Row indices of a subject's slices, in volume order; DataError if it is not cached."""
        if subject_id not in self.slice_ranges:
            raise DataError(f"subject {subject_id!r} is not in the dataset cached at {self.path} "
                            f"({len(self.subject_ids)} subjects, e.g. {', '.join(self.subject_ids[:3])})")
        start, stop = self.slice_ranges[subject_id]
        return np.arange(start, stop)


def _as_manifest(manifest: Any) -> Any:
    if isinstance(manifest, (str, Path)):
        from synthmix.datasets.manifest import read_manifest

        return read_manifest(manifest)
    return manifest


def cache_key(manifest: Any, config: PreprocessConfig) -> str:
    """Content hash of the dataset (manifest fingerprint) and the slicing config."""
    payload = {"format": CACHE_FORMAT, "manifest": _as_manifest(manifest).fingerprint(),
               "slicing": config.cache_fields()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def build_cache(manifest: Any, config: PreprocessConfig, cache_root: str | Path) -> CacheEntry:
    """The cache of this manifest (a Manifest or its path) and config under ``cache_root``,
    built first if no finished copy exists. Safe to call from many processes at once."""
    manifest = _as_manifest(manifest)
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(manifest, config)
    final = root / key
    if not (final / MARKER).is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
        try:
            _write_cache(manifest, config, key, tmp)
            _publish(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when our rename won
    return open_cache(final)


def _publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; if another builder got there first, keep theirs."""
    try:
        os.rename(tmp, final)
        return
    except OSError:
        if (final / MARKER).is_file():
            return  # another process won; the caller removes our copy
    # ``final`` exists without a marker: not ours to trust (a copy interrupted by hand, an old
    # format). Move it aside atomically (only one process succeeds) and publish ours.
    aside = final.with_name(f".{final.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(final, aside)
        shutil.rmtree(aside, ignore_errors=True)
    except FileNotFoundError:
        pass
    try:
        os.rename(tmp, final)
    except OSError as err:
        if not (final / MARKER).is_file():
            raise DataError(f"cache {final}: could not publish the preprocessed cache ({err})") from None


def open_cache(path: str | Path) -> CacheEntry:
    """Memory-map a finished cache folder; DataError if it is missing or unfinished."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise DataError(f"cache {path}: not a finished synthmix cache (no {MARKER} marker)")
    info = json.loads((path / "subjects.json").read_text())
    subjects = info["subjects"]
    ids = tuple(s["id"] for s in subjects)
    return CacheEntry(
        path=path, key=info["key"], subject_ids=ids,
        labelled={s["id"]: bool(s["labelled"]) for s in subjects},
        spacing={s["id"]: tuple(float(x) for x in s["spacing"]) for s in subjects},
        slice_ranges={s["id"]: (int(s["start"]), int(s["stop"])) for s in subjects},
        num_classes=int(info["num_classes"]), slicing=info["slicing"],
        images=np.load(path / "images.npy", mmap_mode="r"),
        labels=np.load(path / "labels.npy", mmap_mode="r"),
        subject_index=np.load(path / "subject_index.npy"),
        position=np.load(path / "position.npy"),
        nonempty=np.load(path / "nonempty.npy"),
    )


def subject_slices(record: Any, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Decode one subject and turn it into raw slices: (D, C, H, W) float32 images, (D, H, W)
    int64 labels (zeros if unlabelled) and the slices' spacing as (slice, row, col), after the
    crop and any resampling. What the cache stores per subject, and what a cache-less reader
    computes."""
    from synthmix.datasets.nifti import load_subject

    remap = config.remap_dict
    loaded = load_subject(record, num_classes=None if remap else config.num_classes)
    label = loaded.label
    if label is not None and remap:
        label = remap_labels(label, remap, where=f"subject {record.subject_id} ({record.label_path})")
    geometry = slice_geometry(loaded.image.shape[1:], loaded.affine, config, where=f"subject {record.subject_id}")
    image, label = crop_volume(np.asarray(loaded.image, dtype=np.float32), label, geometry.crop)
    images, labels = volume_to_slices(image, label, config.axis)
    if labels is None:
        labels = np.zeros((images.shape[0],) + images.shape[2:], dtype=np.int64)
    images, labels = resample_slices(images, labels, geometry.resampled)
    if config.pad_to is not None:
        # Pad with each channel's minimum: the background of MR (0) and of CT (air).
        fill = image.reshape(image.shape[0], -1).min(axis=1)
        images = pad_or_crop(images, config.pad_to, value=fill)
        labels = pad_or_crop(labels, config.pad_to, value=0)
    return np.ascontiguousarray(images), np.ascontiguousarray(labels), geometry.spacing


def _write_cache(manifest: Any, config: PreprocessConfig, key: str, out: Path) -> None:
    """Decode every subject into ``out`` (streaming: one subject in memory at a time)."""
    subjects, index, position, nonempty = [], [], [], []
    shape = None
    top = 0
    with open(out / "images.raw", "wb") as fimg, open(out / "labels.raw", "wb") as flab:
        for i, record in enumerate(manifest.subjects):
            images, labels, spacing = subject_slices(record, config)
            shape = _check_shape(shape, images, record)
            top = max(top, int(labels.max(initial=0)))
            _check_classes(labels, config, record)
            start = len(index)
            fimg.write(images.astype(np.float32, copy=False).tobytes())
            flab.write(labels.astype(np.uint8).tobytes())
            index += [i] * len(images)
            position += range(len(images))
            nonempty += nonempty_slices(labels).tolist() if record.labelled else [False] * len(images)
            subjects.append({"id": record.subject_id, "labelled": bool(record.labelled),
                             "spacing": list(spacing), "start": start, "stop": len(index)})
    if shape is None:
        raise DataError(f"{manifest.path}: the manifest lists no subject")
    n = len(index)
    _raw_to_npy(out / "images.raw", out / "images.npy", np.float32, (n, *shape))
    _raw_to_npy(out / "labels.raw", out / "labels.npy", np.uint8, (n, *shape[1:]))
    np.save(out / "subject_index.npy", np.asarray(index, dtype=np.int32))
    np.save(out / "position.npy", np.asarray(position, dtype=np.int32))
    np.save(out / "nonempty.npy", np.asarray(nonempty, dtype=bool))
    num_classes = config.output_classes or max(2, top + 1)
    info = {"key": key, "format": CACHE_FORMAT, "manifest": str(manifest.path),
            "manifest_fingerprint": manifest.fingerprint(), "slicing": config.cache_fields(),
            "num_classes": num_classes, "slice_shape": list(shape), "subjects": subjects}
    (out / "subjects.json").write_text(json.dumps(info, indent=1))
    (out / MARKER).write_text(key + "\n")


def _check_shape(shape: tuple | None, images: np.ndarray, record: Any) -> tuple:
    if shape is not None and images.shape[1:] != shape:
        raise DataError(f"subject {record.subject_id}: slices are {images.shape[1:]} (channels, rows, cols) "
                        f"but earlier subjects' are {shape}; set preprocess.pad_to or resize to a common "
                        "slice size")
    return images.shape[1:]


def _check_classes(labels: np.ndarray, config: PreprocessConfig, record: Any) -> None:
    limit = config.output_classes or 256  # uint8 storage
    top = int(labels.max(initial=0))
    if top >= limit:
        raise DataError(f"subject {record.subject_id} ({record.label_path}): label value {top} is not below "
                        f"{limit} classes; set preprocess.num_classes or preprocess.remap")


def _raw_to_npy(raw: Path, npy: Path, dtype: type, shape: tuple) -> None:
    """Prefix a raw array file with a .npy header (the shape is only known once every subject
    has been decoded)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    with open(npy, "wb") as dst, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(dst, header)
        shutil.copyfileobj(src, dst, _COPY_CHUNK)
    raw.unlink()
