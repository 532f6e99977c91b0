"""Preprocessing steps and normalisation, on arrays made in the test."""

from __future__ import annotations

import numpy as np
import pytest

from synthmix.datasets.preprocess import (Normaliser, PreprocessConfig, build_preprocess_config, nonempty_slices,
                                          pad_or_crop, patch_origins, remap_labels, tile_patches, volume_to_slices)
from synthmix.errors import DataError, StudyError


def test_volume_to_slices_along_each_axis():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
    label = rng.integers(0, 3, size=(4, 5, 6))
    for axis, depth in zip(range(3), (4, 5, 6)):
        slices, labels = volume_to_slices(image, label, axis)
        assert len(slices) == depth and len(labels) == depth
        k = depth // 2
        index = [slice(None)] * 3
        index[axis] = k
        np.testing.assert_array_equal(slices[k], image[(slice(None), *index)])
        np.testing.assert_array_equal(labels[k], label[tuple(index)])


def test_pad_matches_numpy_pad_and_crop_takes_the_centre():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, 5, 4)).astype(np.float32)
    padded = pad_or_crop(x, (8, 7), value=np.array([-1.0, -2.0]))
    # rows: 3 extra -> 1 above, 2 below; cols: 3 extra -> 1 left, 2 right
    for c, fill in enumerate([-1.0, -2.0]):
        expected = np.pad(x[:, c], ((0, 0), (1, 2), (1, 2)), constant_values=fill)
        np.testing.assert_array_equal(padded[:, c], expected)
    cropped = pad_or_crop(x, (3, 2))
    np.testing.assert_array_equal(cropped, x[..., 1:4, 1:3])
    mixed = pad_or_crop(np.arange(12).reshape(3, 4), (5, 2))  # pad rows, crop cols
    np.testing.assert_array_equal(mixed, np.pad(np.arange(12).reshape(3, 4)[:, 1:3], ((1, 1), (0, 0))))
    assert pad_or_crop(x, (5, 4)) is not x and np.array_equal(pad_or_crop(x, (5, 4)), x)


def test_remap_7_to_4_to_2_classes_as_in_004():
    # 004: extra FSL classes 4..6 become background; the tumour classes 1..3 stay; binary merges them.
    label = np.array([[0, 1, 2, 3], [4, 5, 6, 0]])
    four = remap_labels(label, {0: 0, 1: 1, 2: 2, 3: 3, 4: 0, 5: 0, 6: 0})
    np.testing.assert_array_equal(four, [[0, 1, 2, 3], [0, 0, 0, 0]])
    two = remap_labels(four, {0: 0, 1: 1, 2: 1, 3: 1})
    np.testing.assert_array_equal(two, [[0, 1, 1, 1], [0, 0, 0, 0]])
    with pytest.raises(DataError, match=r"subject s1.*\[5, 6\]"):
        remap_labels(label, {0: 0, 1: 1, 2: 2, 3: 3, 4: 0}, where="subject s1")


def test_nonempty_and_patches_cover_every_voxel():
    labels = np.zeros((3, 6, 7), dtype=np.int64)
    labels[1, 2, 3] = 1
    np.testing.assert_array_equal(nonempty_slices(labels), [False, True, False])
    assert patch_origins(7, 4, 2) == [0, 2, 3]
    assert patch_origins(8, 4, 4) == [0, 4]
    with pytest.raises(DataError, match="patch_size 9"):
        patch_origins(7, 9, 1)
    images = np.arange(3 * 2 * 6 * 7, dtype=np.float32).reshape(3, 2, 6, 7)
    patches, plabels, source = tile_patches(images, labels, (4, 4), (2, 2))
    rows, cols = [0, 2], [0, 2, 3]
    assert patches.shape == (3 * len(rows) * len(cols), 2, 4, 4)
    np.testing.assert_array_equal(source, np.repeat(np.arange(3), 6))
    k = 0
    for n in range(3):
        for r in rows:
            for c in cols:
                np.testing.assert_array_equal(patches[k], images[n, :, r:r + 4, c:c + 4])
                np.testing.assert_array_equal(plabels[k], labels[n, r:r + 4, c:c + 4])
                k += 1


def test_zscore_over_foreground_per_channel_streams_exactly():
    rng = np.random.default_rng(2)
    images = np.zeros((6, 2, 8, 8), dtype=np.float32)
    images[:, 0, 2:6, 2:6] = rng.normal(100, 10, size=(6, 4, 4))
    images[:, 1, 2:6, 2:6] = rng.normal(5, 2, size=(6, 4, 4))
    fg = images[:, 0] > 0
    norm = Normaliser.fit(images, method="zscore")
    for c in range(2):
        assert norm.shift[c] == pytest.approx(images[:, c][fg].astype(np.float64).mean(), rel=1e-9)
        assert norm.scale[c] == pytest.approx(images[:, c][fg].astype(np.float64).std(), rel=1e-9)
    chunked = Normaliser.fit([images[:1], images[1:4], images[4:]], method="zscore")
    np.testing.assert_allclose(chunked.shift, norm.shift, rtol=1e-12)
    np.testing.assert_allclose(chunked.scale, norm.scale, rtol=1e-12)
    out = norm.apply(images)
    assert out.dtype == np.float32
    assert abs(out[:, 0][fg].mean()) < 1e-4 and out[:, 0][fg].std() == pytest.approx(1, rel=1e-4)
    everywhere = Normaliser.fit(images, method="zscore", foreground_threshold=None)
    assert everywhere.shift[0] == pytest.approx(images[:, 0].mean(dtype=np.float64), rel=1e-6)


def test_minmax_maps_robust_percentiles_to_minus_one_one():
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 1000, size=(4, 1, 16, 16)).astype(np.float32)
    norm = Normaliser.fit(images, method="minmax")
    lo, hi = np.percentile(images.astype(np.float64), [0.5, 99.5])
    out = norm.apply(images)
    assert out.min() == -1 and out.max() == 1
    np.testing.assert_allclose(norm.apply(np.array([lo, hi], dtype=np.float32).reshape(2, 1, 1, 1)).ravel(),
                               [-1, 1], atol=1e-5)


def test_normaliser_fitted_on_training_images_does_not_move_with_eval_data():
    rng = np.random.default_rng(4)
    train = rng.normal(50, 5, size=(5, 1, 8, 8)).astype(np.float32) + 100
    evaluation = train * 10  # another scanner scale
    for method in ("zscore", "minmax"):
        norm = Normaliser.fit(train, method=method)
        before = norm.to_dict()
        norm.apply(evaluation)
        assert norm.to_dict() == before
        restored = Normaliser.from_dict(before)
        np.testing.assert_array_equal(restored.apply(evaluation), norm.apply(evaluation))
        # the evaluation images are far outside the training distribution after normalisation
        assert norm.apply(evaluation).mean() > norm.apply(train).mean() + 0.5
        assert Normaliser.fit(np.concatenate([train, evaluation]), method=method).to_dict() != before


def test_normaliser_errors_are_clear():
    with pytest.raises(DataError, match="no foreground"):
        Normaliser.fit(np.zeros((2, 1, 4, 4), dtype=np.float32))
    with pytest.raises(DataError, match="constant"):
        Normaliser.fit(np.full((2, 1, 4, 4), 3.0, dtype=np.float32))
    with pytest.raises(DataError, match="channels"):
        Normaliser.identity(2).apply(np.zeros((1, 3, 4, 4), dtype=np.float32))


def test_config_normalises_and_round_trips():
    cfg = build_preprocess_config({"pad_to": 64, "patch_size": [32, 16], "remap": {"0": 0, "1": 1, "2": 1},
                                   "normalise": "minmax", "skip_empty": True})
    assert cfg.pad_to == (64, 64) and cfg.patch_size == (32, 16) and cfg.patch_stride == (32, 16)
    assert cfg.remap == {0: 0, 1: 1, 2: 1} and cfg.output_classes == 2
    assert PreprocessConfig(remap=[[2, 1], [0, 0], [1, 1]]).remap == cfg.remap
    assert build_preprocess_config(cfg.to_dict()) == cfg
    assert PreprocessConfig(pad_to=(64, 64)) == PreprocessConfig(pad_to=64)
    # slicing fields only: normalisation and training-time steps do not change the cache
    assert cfg.cache_fields() == PreprocessConfig(pad_to=64, remap={0: 0, 1: 1, 2: 1}).cache_fields()
    assert cfg.cache_fields() != PreprocessConfig(pad_to=64, remap={0: 0, 1: 1, 2: 1}, axis=1).cache_fields()


def test_config_errors_name_every_field():
    with pytest.raises(StudyError, match="padto: unknown preprocess option"):
        build_preprocess_config({"padto": 64, "axis": 1})
    with pytest.raises(StudyError) as err:
        PreprocessConfig(axis=3, pad_to=-1, normalise="l2", patch_stride=4, num_classes=1)
    text = str(err.value)
    for field in ("axis", "pad_to", "normalise", "patch_stride", "num_classes"):
        assert f"{field}:" in text
    with pytest.raises(StudyError, match="remap: maps to class 3 but num_classes is 2"):
        PreprocessConfig(remap={0: 0, 1: 3}, num_classes=2)
    with pytest.raises(StudyError, match="patch_size.*larger than pad_to"):
        PreprocessConfig(pad_to=16, patch_size=32)
