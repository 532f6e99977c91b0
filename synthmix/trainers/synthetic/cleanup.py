"""Label clean-ups (``LABEL_CLEANUPS`` entries): repair generated label maps before filtering.

Every entry is ``fn(samples, reference, **options) -> Samples`` with the images untouched. All
morphology is 2D per sample (scipy.ndimage with a structuring element that never connects two
samples). Pixels a clean-up takes away from a class get the class of the nearest pixel of
another class in the same sample (a speck of CSF inside parenchyma becomes parenchyma, one in
the air becomes background), so removing a structure never leaves a background hole behind.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from scipy import ndimage

from synthmix.errors import StudyError
from synthmix.trainers.quality import nearest_neighbours
from synthmix.trainers.synthetic import SOURCE, Interval, Reference, Samples

_CROSS = ndimage.generate_binary_structure(2, 1)   # 4-connectivity: holes
_SQUARE = ndimage.generate_binary_structure(2, 2)  # 8-connectivity: components


def _per_sample(structure2d: np.ndarray) -> np.ndarray:
    """A (3, h, w) structuring element that acts within each sample of an (n, H, W) stack only."""
    out = np.zeros((3, *structure2d.shape), bool)
    out[1] = structure2d
    return out


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx ** 2 + yy ** 2 <= radius ** 2


def _give_to_neighbours(labels: np.ndarray, removed: np.ndarray, cls: int) -> None:
    """In place: pixels ``removed`` from class ``cls`` take the label of the nearest pixel of
    another class in their sample (background if the sample has no other pixel)."""
    for i in np.flatnonzero(removed.reshape(len(labels), -1).any(axis=1)):
        others = labels[i] != cls
        if not others.any():
            labels[i][removed[i]] = 0
            continue
        _, (rows, cols) = ndimage.distance_transform_edt(~others, return_indices=True)
        labels[i][removed[i]] = labels[i][rows[removed[i]], cols[removed[i]]]


# ---- decoding from the generator's raw label channels -------------------------------------------

def _label_channels(samples: Samples, entry: str) -> np.ndarray:
    channels = samples.extras.get("label_channels")
    if channels is None:
        have = ", ".join(sorted(samples.extras)) or "no extras"
        raise StudyError([f"cleanup {entry!r} decodes extras['label_channels'] (the raw generator label output), "
                          f"but this generator's samples carry {have}; remove {entry!r} from generator.pool.cleanup"],
                         source=SOURCE)
    return np.asarray(channels, np.float32)


def argmax(samples: Samples, reference: Reference) -> Samples:
    """Labels re-decoded as the argmax over one label channel per class."""
    channels = _label_channels(samples, "argmax")
    k = reference.real.num_classes
    if channels.shape[1] != k:
        raise StudyError([f"cleanup 'argmax' needs one label channel per class ({k}); the samples have "
                          f"{channels.shape[1]} (a binary label is one channel: use 'threshold')"], source=SOURCE)
    return samples.with_labels(channels.argmax(axis=1))


def threshold(samples: Samples, reference: Reference, *, level: float = 0.0) -> Samples:
    """Labels re-decoded by thresholding each label channel at ``level`` (003: 0, the middle of
    [-1, 1]). One channel: class 1 above it. One per class: a pixel takes the foreground class
    above the level with the largest value, background if none is above it."""
    channels = _label_channels(samples, "threshold")
    if channels.shape[1] == 1:
        return samples.with_labels((channels[:, 0] > level).astype(np.int64))
    fg = channels[:, 1:]
    best = fg.argmax(axis=1) + 1
    return samples.with_labels(np.where((fg > level).any(axis=1), best, 0))


# ---- morphology -------------------------------------------------------------------------------

def fill_holes(samples: Samples, reference: Reference) -> Samples:
    """Background pixels enclosed by foreground (4-connected holes of the foreground union)
    take the class of the nearest foreground pixel."""
    labels = samples.labels.copy()
    fg = labels > 0
    holes = ndimage.binary_fill_holes(fg, structure=_per_sample(_CROSS)) & ~fg
    _give_to_neighbours(labels, holes, 0)
    return samples.with_labels(labels)


def remove_small(samples: Samples, reference: Reference, *,
                 min_pixels: Annotated[int, Interval(1)] = 4) -> Samples:
    """Each foreground class loses its 8-connected components of fewer than ``min_pixels``."""
    labels = samples.labels.copy()
    for c in range(1, reference.real.num_classes):
        components, count = ndimage.label(labels == c, structure=_per_sample(_SQUARE))
        if count == 0:
            continue
        small = np.bincount(components.ravel()) < min_pixels
        small[0] = False
        _give_to_neighbours(labels, small[components], c)
    return samples.with_labels(labels)


def opening(samples: Samples, reference: Reference, *, radius: Annotated[int, Interval(1)] = 1) -> Samples:
    """Morphological opening of each foreground class with a disk of ``radius`` pixels: removes
    spurs and components thinner than the disk."""
    labels = samples.labels.copy()
    disk = _per_sample(_disk(radius))
    for c in range(1, reference.real.num_classes):
        mask = labels == c
        _give_to_neighbours(labels, mask & ~ndimage.binary_opening(mask, structure=disk), c)
    return samples.with_labels(labels)


# ---- masks and statistics from the real training subset -------------------------------------------

def allowed_regions(real, margin_mm: float) -> np.ndarray:
    """(positions, K, H, W) bool: per slice position and class, the points within ``margin_mm``
    (3D, with the subjects' median spacing) of that class in any real training label volume."""
    n_pos = int(real.positions.max()) + 1
    spacing = np.median(np.array(list(real.spacing.values()), float), axis=0)
    out = np.zeros((n_pos, real.num_classes, *real.labels.shape[1:]), bool)
    for c in range(1, real.num_classes):
        union = np.zeros((n_pos, *real.labels.shape[1:]), bool)
        np.logical_or.at(union, real.positions, real.labels == c)
        if union.any():
            out[:, c] = ndimage.distance_transform_edt(~union, sampling=spacing) <= margin_mm
    return out


def _slice_positions(samples: Samples, reference: Reference) -> np.ndarray:
    """001: each sample's slice number is that of its nearest real training image."""
    _, index = nearest_neighbours(samples.images, reference.real.images)
    return reference.real.positions[index]


def training_mask(samples: Samples, reference: Reference, *,
                  margin_mm: Annotated[float, Interval(0)] = 10.0) -> Samples:
    """001: a class is kept only within ``margin_mm`` of the union of the real training labels
    of that class, at the slice position of the sample's nearest real training image."""
    allowed = allowed_regions(reference.real, margin_mm)[_slice_positions(samples, reference)]
    labels = samples.labels.copy()
    for c in range(1, reference.real.num_classes):
        labels[(labels == c) & ~allowed[:, c]] = 0
    return samples.with_labels(labels)


def class_intensity_ranges(real, sd: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high), each (K, C): mean -+ ``sd`` standard deviations of each image channel over
    the real training pixels of each class (NaN for a class absent from the real labels)."""
    k, c = real.num_classes, real.images.shape[1]
    low, high = np.full((k, c), np.nan), np.full((k, c), np.nan)
    pixels = real.images.transpose(1, 0, 2, 3)  # (C, N, H, W)
    for cls in range(k):
        values = pixels[:, real.labels == cls]
        if values.shape[1]:
            mean, std = values.mean(axis=1), values.std(axis=1)
            low[cls], high[cls] = mean - sd * std, mean + sd * std
    return low, high


def _binary_masks(samples: Samples, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(masks (n, K, H, W) bool, priority (n, K, H, W)): 001 binarises each generated label
    channel at 0; without raw channels, the masks of the integer labels. Priority breaks ties
    where masks overlap: the channel value, or the sample's original label."""
    channels = samples.extras.get("label_channels")
    if channels is not None and channels.shape[1] in (1, k):
        channels = np.asarray(channels, np.float32)
        if channels.shape[1] == 1:  # binary: the one channel is class 1
            channels = np.concatenate([-channels, channels], axis=1)
        return channels > 0, channels
    onehot = samples.labels[:, None] == np.arange(k)[None, :, None, None]
    return onehot, onehot.astype(np.float32)


def bowles_postprocess(samples: Samples, reference: Reference, *,
                       margin_mm: Annotated[float, Interval(0)] = 10.0, mask: bool = True,
                       radius: Annotated[int, Interval(1)] = 1,
                       sd: Annotated[float, Interval(0, closed="neither")] = 2.0) -> Samples:
    """001 section II-B/C, per structure (foreground class): (mask: keep the structure within
    ``margin_mm`` of the real training labels, as ``training_mask``), binarise, close, fill
    holes, drop pixels whose intensity (any channel) lies outside the structure's real mean
    -+ ``sd`` SD, fill holes, open (disk of ``radius``). Where structures overlap, the higher
    generator channel (or the original label) wins."""
    k = reference.real.num_classes
    masks, priority = _binary_masks(samples, k)
    low, high = class_intensity_ranges(reference.real, sd)
    allowed = allowed_regions(reference.real, margin_mm)[_slice_positions(samples, reference)] if mask else None
    disk, cross = _per_sample(_disk(radius)), _per_sample(_CROSS)
    for c in range(1, k):
        m = masks[:, c] if allowed is None else masks[:, c] & allowed[:, c]
        m = ndimage.binary_fill_holes(ndimage.binary_closing(m, structure=disk), structure=cross)
        if np.isfinite(low[c]).all():
            inside = ((samples.images >= low[c][:, None, None]) & (samples.images <= high[c][:, None, None])).all(axis=1)
            m &= inside
        else:  # no real pixel of this class: nothing can be realistic for it
            m[:] = False
        masks[:, c] = ndimage.binary_opening(ndimage.binary_fill_holes(m, structure=cross), structure=disk)
    fg = np.where(masks[:, 1:], priority[:, 1:], -np.inf)
    labels = np.where(masks[:, 1:].any(axis=1), fg.argmax(axis=1) + 1, 0)
    return samples.with_labels(labels)
