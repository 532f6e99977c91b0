"""Loading one subject's NIfTI files into arrays, and checking a whole dataset before training.

``load_subject`` reads every modality and the label map with nibabel, reorients each to the
closest canonical (RAS+) orientation (``nibabel.as_closest_canonical``), stacks modalities as
channels and checks everything a training run would otherwise trip over later: unreadable or
truncated files, shape mismatches, disagreeing affines, NaN/inf intensities, non-integer or
out-of-range labels, 4D label maps. Each problem names the subject and the file.

A 4D image file is read as one channel per volume (several modalities in one file); a 5D file
of shape (X, Y, Z, 1, C), the NIfTI layout for vectors, is read the same way. A 2D image is
read as a single slice. A label map must be 3D (a trailing axis of length 1 is dropped).

Two files are considered aligned when, after reorientation, the voxel grids their affines
describe are nowhere more than ``ALIGN_TOLERANCE`` of a voxel apart (checked at the corners of
the volume, where a small rotation or scaling difference is largest).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from synthmix.datasets.manifest import Manifest, SubjectRecord, scan_manifest
from synthmix.errors import DataError

ALIGN_TOLERANCE = 0.1  # of the smallest voxel size


@dataclass(frozen=True, eq=False)
class LoadedSubject:
    """One subject's arrays in canonical RAS+ orientation."""

    subject_id: str
    image: np.ndarray  # (C, X, Y, Z) float32, modalities as channels
    label: np.ndarray | None  # (X, Y, Z) int64, None for an unlabelled subject
    spacing: tuple[float, float, float]  # mm along X, Y, Z after reorientation
    affine: np.ndarray  # 4x4 voxel -> world (mm), after reorientation


class _Problems(Exception):
    """Internal: loading stopped at a problem that makes the rest meaningless."""


def load_subject(record: SubjectRecord, *, num_classes: int | None = None) -> LoadedSubject:
    """Load and check one subject; raises a DataError listing every problem found.

    The label map is read only for a labelled subject. With ``num_classes``, label values
    must lie in [0, num_classes).
    """
    subject, problems = try_load_subject(record, num_classes=num_classes)
    if problems:
        raise DataError("\n".join(problems))
    assert subject is not None
    return subject


def validate_dataset(manifest: Manifest | str | Path, *, num_classes: int | None = None,
                     on_subject: Callable[[LoadedSubject], None] | None = None) -> list[str]:
    """Every problem in a dataset (manifest rows and each subject's files), one string each,
    naming subject and file. Never raises for a bad subject; an unreadable manifest still
    raises a DataError. ``on_subject`` is called with each subject that loads cleanly, so a
    caller (``inspect``) can summarise the data without reading it twice."""
    problems: list[str] = []
    scanned = not isinstance(manifest, Manifest)
    if scanned:
        manifest, problems = scan_manifest(manifest)
    channels: dict[int, str] = {}
    for record in manifest.subjects:
        if scanned and not _files_exist(record):
            continue  # the manifest scan has reported the missing file
        subject, subject_problems = try_load_subject(record, num_classes=num_classes)
        problems.extend(subject_problems)
        if subject is not None:
            if on_subject is not None:
                on_subject(subject)
            channels.setdefault(subject.image.shape[0], record.subject_id)
    if len(channels) > 1:
        listing = ", ".join(f"{n} (e.g. subject {sid!r})" for n, sid in sorted(channels.items()))
        problems.append(f"{manifest.path}: subjects have different numbers of image channels: {listing}")
    return problems


def check_dataset(manifest: Manifest | str | Path, *, num_classes: int | None = None) -> None:
    """Raise one DataError listing every problem of the dataset (run before any training)."""
    source = manifest.path if isinstance(manifest, Manifest) else manifest
    problems = validate_dataset(manifest, num_classes=num_classes)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{source}: {len(problems)} problem(s) in the dataset\n{listing}")


def _files_exist(record: SubjectRecord) -> bool:
    paths = list(record.image_paths) + ([record.label_path] if record.labelled and record.label_path else [])
    return all(p.is_file() for p in paths)


def try_load_subject(record: SubjectRecord, *, num_classes: int | None = None
                     ) -> tuple[LoadedSubject | None, list[str]]:
    """Load a subject, collecting every problem instead of raising: (subject, []) when it is
    clean, (None, problems) otherwise."""
    sid = record.subject_id
    problems: list[str] = []
    try:
        if not record.image_paths:
            raise _Problems(f"subject {sid!r}: no image file")
        image, affine = _load_image(sid, record.image_paths, problems)
        label = None
        if record.labelled:
            if record.label_path is None:
                raise _Problems(f"subject {sid!r}: labelled but has no label file")
            label = _load_label(sid, record.label_path, image.shape[1:], affine, record.image_paths[0],
                                num_classes, problems)
    except _Problems as stop:
        return None, problems + [str(stop)]
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    subject = LoadedSubject(sid, image, label, spacing, affine)
    return (None if problems else subject), problems


def header_geometry(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """(X, Y, Z) shape and affine a file has after ``as_closest_canonical``, from its header
    alone (no voxel is read): nibabel's own reorientation arithmetic applied to the shape."""
    img = nib.load(str(path))
    shape = tuple(int(n) for n in img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))
    ornt = nib.orientations.io_orientation(img.affine)
    canonical = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        canonical[int(target)] = shape[axis]
    return tuple(canonical), img.affine @ nib.orientations.inv_ornt_aff(ornt, shape)


def read_label(record: SubjectRecord) -> tuple[np.ndarray, np.ndarray]:
    """A labelled subject's label map and affine alone, reoriented like ``load_subject`` does
    (for fitting a region of interest without decoding its images); DataError naming the file."""
    try:
        data, affine = _read(record.subject_id, record.label_path, "label")
    except _Problems as stop:
        raise DataError(str(stop)) from None
    return np.asarray(data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data), affine


def _read(sid: str, path: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of one file in canonical orientation; data as stored (scaling applied)."""
    if not path.is_file():
        raise _Problems(f"subject {sid!r}: {kind} file not found: {path}")
    try:
        img = nib.load(str(path))
        if len(img.shape) == 2:  # a single slice: give it a third axis before reorienting
            img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine)
        img = nib.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # any failure to decode a user's file is that file's problem
        reason = " ".join(str(err).split()) or type(err).__name__
        raise _Problems(f"subject {sid!r}: cannot read {kind} file {path}: {reason}") from None
    return data, img.affine


def _load_image(sid: str, paths: tuple[Path, ...], problems: list[str]) -> tuple[np.ndarray, np.ndarray]:
    channels, ref_path, ref_affine = [], None, None
    for path in paths:
        data, affine = _read(sid, path, "image")
        volume = _as_channels(sid, path, data)
        if ref_path is None:
            ref_path, ref_affine = path, affine
        elif volume.shape[1:] != channels[0].shape[1:]:
            raise _Problems(f"subject {sid!r}: modalities have different shapes: {path} is "
                            f"{_shape(volume.shape[1:])}, {ref_path} is {_shape(channels[0].shape[1:])}")
        else:
            _check_aligned(sid, path, affine, ref_path, ref_affine, volume.shape[1:], problems)
        bad = ~np.isfinite(volume)
        if bad.any():
            problems.append(f"subject {sid!r}: image file {path} has {int(bad.sum())} NaN or infinite "
                            f"voxel(s)")
        channels.append(volume)
    return np.concatenate(channels, axis=0), ref_affine


def _as_channels(sid: str, path: Path, data: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) float32 from a 3D, 4D (X, Y, Z, C) or 5D (X, Y, Z, 1, C) array."""
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    else:
        raise _Problems(f"subject {sid!r}: image file {path} has shape {data.shape}; expected 3D, or 4D "
                        f"with one volume per modality")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise _Problems(f"subject {sid!r}: image file {path} holds {data.dtype} data, not numbers")
    return np.ascontiguousarray(data, dtype=np.float32)


def _load_label(sid: str, path: Path, shape: tuple[int, ...], affine: np.ndarray, image_path: Path,
                num_classes: int | None, problems: list[str]) -> np.ndarray:
    data, label_affine = _read(sid, path, "label")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise _Problems(f"subject {sid!r}: label file {path} is {data.ndim}D (shape {data.shape}); a label "
                        f"map must be 3D")
    if data.shape != tuple(shape):
        raise _Problems(f"subject {sid!r}: label file {path} has shape {_shape(data.shape)} but image "
                        f"{image_path} has shape {_shape(shape)}")
    _check_aligned(sid, path, label_affine, image_path, affine, shape, problems)
    label = _integer_labels(sid, path, data, problems)
    if label is not None:
        _check_range(sid, path, label, num_classes, problems)
    return label


def _integer_labels(sid: str, path: Path, data: np.ndarray, problems: list[str]) -> np.ndarray | None:
    if np.issubdtype(data.dtype, np.integer) or data.dtype == bool:
        return data.astype(np.int64)
    if not np.issubdtype(data.dtype, np.floating):
        problems.append(f"subject {sid!r}: label file {path} holds {data.dtype} data, not integers")
        return None
    bad = ~np.isfinite(data) | (data != np.round(data))
    if bad.any():
        examples = ", ".join(f"{v:g}" for v in np.unique(data[bad])[:3])
        problems.append(f"subject {sid!r}: label file {path} has {int(bad.sum())} non-integer value(s) "
                        f"(e.g. {examples}); labels must be whole class numbers")
        return None
    return data.astype(np.int64)


def _check_range(sid: str, path: Path, label: np.ndarray, num_classes: int | None,
                 problems: list[str]) -> None:
    values = np.unique(label)
    outside = values[(values < 0) | (values >= num_classes)] if num_classes else values[values < 0]
    if len(outside):
        allowed = f"0..{num_classes - 1} ({num_classes} classes declared)" if num_classes else "0 or more"
        shown = ", ".join(str(v) for v in outside[:10])
        problems.append(f"subject {sid!r}: label file {path} has values {shown} outside {allowed}")


def _check_aligned(sid: str, path: Path, affine: np.ndarray, ref_path: Path, ref_affine: np.ndarray,
                   shape: tuple[int, ...], problems: list[str]) -> None:
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape[:3]])), dtype=float)
    homogeneous = np.c_[corners, np.ones(len(corners))]
    gap = np.linalg.norm((homogeneous @ affine.T - homogeneous @ ref_affine.T)[:, :3], axis=1).max()
    voxel = np.sqrt((ref_affine[:3, :3] ** 2).sum(axis=0)).min()
    if not gap <= ALIGN_TOLERANCE * voxel:
        problems.append(f"subject {sid!r}: affine of {path} disagrees with {ref_path}: the voxel grids are "
                        f"up to {gap:.3g} mm apart (tolerance {ALIGN_TOLERANCE * voxel:.3g} mm)")


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)

