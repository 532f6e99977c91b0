"""Resize and resample, regions of interest and several modalities on the awkward NIfTI dataset:
the geometry ``synthmix plan`` computes from headers is what the cache holds, images are
interpolated and labels nearest-neighbour, the spacing metrics see is that of the resampled
slices, and a labels region of interest is fitted on training subjects only."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from awkward_data import SPACING, SUBJECTS, write_awkward_dataset
from synthmix.datasets.cache import build_cache
from synthmix.datasets.loader import fit_normaliser, load_slices
from synthmix.datasets.manifest import read_manifest
from synthmix.datasets.nifti import header_geometry, load_subject
from synthmix.datasets.preprocess import (PreprocessConfig, build_preprocess_config, crop_box_voxels,
                                          resample_slices, slice_geometry)
from synthmix.datasets.roi import label_box_mm, resolve_crop
from synthmix.errors import DataError
from synthmix.trainers.metrics import segmentation_metrics

SIZES = {sid: size for sid, _, size in SUBJECTS}


@pytest.fixture(scope="module")
def awkward(tmp_path_factory) -> Path:
    return write_awkward_dataset(tmp_path_factory.mktemp("awkward"))


def test_header_geometry_is_the_loaded_geometry(awkward):
    for record in read_manifest(awkward).subjects:
        shape, affine = header_geometry(record.image_paths[0])
        loaded = load_subject(record)
        assert shape == loaded.image.shape[1:] == (*SIZES[record.subject_id], 6)
        np.testing.assert_allclose(affine, loaded.affine)
        assert affine[0, 0] > 0 and affine[1, 1] > 0  # LPS on disk, RAS after reorientation
        assert abs(affine[0, 1]) > 0.05  # still oblique


@pytest.mark.parametrize("options", [{"resize": [48, 40]}, {"spacing": [1.5, 1.5], "pad_to": [28, 30]},
                                     {"crop": {"box": [[4, 40], [3, 33], [1, 6]]}, "resize": 32}])
def test_the_cache_holds_what_the_headers_predict(awkward, tmp_path, options):
    config = build_preprocess_config({"axis": 2, **options})
    manifest = read_manifest(awkward)
    entry = build_cache(manifest, config, tmp_path)
    for record in manifest.subjects:
        g = slice_geometry(*header_geometry(record.image_paths[0]), config)
        rows = entry.slice_indices(record.subject_id)
        assert entry.images[rows].shape == (g.slices, 2, *g.size)  # two modalities as channels
        assert entry.spacing[record.subject_id] == pytest.approx(g.spacing)


def test_resampled_spacing_is_what_metrics_use(awkward, tmp_path):
    config = build_preprocess_config({"resize": [48, 40]})
    entry = build_cache(awkward, config, tmp_path)
    for sid, (nx, ny) in SIZES.items():
        # Pixel-area alignment: the field of view is kept, so the new spacing is old x size / new size.
        assert entry.spacing[sid] == pytest.approx((SPACING[2], SPACING[0] * nx / 48, SPACING[1] * ny / 40))
    val = load_slices(entry, ["sub-02"], normaliser=None, training=False, preprocess=config)
    _, _, labels, spacing = next(val.volumes())
    shifted = np.zeros_like(labels)
    shifted[:, 1:] = labels[:, :-1]  # every boundary moves by exactly one row
    metrics = segmentation_metrics(shifted, labels, num_classes=3, spacing=spacing)
    assert metrics["hd95_1"] == pytest.approx(SPACING[0] * 51 / 48)  # one resampled row, in mm
    assert metrics["hd95_1"] != pytest.approx(SPACING[0])


def test_images_interpolate_and_labels_stay_labels():
    labels = np.array([[[0, 1], [2, 1]]])
    ramp = np.tile(np.arange(4, dtype=np.float32), (1, 1, 4, 1))
    images, _ = resample_slices(ramp, np.zeros((1, 4, 4), np.int64), (8, 8))
    _, up = resample_slices(np.zeros((1, 1, 2, 2), np.float32), labels, (8, 8))
    np.testing.assert_array_equal(up, labels.repeat(4, 1).repeat(4, 2))  # nearest: integer factors repeat
    assert up.dtype == labels.dtype
    inner = images[0, 0, :, 2:-2]
    np.testing.assert_allclose(np.diff(inner, axis=1), 0.5, atol=1e-5)  # bilinear keeps a ramp linear
    checker = (np.indices((1, 1, 32, 32)).sum(0) % 2).astype(np.float32)
    small, _ = resample_slices(checker, np.zeros((1, 32, 32), np.int64), (8, 8))
    assert np.abs(small - 0.5).max() < 0.01  # anti-aliased: no moire when shrinking, borders included
    flat, _ = resample_slices(np.full((1, 1, 37, 45), 7.0, np.float32), np.zeros((1, 37, 45), np.int64), (8, 11))
    np.testing.assert_allclose(flat, 7.0, rtol=1e-6)  # a constant image stays constant up to its edges


def test_spacing_sets_the_size_from_each_subjects_voxels():
    config = build_preprocess_config({"spacing": 1.5})
    g = slice_geometry((45, 37, 6), np.diag([*SPACING, 1]), config)
    assert g.resampled == (27, 30) and g.spacing == pytest.approx((3.0, 1.5, 1.2 * 37 / 30))


def test_crop_box_must_fit_every_volume():
    config = build_preprocess_config({"crop": {"box": [[0, 46], [0, 10], [0, 6]]}})
    with pytest.raises(DataError, match=r"subject sub-01: preprocess.crop.box .* reaches beyond the volume of "
                                        r"shape 45x37x6"):
        slice_geometry((45, 37, 6), np.eye(4), config, where="subject sub-01")
    with pytest.raises(DataError, match="lies outside"):
        crop_box_voxels({"box_mm": [[100, 110], [0, 1], [0, 1]]}, (45, 37, 6), np.eye(4))


def test_labels_crop_is_fitted_on_training_subjects_only(awkward, tmp_path):
    data = Path(shutil.copytree(awkward.parent, tmp_path / "data"))
    config = build_preprocess_config({"crop": {"labels": True, "margin_mm": 4}, "resize": 32})
    train = ["sub-01", "sub-02", "sub-04"]
    fitted = resolve_crop(read_manifest(data), config, train)
    box = np.asarray(fitted.crop["box_mm"])
    # The union of the training labels' boxes, grown by the margin on every side.
    manifest = read_manifest(data)
    boxes = np.stack([label_box_mm(manifest.subject(s), config) for s in train])
    np.testing.assert_allclose(box[:, 0], boxes[:, :, 0].min(0) - 4, atol=1e-3)
    np.testing.assert_allclose(box[:, 1], boxes[:, :, 1].max(0) + 4, atol=1e-3)
    # A test subject's label, however large, does not move the box.
    path = data / "labels" / "sub-06.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.ones(img.shape, np.uint8), img.affine), path)
    assert resolve_crop(read_manifest(data), config, train).crop == fitted.crop
    # Every training label voxel lies inside the region the cache keeps.
    entry = build_cache(data, fitted, tmp_path / "cache")
    for sid in train:
        record = manifest.subject(sid)
        loaded = load_subject(record)
        g = slice_geometry(loaded.image.shape[1:], loaded.affine, fitted)
        inside = np.zeros(loaded.label.shape, bool)
        inside[g.crop] = True
        assert loaded.label[~inside].max(initial=0) == 0
        assert entry.images[entry.slice_indices(sid)].shape[2:] == (32, 32)
    assert all(c < n for c, n in zip(g.cropped, SIZES["sub-04"]))  # the region is smaller than the volume


def test_two_modalities_are_normalised_per_channel(awkward, tmp_path):
    config = build_preprocess_config({"resize": [48, 40], "foreground_threshold": None})
    entry = build_cache(awkward, config, tmp_path)
    train = ["sub-01", "sub-02", "sub-04"]
    normaliser = fit_normaliser(entry, train, config)
    assert len(normaliser.shift) == 2 and normaliser.shift[0] != pytest.approx(normaliser.shift[1])
    images = load_slices(entry, train, normaliser=normaliser, training=False, preprocess=config).images
    for c in range(2):
        assert images[:, c].mean() == pytest.approx(0, abs=1e-4) and images[:, c].std() == pytest.approx(1, abs=1e-3)


def test_config_round_trips_with_the_new_options():
    config = PreprocessConfig(resize=32, crop={"box": ((1, 5), (0, 4), (0, 2))}, patch_size=16)
    assert config.resize == (32, 32) and config.crop == {"box": [[1, 5], [0, 4], [0, 2]]}
    assert build_preprocess_config(config.to_dict()) == config
    assert "resize" not in PreprocessConfig().cache_fields()  # old caches keep their keys
