"""Preprocessing of 3D subjects into 2D training slices, and intensity normalisation.

Each step is a pure function on arrays, so it works on any user's NIfTI folder and is testable
without files: ``remap_labels``, ``crop_volume``, ``volume_to_slices``, ``resample_slices``,
``pad_or_crop``, ``nonempty_slices``, ``tile_patches``. ``PreprocessConfig`` says which steps
run. The slicing steps happen once when the cache is built, in this order: class remap, region
of interest (``crop``, in the reoriented volume's voxels), slicing along ``axis``, in-plane
``resize`` or ``spacing`` (images bilinear with anti-aliasing, labels nearest-neighbour:
torch's ``interpolate``), ``pad_to``. ``skip_empty`` and patches happen when training slices are
loaded, and never for evaluation volumes. ``slice_geometry`` computes what these steps make of a
subject from its shape and affine alone, so ``synthmix plan`` can check a study against the
NIfTI headers without reading any voxel.

``Normaliser`` holds intensity statistics fitted on training subjects only (DESIGN rule 4):

* ``zscore``: per channel, mean and standard deviation over *foreground* voxels, where a voxel
  is foreground when any channel exceeds ``foreground_threshold`` (default 0: the non-zero
  brain mask of skull-stripped MR, the convention of BraTS and nnU-Net; set e.g. -500 for CT,
  or None for every voxel). We do not use label > 0 as foreground: label 0 also covers healthy
  tissue in lesion datasets, and unlabelled subjects have no label at all.
* ``minmax``: per channel, the 0.5th and 99.5th percentiles of all voxels map to -1 and 1,
  values beyond are clipped (the tanh range GAN generators produce).
* ``none``: identity.
Moments are merged per chunk with Chan et al.'s parallel update (written out: numpy has no
streaming variance) so fitting streams over memory-mapped caches of any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterable, Mapping

import numpy as np

from synthmix.errors import DataError, StudyError

NORMALISE_METHODS = ("zscore", "minmax", "none")
MINMAX_PERCENTILES = (0.5, 99.5)
_PERCENTILE_SAMPLES_PER_CHUNK = 200_000  # voxels per channel kept from each chunk for percentiles


def _pair(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value), int(value))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return tuple(value)  # type: ignore[return-value]  # element types checked in validation
    return value  # type: ignore[return-value]  # reported as a problem by validation


def _is_pos_pair(value: object) -> bool:
    return (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value))


def _is_pos_numbers(value: object) -> bool:
    return (isinstance(value, tuple) and len(value) == 2 and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in value))


CROP_KEYS = ("box", "box_mm", "labels", "margin_mm")


def _crop_problems(crop: object) -> list[str]:
    """``crop`` is {box: [[x0, x1], [y0, y1], [z0, z1]]} (voxels of the reoriented volume,
    half-open), {box_mm: [[lo, hi] x 3]} (world RAS mm) or {labels: true, margin_mm: m}."""
    if crop is None:
        return []
    if not isinstance(crop, Mapping):
        return [f"crop: must be a mapping such as {{box: [[x0, x1], [y0, y1], [z0, z1]]}} or "
                f"{{labels: true, margin_mm: 10}}, got {crop!r}"]
    p = [f"crop.{k}: unknown crop option (known: {', '.join(CROP_KEYS)})" for k in crop if k not in CROP_KEYS]
    kinds = [k for k in ("box", "box_mm", "labels") if k in crop]
    if len(kinds) != 1:
        return p + ["crop: give exactly one of box (voxels), box_mm (world mm) or labels: true"]
    if "margin_mm" in crop and kinds != ["labels"]:
        p.append("crop.margin_mm: only with labels: true")
    if "labels" in crop:
        if crop["labels"] is not True:
            p.append(f"crop.labels: must be true (the bounding box of the training labels), got {crop['labels']!r}")
        margin = crop.get("margin_mm", 0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) \
                or margin < 0:
            p.append(f"crop.margin_mm: must be a number >= 0, got {margin!r}")
        return p
    box, integer = crop[kinds[0]], kinds[0] == "box"
    number = (int, np.integer) if integer else (int, float, np.number)
    ok = isinstance(box, (list, tuple)) and len(box) == 3 and all(
        isinstance(b, (list, tuple)) and len(b) == 2 and all(
            isinstance(v, number) and not isinstance(v, bool) and math.isfinite(v) for v in b)
        and b[0] < b[1] and (not integer or b[0] >= 0) for b in box)
    if not ok:
        what = "voxel indices 0 <= start < stop" if integer else "numbers lo < hi in mm"
        p.append(f"crop.{kinds[0]}: must be three [start, stop] pairs (x, y, z; {what}), got {box!r}")
    return p


@dataclass(frozen=True)
class PreprocessConfig:
    """How subjects become slices.

    Attributes:
        axis: volume axis (0, 1, 2 of the RAS-canonical volume) to slice along; 2 is axial.
        pad_to: slice size (H, W) (an int means square); each slice is centre-padded with the
            volume's per-channel minimum (labels with 0) or centre-cropped to it. None keeps the
            size, which must then be the same for every subject.
        skip_empty: drop training slices whose label is all background.
        patch_size: tile training slices into patches of this (H, W) size.
        patch_stride: step between patches (default: patch_size, i.e. no overlap); the last
            patch of each row/column is aligned to the border so the whole slice is covered.
        resize: in-plane slice size (H, W) to resample every slice to (an int means square).
        spacing: in-plane target voxel spacing (mm along rows, cols) to resample to; the size
            then follows each subject's spacing (so set pad_to when subjects differ). Not with
            resize. The spacing metrics use is the one the slices have after these steps.
        crop: region of interest, cut from the reoriented volume before slicing:
            ``{box: [[x0, x1], [y0, y1], [z0, z1]]}`` (voxels, half-open),
            ``{box_mm: [[lo, hi], ...]}`` (world RAS coordinates, mm), or
            ``{labels: true, margin_mm: 10}``: the bounding box of the labels of each split's
            training pool plus a margin, resolved into a ``box_mm`` by
            ``roi.resolve_crop`` (rule 4: never from validation or test labels).
        normalise: "zscore", "minmax" or "none" (see the module docstring).
        foreground_threshold: zscore foreground is "any channel > this"; None: every voxel.
        remap: old class -> new class, e.g. {0: 0, 1: 1, 2: 1, 3: 1} for 4 -> 2 classes; a label
            value not listed is an error. Stored as a dict sorted by old class (treat it as
            read-only; a config holding a remap is not hashable).
        num_classes: classes after remapping, background included; None: max(remap) + 1, or
            the largest label found in the dataset + 1.
    """

    axis: int = 2
    pad_to: tuple[int, int] | None = None
    skip_empty: bool = False
    patch_size: tuple[int, int] | None = None
    patch_stride: tuple[int, int] | None = None
    resize: tuple[int, int] | None = None
    spacing: tuple[float, float] | None = None
    crop: dict | None = None
    normalise: str = "zscore"
    foreground_threshold: float | None = 0.0
    remap: dict[int, int] | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("pad_to", _pair(self.pad_to))
        set_("patch_size", _pair(self.patch_size))
        set_("patch_stride", _pair(self.patch_stride) if self.patch_stride is not None else self.patch_size)
        set_("resize", _pair(self.resize))
        if isinstance(self.spacing, (int, float)) and not isinstance(self.spacing, bool):
            set_("spacing", (float(self.spacing), float(self.spacing)))
        elif isinstance(self.spacing, (list, tuple)):
            set_("spacing", tuple(self.spacing))
        if isinstance(self.crop, Mapping):
            set_("crop", _plain(dict(self.crop)))
        if isinstance(self.remap, Mapping):
            pairs = tuple((_as_int(k), _as_int(v)) for k, v in self.remap.items())
        elif isinstance(self.remap, (list, tuple)):
            pairs = tuple(tuple(p) if isinstance(p, (list, tuple)) else (p,) for p in self.remap)  # [[old, new]...]
        elif self.remap is not None:
            pairs = ((self.remap,),)  # reported as a problem
        problems = self._problems(pairs if self.remap is not None else None)
        if problems:
            raise StudyError(problems, source="preprocess")
        if self.remap is not None:
            set_("remap", dict(sorted(pairs)))

    def _problems(self, remap: tuple | None) -> list[str]:
        p = []
        if self.axis not in (0, 1, 2) or isinstance(self.axis, bool):
            p.append(f"axis: must be 0, 1 or 2, got {self.axis!r}")
        if self.pad_to is not None and not _is_pos_pair(self.pad_to):
            p.append(f"pad_to: must be a positive int or [H, W], got {self.pad_to!r}")
        if not isinstance(self.skip_empty, bool):
            p.append(f"skip_empty: must be true or false, got {self.skip_empty!r}")
        if self.patch_size is not None and not _is_pos_pair(self.patch_size):
            p.append(f"patch_size: must be a positive int or [H, W], got {self.patch_size!r}")
        if self.patch_stride is not None and not _is_pos_pair(self.patch_stride):
            p.append(f"patch_stride: must be a positive int or [H, W], got {self.patch_stride!r}")
        if self.patch_stride is not None and self.patch_size is None:
            p.append("patch_stride: needs patch_size")
        if self.resize is not None and not _is_pos_pair(self.resize):
            p.append(f"resize: must be a positive int or [H, W], got {self.resize!r}")
        if self.spacing is not None and not _is_pos_numbers(self.spacing):
            p.append(f"spacing: must be a positive number or [row mm, col mm], got {self.spacing!r}")
        if self.resize is not None and self.spacing is not None:
            p.append("spacing: give resize (a size) or spacing (mm), not both")
        p += _crop_problems(self.crop)
        final = self.pad_to if _is_pos_pair(self.pad_to) else self.resize if _is_pos_pair(self.resize) else None
        if final is not None and _is_pos_pair(self.patch_size) and any(
                s > t for s, t in zip(self.patch_size, final)):
            name = "pad_to" if final == self.pad_to else "resize"
            p.append(f"patch_size: {list(self.patch_size)} is larger than {name} {list(final)} (the slice "
                     f"size); lower patch_size or raise {name}")
        if self.normalise not in NORMALISE_METHODS:
            p.append(f"normalise: must be one of {', '.join(NORMALISE_METHODS)}, got {self.normalise!r}")
        if self.foreground_threshold is not None and (
                isinstance(self.foreground_threshold, bool)
                or not isinstance(self.foreground_threshold, (int, float))
                or not math.isfinite(self.foreground_threshold)):
            p.append(f"foreground_threshold: must be a number or null, got {self.foreground_threshold!r}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(
                self.num_classes, (int, np.integer)) or not 2 <= self.num_classes <= 256):
            p.append(f"num_classes: must be an integer in [2, 256], got {self.num_classes!r}")
        p += self._remap_problems(remap)
        return p

    def _remap_problems(self, pairs: tuple | None) -> list[str]:
        if pairs is None:
            return []
        if not all(len(p) == 2 for p in pairs) or not all(
                isinstance(a, int) and isinstance(b, int) and a >= 0 and b >= 0 for a, b in pairs):
            return [f"remap: must map non-negative integer classes old: new, got {self.remap!r}"]
        if not pairs:
            return ["remap: is empty; list every label value as old: new"]
        if len({a for a, _ in pairs}) != len(pairs):
            return [f"remap: a class is mapped twice: {list(pairs)}"]
        top = max(b for _, b in pairs)
        if self.num_classes is not None and isinstance(self.num_classes, int) and top >= self.num_classes:
            return [f"remap: maps to class {top} but num_classes is {self.num_classes}"]
        return []

    @property
    def remap_dict(self) -> dict[int, int] | None:
        """A copy of ``remap``."""
        return dict(self.remap) if self.remap is not None else None

    @property
    def output_classes(self) -> int | None:
        """num_classes, or what the remap implies; None when only the data can tell."""
        if self.num_classes is not None:
            return int(self.num_classes)
        return max(self.remap.values()) + 1 if self.remap else None

    def cache_fields(self) -> dict:
        """The fields that decide what the cache holds (JSON-able); normalisation, skip_empty and
        patches are applied when slices are loaded, so they are not among them."""
        d = {"axis": self.axis, "pad_to": list(self.pad_to) if self.pad_to else None,
             "remap": [list(p) for p in self.remap.items()] if self.remap is not None else None,
             "num_classes": self.num_classes}
        # Added later: present only when set, so caches of configs without them keep their keys.
        extra = {"resize": list(self.resize) if self.resize else None,
                 "spacing": list(self.spacing) if self.spacing else None, "crop": self.crop}
        return {**d, **{k: v for k, v in extra.items() if v is not None}}

    @property
    def crop_needs_fitting(self) -> bool:
        """A labels crop, not yet resolved into a box for some training subjects."""
        return bool(self.crop) and "labels" in self.crop

    def to_dict(self) -> dict:
        """JSON-able; ``build_preprocess_config(cfg.to_dict()) == cfg``."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("pad_to", "patch_size", "patch_stride", "resize", "spacing"):
            d[name] = list(d[name]) if d[name] is not None else None
        d["remap"] = self.remap_dict
        return d


def _plain(value: object) -> object:
    """Lists for tuples, recursively (a crop box read from YAML or JSON compares equal)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _as_int(value: object) -> object:
    # JSON turns remap keys into strings; "7" means class 7.
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def build_preprocess_config(d: Mapping | None) -> PreprocessConfig:
    """Turn a validated study's ``preprocess`` mapping into a PreprocessConfig; unknown keys and
    bad values raise StudyError naming every one of them."""
    d = dict(d or {})
    known = {f.name for f in fields(PreprocessConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise StudyError([f"{k}: unknown preprocess option (known: {', '.join(sorted(known))})"
                          for k in unknown], source="preprocess")
    return PreprocessConfig(**d)


# --- pure steps -------------------------------------------------------------------------------

def remap_labels(label: np.ndarray, mapping: Mapping[int, int], *, where: str = "label") -> np.ndarray:
    """Map class values through ``mapping``; values it does not list raise DataError."""
    values = np.unique(label)
    missing = sorted(int(v) for v in values if int(v) not in mapping)
    if missing:
        raise DataError(f"{where}: label values {missing} are not in preprocess.remap "
                        f"(which maps {sorted(mapping)})")
    table = np.zeros(int(max(max(mapping), values.max(initial=0))) + 1, dtype=np.int64)
    for old, new in mapping.items():
        table[old] = new
    return table[label]


def volume_to_slices(image: np.ndarray, label: np.ndarray | None, axis: int
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """(C, X, Y, Z) image and (X, Y, Z) label -> (D, C, H, W) and (D, H, W) slices along ``axis``
    (0, 1, 2 of the spatial axes); the other two spatial axes keep their order as (H, W)."""
    slices = np.moveaxis(image, 1 + axis, 0)
    return slices, (np.moveaxis(label, axis, 0) if label is not None else None)


def pad_or_crop(array: np.ndarray, size: tuple[int, int], *, value: float | np.ndarray = 0) -> np.ndarray:
    """Centre-pad (with ``value``) or centre-crop the last two axes to ``size``. ``value`` may be
    per channel: an array of shape ``array.shape[1:-2]`` for (N, C, H, W) input."""
    h, w = array.shape[-2:]
    th, tw = size
    out = np.empty(array.shape[:-2] + (th, tw), dtype=array.dtype)
    fill = np.asarray(value, dtype=array.dtype)
    out[...] = fill.reshape(fill.shape + (1, 1)) if fill.ndim else fill
    # Source window (crop) and destination window (pad), centred; odd remainders go right/bottom.
    sh, dh = max(0, (h - th) // 2), max(0, (th - h) // 2)
    sw, dw = max(0, (w - tw) // 2), max(0, (tw - w) // 2)
    ch, cw = min(h, th), min(w, tw)
    out[..., dh:dh + ch, dw:dw + cw] = array[..., sh:sh + ch, sw:sw + cw]
    return out


@dataclass(frozen=True)
class SliceGeometry:
    """What the slicing steps make of one subject (``slice_geometry``).

    Attributes:
        crop: the region of interest as (x, y, z) voxel slices of the reoriented volume, or None.
        slices: number of slices along ``axis``.
        cropped: in-plane (rows, cols) after the crop.
        resampled: in-plane size after ``resize`` / ``spacing`` (= cropped without them).
        size: final in-plane size, after ``pad_to``.
        spacing: mm of the final slices as (slice axis, rows, cols): what metrics use.
    """

    crop: tuple[slice, slice, slice] | None
    slices: int
    cropped: tuple[int, int]
    resampled: tuple[int, int]
    size: tuple[int, int]
    spacing: tuple[float, float, float]


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """mm per voxel along each array axis: the lengths of the affine's columns."""
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def slice_geometry(shape: tuple[int, ...], affine: np.ndarray, config: PreprocessConfig, *,
                   where: str = "subject") -> SliceGeometry:
    """The geometry of one subject's slices from its reoriented (X, Y, Z) shape and affine only
    (no voxel is read): what ``synthmix plan`` checks and what the cache builder does."""
    shape = tuple(int(n) for n in shape[:3])
    crop = crop_box_voxels(config.crop, shape, affine, where=where) if config.crop else None
    cut = tuple(c.stop - c.start for c in crop) if crop else shape
    sp = voxel_spacing(affine)
    in_plane = [i for i in range(3) if i != config.axis]
    cropped = (cut[in_plane[0]], cut[in_plane[1]])
    plane_sp = (sp[in_plane[0]], sp[in_plane[1]])
    resampled = resample_size(cropped, plane_sp, config)
    spacing = (sp[config.axis], *(s * n / m for s, n, m in zip(plane_sp, cropped, resampled)))
    return SliceGeometry(crop=crop, slices=cut[config.axis], cropped=cropped, resampled=resampled,
                         size=tuple(config.pad_to) if config.pad_to else resampled, spacing=spacing)


def resample_size(size: tuple[int, int], spacing: tuple[float, float], config: PreprocessConfig) -> tuple[int, int]:
    """In-plane size after ``resize`` (that size) or ``spacing`` (the size that keeps the
    field of view at the target spacing, at least 1 voxel)."""
    if config.resize:
        return tuple(config.resize)
    if config.spacing:
        return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(size, spacing, config.spacing))
    return tuple(size)


def crop_box_voxels(crop: Mapping, shape: tuple[int, int, int], affine: np.ndarray, *,
                    where: str = "subject") -> tuple[slice, slice, slice]:
    """The region of interest as voxel slices of a reoriented volume of ``shape``. A ``box``
    must lie inside the volume; a ``box_mm`` is the voxel bounding box of the world box's
    corners, clipped to the volume. DataError naming ``where`` otherwise."""
    if "labels" in crop:
        raise DataError("preprocess.crop: a labels crop must be fitted on the training subjects first "
                        "(synthmix.datasets.roi.resolve_crop)")
    if "box" in crop:
        box = [(int(a), int(b)) for a, b in crop["box"]]
        if any(b > n for (_, b), n in zip(box, shape)):
            raise DataError(f"{where}: preprocess.crop.box {[list(b) for b in box]} reaches beyond the "
                            f"volume of shape {'x'.join(map(str, shape))} (voxels of the RAS-reoriented volume)")
        return tuple(slice(a, b) for a, b in box)
    lo_hi = np.asarray(crop["box_mm"], dtype=float)  # (3, 2) world RAS mm
    corners = np.array(np.meshgrid(*lo_hi, indexing="ij")).reshape(3, -1).T
    voxels = (np.linalg.inv(affine) @ np.c_[corners, np.ones(len(corners))].T)[:3].T
    voxels = np.round(voxels, 6)  # a box fitted on this very grid maps back onto whole voxels
    # Every voxel whose extent (centre +- 0.5) overlaps the box.
    lo = np.maximum(np.floor(voxels.min(axis=0) + 0.5), 0).astype(int)
    hi = np.minimum(np.ceil(voxels.max(axis=0) + 0.5), shape).astype(int)
    if np.any(hi <= lo):
        raise DataError(f"{where}: the region of interest preprocess.crop {lo_hi.tolist()} mm lies outside "
                        f"its volume")
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def crop_volume(image: np.ndarray, label: np.ndarray | None, box: tuple[slice, slice, slice] | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """(C, X, Y, Z) image and (X, Y, Z) label cut to the voxel box (None: unchanged)."""
    if box is None:
        return image, label
    return image[(slice(None), *box)], (label[box] if label is not None else None)


def resample_slices(images: np.ndarray, labels: np.ndarray, size: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(D, C, H, W) images bilinear (anti-aliased when shrinking) and (D, H, W) labels
    nearest-neighbour to in-plane ``size``, with pixel-area alignment (the field of view is
    kept, so the new spacing is old x H / size). torch's ``interpolate``, the function MONAI's
    ``Resize`` wraps, called directly: its own ``antialias`` filter handles the borders,
    where MONAI's Gaussian pre-filter pads with zeros and darkens the edge of every slice."""
    import torch
    import torch.nn.functional as F

    d, c, h, w = images.shape
    if (h, w) == tuple(size):
        return images, labels
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    out = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                        antialias=bool(size[0] < h or size[1] < w))
    lab = F.interpolate(torch.from_numpy(np.asarray(labels, dtype=np.float32))[:, None], size=tuple(size),
                        mode="nearest-exact")[:, 0]
    return out.numpy(), np.rint(lab.numpy()).astype(labels.dtype)


def nonempty_slices(labels: np.ndarray) -> np.ndarray:
    """(D, H, W) labels -> (D,) bool: does the slice hold any non-background voxel."""
    return labels.reshape(len(labels), -1).any(axis=1)


def patch_origins(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of patches of ``size`` along an axis of ``length``, every ``stride``; the last
    patch is moved to end at the border so no voxel is left out."""
    if size > length:
        raise DataError(f"preprocess.patch_size {size} is larger than the slice size {length}; "
                        "lower patch_size or set pad_to or resize")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def tile_patches(images: np.ndarray, labels: np.ndarray, size: tuple[int, int], stride: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut (N, C, H, W) images and (N, H, W) labels into patches; returns patches, their labels
    and, per patch, the index of the slice it came from."""
    rows = patch_origins(images.shape[-2], size[0], stride[0])
    cols = patch_origins(images.shape[-1], size[1], stride[1])
    n = len(images)
    img = [images[:, :, r:r + size[0], c:c + size[1]] for r in rows for c in cols]
    lab = [labels[:, r:r + size[0], c:c + size[1]] for r in rows for c in cols]
    # Patch-major stacking then a reorder keeps all patches of a slice together.
    order = np.arange(n * len(img)).reshape(len(img), n).T.ravel()
    source = np.repeat(np.arange(n), len(img))
    return np.concatenate(img)[order], np.concatenate(lab)[order], source


# --- normalisation ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Normaliser:
    """Per-channel affine intensity map ``(x - shift) / scale`` (clipped to [-1, 1] for minmax),
    fitted on training subjects only. Serialisable with to_dict/from_dict."""

    method: str
    shift: tuple[float, ...]
    scale: tuple[float, ...]
    foreground_threshold: float | None = 0.0

    @classmethod
    def identity(cls, channels: int) -> "Normaliser":
        return cls(method="none", shift=(0.0,) * channels, scale=(1.0,) * channels, foreground_threshold=None)

    @classmethod
    def fit(cls, images: np.ndarray | Iterable[np.ndarray], *, method: str = "zscore",
            foreground_threshold: float | None = 0.0) -> "Normaliser":
        """Fit on training images: one array or an iterable of arrays, channels on axis 1
        (e.g. (N, C, H, W) slices, one chunk per subject)."""
        chunks = [images] if isinstance(images, np.ndarray) else images
        if method == "zscore":
            n, mean, m2 = _moments(chunks, foreground_threshold)
            if np.any(n == 0):
                raise DataError(f"normalisation: no foreground voxel above {foreground_threshold} in the "
                                "training images; lower preprocess.foreground_threshold or set it to null")
            std = np.sqrt(m2 / n)
            if np.any(std == 0):
                raise DataError("normalisation: a channel is constant over the training foreground; "
                                "z-score normalisation is undefined (use normalise: none or minmax)")
            return cls(method, tuple(map(float, mean)), tuple(map(float, std)), foreground_threshold)
        if method == "minmax":
            lo, hi = _percentiles(chunks, MINMAX_PERCENTILES)
            if np.any(hi <= lo):
                raise DataError("normalisation: a channel is constant over the training images; "
                                "minmax scaling is undefined (use normalise: none)")
            return cls(method, tuple(map(float, (lo + hi) / 2)), tuple(map(float, (hi - lo) / 2)), None)
        if method == "none":
            first = next(iter(chunks))
            return cls.identity(first.shape[1])
        raise DataError(f"normalisation: unknown method {method!r}; use one of {', '.join(NORMALISE_METHODS)}")

    def apply(self, images: np.ndarray) -> np.ndarray:
        """(N, C, ...) images -> normalised float32 copy."""
        if images.shape[1] != len(self.shift):
            raise DataError(f"normalisation: fitted on {len(self.shift)} channels, images have {images.shape[1]}")
        if self.method == "none":
            return np.array(images, dtype=np.float32)
        shape = (1, -1) + (1,) * (images.ndim - 2)
        shift = np.asarray(self.shift, dtype=np.float32).reshape(shape)
        scale = np.asarray(self.scale, dtype=np.float32).reshape(shape)
        out = (np.asarray(images, dtype=np.float32) - shift) / scale
        if self.method == "minmax":
            np.clip(out, -1.0, 1.0, out=out)
        return out

    def to_dict(self) -> dict:
        return {"method": self.method, "shift": list(self.shift), "scale": list(self.scale),
                "foreground_threshold": self.foreground_threshold}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Normaliser":
        return cls(method=d["method"], shift=tuple(float(x) for x in d["shift"]),
                   scale=tuple(float(x) for x in d["scale"]), foreground_threshold=d.get("foreground_threshold"))


def _foreground(chunk: np.ndarray, threshold: float | None) -> np.ndarray:
    """(N, C, ...) -> (N, ...) bool: any channel above the threshold (every voxel for None)."""
    if threshold is None:
        return np.ones((chunk.shape[0],) + chunk.shape[2:], dtype=bool)
    return (chunk > threshold).any(axis=1)


def _moments(chunks: Iterable[np.ndarray], threshold: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel count, mean and sum of squared deviations over foreground voxels, merged chunk
    by chunk (Chan, Golub & LeVeque) in float64."""
    n = mean = m2 = None
    for chunk in chunks:
        chunk = np.asarray(chunk)
        mask = _foreground(chunk, threshold)
        vals = np.moveaxis(chunk, 1, 0)[:, mask].astype(np.float64)  # (C, voxels)
        if n is None:
            n, mean, m2 = (np.zeros(len(vals)) for _ in range(3))
        nb = vals.shape[1]
        if nb == 0:
            continue
        mb = vals.mean(axis=1)
        m2b = ((vals - mb[:, None]) ** 2).sum(axis=1)
        delta, total = mb - mean, n + nb
        mean = mean + delta * nb / total
        m2 = m2 + m2b + delta ** 2 * n * nb / total
        n = total
    if n is None:
        raise DataError("normalisation: no training images to fit on")
    return n, mean, m2


def _percentiles(chunks: Iterable[np.ndarray], q: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel percentiles over all voxels; large chunks are subsampled with a fixed stride
    (no randomness) so memory stays bounded."""
    samples = []
    for chunk in chunks:
        flat = np.moveaxis(np.asarray(chunk), 1, 0).reshape(chunk.shape[1], -1)
        step = max(1, flat.shape[1] // _PERCENTILE_SAMPLES_PER_CHUNK)
        samples.append(np.asarray(flat[:, ::step], dtype=np.float64))
    if not samples:
        raise DataError("normalisation: no training images to fit on")
    lo, hi = np.percentile(np.concatenate(samples, axis=1), q, axis=1)
    return lo, hi
