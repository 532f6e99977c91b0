"""Preprocessing of 3D subjects into 2D training slices, and intensity normalisation.

Each step is a pure function on arrays, so it works on any user's NIfTI folder and is testable
without files: ``remap_labels``, ``volume_to_slices``, ``pad_or_crop``, ``nonempty_slices``,
``tile_patches``. ``PreprocessConfig`` says which steps run; the slicing steps (axis, padding,
class remap) happen once when the cache is built, while ``skip_empty`` and patches happen when
training slices are loaded, and never for evaluation volumes.

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
    normalise: str = "zscore"
    foreground_threshold: float | None = 0.0
    remap: dict[int, int] | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("pad_to", _pair(self.pad_to))
        set_("patch_size", _pair(self.patch_size))
        set_("patch_stride", _pair(self.patch_stride) if self.patch_stride is not None else self.patch_size)
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
        if _is_pos_pair(self.pad_to) and _is_pos_pair(self.patch_size) and any(
                s > t for s, t in zip(self.patch_size, self.pad_to)):
            p.append(f"patch_size: {self.patch_size} is larger than pad_to {self.pad_to}")
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
        return {"axis": self.axis, "pad_to": list(self.pad_to) if self.pad_to else None,
                "remap": [list(p) for p in self.remap.items()] if self.remap is not None else None,
                "num_classes": self.num_classes}

    def to_dict(self) -> dict:
        """JSON-able; ``build_preprocess_config(cfg.to_dict()) == cfg``."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("pad_to", "patch_size", "patch_stride"):
            d[name] = list(d[name]) if d[name] is not None else None
        d["remap"] = self.remap_dict
        return d


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


def nonempty_slices(labels: np.ndarray) -> np.ndarray:
    """(D, H, W) labels -> (D,) bool: does the slice hold any non-background voxel."""
    return labels.reshape(len(labels), -1).any(axis=1)


def patch_origins(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of patches of ``size`` along an axis of ``length``, every ``stride``; the last
    patch is moved to end at the border so no voxel is left out."""
    if size > length:
        raise DataError(f"preprocess.patch_size {size} is larger than the slice size {length}; "
                        "lower patch_size or set pad_to")
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
