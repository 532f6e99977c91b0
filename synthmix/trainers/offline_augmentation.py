"""Offline ("traditional") augmentation as 002 ran it: every real training slice is transformed
once, and the copies are a second dataset of the same size added to the real one.

002's transform, per slice: a rotation in [-25, 25] degrees, a rescale in [-15, 15] %, a shear
of up to 10 px, a Gaussian blur of radius 2 with probability 0.5 and a contrast increase of up to
50 % with probability 0.5; labels follow the spatial part with nearest-neighbour interpolation
(so they stay integer classes of the same set) and are left alone by blur and contrast.

In a study it is the ``augmentation`` level ``traditional`` (``AUGMENTATIONS`` entry; its
options are ``augmentation_params``). It combines with the ``synthetic`` factor into 002's
{none, GAN, traditional, both}: the copies are drawn as real data, and an additive synthetic
level still counts the original real slices only (``mixing``'s ``base``), so with +100 % the four
cells train on N, 2N, 2N and 3N items. The per-batch hook does nothing (``__call__``): the
copies are made once, before training (``orchestrator/cells.py``), from the cell's seed.

Pixel amounts (shear, blur radius) are given at ``reference_size`` 256 px and scaled to the
slices' width, as ``trainers.augmentation`` does; ``reference_size: null`` reads them as pixels.
The shear is a horizontal shear that moves the top and bottom rows by up to ``shear_px``
(factor ``shear_px / (reference_size / 2)``). MONAI's ``RandAffined`` draws the rescale per axis.

Built from MONAI's ``RandAffined``, ``RandGaussianSmoothd`` and
``RandScaleIntensityFixedMeand`` (contrast around each slice's mean), seeded once per cell.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from synthmix.datasets.arrays import SliceSet


@dataclass(frozen=True)
class OfflineAugment:
    """002's transform applied once per real training slice (see the module docstring).

    Attributes:
        rotate_deg: rotation drawn uniformly in [-rotate_deg, rotate_deg].
        scale: rescale factor drawn in [1 - scale, 1 + scale] (per axis).
        shear_px: horizontal shift of the top/bottom rows, at reference_size.
        blur_radius_px: Gaussian blur sigma, at reference_size; applied with blur_prob.
        contrast: contrast increase drawn in [0, contrast] (x -> mean + (1 + c)(x - mean)); with contrast_prob.
        copies: transformed copies per real slice (002: one).
        reference_size: the width the pixel amounts are given for; None = absolute pixels.
    """

    rotate_deg: float = 25.0
    scale: float = 0.15
    shear_px: float = 10.0
    blur_radius_px: float = 2.0
    blur_prob: float = 0.5
    contrast: float = 0.5
    contrast_prob: float = 0.5
    copies: int = 1
    reference_size: int | None = 256

    offline = True
    spatial = False  # nothing happens to a training batch

    def __post_init__(self) -> None:
        for f in ("rotate_deg", "scale", "shear_px", "blur_radius_px", "contrast"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"augmentation {f} must be a number >= 0, got {v!r}")
        for f in ("blur_prob", "contrast_prob"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"augmentation {f} must be in [0, 1], got {v!r}")
        if self.scale >= 1:
            raise ValueError(f"augmentation scale must be below 1, got {self.scale!r}")
        if isinstance(self.copies, bool) or not isinstance(self.copies, int) or self.copies < 1:
            raise ValueError(f"augmentation copies must be a positive integer, got {self.copies!r}")

    def __call__(self, images, labels, generator):
        """The per-batch hook of ``trainers.augmentation``: offline, the batch passes unchanged."""
        return images, labels

    def _transform(self, width: int, seed: int):
        from monai.transforms import Compose, RandAffined, RandGaussianSmoothd, RandScaleIntensityFixedMeand

        px = width / self.reference_size if self.reference_size else 1.0
        half = (self.reference_size or width) / 2
        shear = self.shear_px / half  # moves a row at the border by shear_px (at reference_size)
        steps = [RandAffined(keys=("image", "label"), prob=1.0, rotate_range=(math.radians(self.rotate_deg),),
                             scale_range=(self.scale, self.scale), shear_range=((-shear, shear), (0.0, 0.0)),
                             mode=("bilinear", "nearest"), padding_mode="border")]
        if self.blur_radius_px and self.blur_prob:
            sigma = self.blur_radius_px * px
            steps.append(RandGaussianSmoothd(keys="image", sigma_x=(sigma, sigma), sigma_y=(sigma, sigma),
                                             prob=self.blur_prob))
        if self.contrast and self.contrast_prob:
            steps.append(RandScaleIntensityFixedMeand(keys="image", factors=(0.0, self.contrast),
                                                      prob=self.contrast_prob))
        transform = Compose(steps)
        transform.set_random_state(seed=seed)
        return transform

    def transformed(self, images: np.ndarray, labels: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """One transformed copy of every slice: images (N, C, H, W) float, labels (N, H, W) int."""
        transform = self._transform(images.shape[-1], seed)
        out_images, out_labels = np.empty_like(images, dtype=np.float32), np.empty_like(labels)
        for i in range(len(images)):
            item = transform({"image": images[i].astype(np.float32), "label": labels[i][None].astype(np.float32)})
            out_images[i] = np.asarray(item["image"], dtype=np.float32)
            out_labels[i] = np.rint(np.asarray(item["label"])[0]).astype(labels.dtype)
        return out_images, out_labels

    def expand(self, train: SliceSet, *, seed: int) -> SliceSet:
        """The real slices followed by ``copies`` transformed copies of each (same subjects and
        positions), so the training set is (1 + copies) times as large."""
        parts = [(train.images, train.labels)]
        for copy in range(self.copies):
            state = int(np.random.SeedSequence([int(seed), copy]).generate_state(1)[0])  # MONAI takes 32 bits
            parts.append(self.transformed(train.images, train.labels, seed=state))
        n = 1 + self.copies
        return SliceSet(images=np.concatenate([p[0] for p in parts]), labels=np.concatenate([p[1] for p in parts]),
                        subject_ids=np.tile(train.subject_ids, n), positions=np.tile(train.positions, n),
                        spacing=train.spacing, num_classes=train.num_classes)


OFFLINE_FIELDS = tuple(f.name for f in dataclasses.fields(OfflineAugment))


def build_traditional(**params) -> OfflineAugment:
    """The ``traditional`` entry: 002's transform with ``params`` over its defaults."""
    unknown = [k for k in params if k not in OFFLINE_FIELDS]
    if unknown:
        raise ValueError(f"unknown augmentation parameter(s) {', '.join(map(repr, unknown))} for traditional "
                         f"(offline); known: {', '.join(OFFLINE_FIELDS)}")
    return OfflineAugment(**params)
