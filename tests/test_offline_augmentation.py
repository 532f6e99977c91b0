"""002's traditional augmentation as an offline mode: every real training slice transformed
once into a second dataset of the same size, labels valid and aligned with their images."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from scipy import ndimage

from synthmix.datasets.arrays import SliceSet
from synthmix.errors import StudyError
from synthmix.search_spaces.schema import validate_study
from synthmix.trainers.augmentation import build_augmentation
from synthmix.trainers.offline_augmentation import OfflineAugment


def _slices(n: int = 12, size: int = 32, seed: int = 0) -> SliceSet:
    """Label maps of discs and bars in 4 classes; image channel 0 is the label value itself (so
    alignment can be read off), channel 1 its negative."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((n, size, size), np.int64)
    for i in range(n):
        cy, cx = rng.integers(8, size - 8, 2)
        labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 40)] = 1
        labels[i][:, rng.integers(2, size - 6):][:, :3] = 2
        labels[i][rng.integers(2, size - 6):][:3] = 3
    images = np.stack([labels, -labels], axis=1).astype(np.float32)
    return SliceSet(images, labels, np.array([f"s{i % 3}" for i in range(n)]), np.arange(n),
                    {f"s{i}": (1.0, 1.0, 1.0) for i in range(3)}, 4)


def test_the_dataset_doubles_with_valid_aligned_labels():
    train = _slices()
    out = build_augmentation("traditional").expand(train, seed=7)
    n = len(train)
    assert len(out) == 2 * n and out.num_classes == 4 and out.labels.dtype == np.int64
    np.testing.assert_array_equal(out.images[:n], train.images)  # the real slices come first, unchanged
    np.testing.assert_array_equal(out.labels[:n], train.labels)
    assert list(out.subject_ids[n:]) == list(train.subject_ids) and list(out.positions[n:]) == list(train.positions)
    copies, labels = out.images[n:], out.labels[n:]
    assert set(np.unique(labels)) <= {0, 1, 2, 3}  # nearest neighbour: no new (interpolated) class
    assert not np.array_equal(labels, train.labels)  # every copy was moved
    moved = np.mean(labels != train.labels, axis=(1, 2))
    assert (moved > 0).sum() >= n - 1
    # Aligned: the image's class value (blurred and contrast-changed around its mean at most)
    # still correlates with the label map it came with, slice by slice, and not with the original.
    for i in range(n):
        assert np.corrcoef(copies[i, 0].ravel(), labels[i].ravel())[0, 1] > 0.75
        assert np.corrcoef(copies[i, 0].ravel(), labels[i].ravel())[0, 1] > \
            np.corrcoef(copies[i, 0].ravel(), train.labels[i].ravel())[0, 1]
    np.testing.assert_allclose(copies[:, 1], -copies[:, 0], atol=1e-4)  # both channels moved alike


def test_without_blur_and_contrast_the_image_follows_the_label_pixel_for_pixel():
    train = _slices()
    aug = OfflineAugment(blur_prob=0.0, contrast_prob=0.0)
    images, labels = aug.transformed(train.images, train.labels, seed=3)
    same = np.rint(images[:, 0]) == labels
    # Bilinear and nearest-neighbour differ only along edges: away from them they agree.
    interior = np.stack([ndimage.maximum_filter(m, 3) == ndimage.minimum_filter(m, 3) for m in labels])
    assert same[interior].mean() > 0.999 and same.mean() > 0.9, (same[interior].mean(), same.mean())
    assert np.isclose(images[:, 0].max(), 3.0, atol=1e-3) and images[:, 0].min() >= -1e-3


def test_seeded_draws_and_the_offline_copies_count():
    train = _slices(n=6)
    aug = build_augmentation("traditional", {"copies": 2})
    a, b, c = aug.expand(train, seed=1), aug.expand(train, seed=1), aug.expand(train, seed=2)
    assert len(a) == 18
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images[6:], c.images[6:])
    x, y = np.ones((2, 1, 4, 4), np.float32), np.zeros((2, 4, 4), np.int64)
    assert aug(x, y, None) == (x, y)  # the per-batch hook leaves a training batch alone


def test_options_are_checked_by_name():
    with pytest.raises(ValueError, match="unknown augmentation parameter.*'flip_prob' for traditional"):
        build_augmentation("traditional", {"flip_prob": 0.5})
    with pytest.raises(ValueError, match="blur_prob must be in"):
        build_augmentation("traditional", {"blur_prob": 2})
    raw = yaml.safe_load("""
name: t
dataset: {phantom: {subjects: 8}}
split: {test: 0.25, val: 0.25}
factors: {real_fraction: [1.0], synthetic: [0], architecture: [unet], augmentation: [none, traditional]}
segmenter: {augmentations: {traditional: {shear_px: -1}}}
""")
    with pytest.raises(StudyError, match="shear_px must be a number >= 0"):
        validate_study(raw)
    raw["segmenter"] = {"augmentations": {"traditional": {"rotate_deg": 10}}}
    assert validate_study(raw).segmenter_config("unet", "traditional")["augmentation_params"] == {"rotate_deg": 10}
