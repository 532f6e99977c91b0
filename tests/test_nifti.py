"""NIfTI loading: canonical orientation, channels, and a clear DataError for every bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthmix.datasets.manifest import SubjectRecord, read_manifest
from synthmix.datasets.nifti import check_dataset, load_subject, validate_dataset
from synthmix.errors import DataError

SHAPE = (6, 5, 4)
RAS = np.diag([2.0, 2.0, 3.0, 1.0])


def _save(path: Path, data: np.ndarray, affine: np.ndarray = RAS) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _volume(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 10, size=shape).astype(np.float32)


def _labels(shape: tuple[int, ...] = SHAPE, classes: int = 3) -> np.ndarray:
    return (np.arange(np.prod(shape)) % classes).reshape(shape).astype(np.uint8)


def _record(images: list[Path], label: Path | None, sid: str = "s1") -> SubjectRecord:
    return SubjectRecord(sid, tuple(images), label, label is not None, {})


@pytest.fixture
def good(tmp_path: Path) -> tuple[Path, Path]:
    return _save(tmp_path / "img.nii.gz", _volume()), _save(tmp_path / "lab.nii.gz", _labels())


def test_loads_a_phantom_subject(phantom_manifest: Path) -> None:
    record = read_manifest(phantom_manifest).subjects[0]
    subject = load_subject(record, num_classes=4)
    assert subject.subject_id == "sub-000"
    assert subject.image.shape == (1, 32, 32, 16) and subject.image.dtype == np.float32
    assert subject.label.shape == (32, 32, 16) and subject.label.dtype == np.int64
    assert subject.spacing == pytest.approx((6.0, 6.0, 12.0))
    expected = nib.load(record.image_paths[0]).get_fdata()
    assert np.allclose(subject.image[0], expected)


def test_unlabelled_subject_has_no_label(phantom_unlabelled_dir: Path) -> None:
    manifest = read_manifest(phantom_unlabelled_dir)
    subject = load_subject(manifest.subject(manifest.unlabelled_ids[0]))
    assert subject.label is None and subject.image.shape[0] == 1


def test_modalities_become_channels(tmp_path: Path) -> None:
    a, b = _volume(1), _volume(2)
    four_d = np.stack([_volume(3), _volume(4)], axis=-1)
    paths = [_save(tmp_path / "a.nii.gz", a), _save(tmp_path / "b.nii", b),
             _save(tmp_path / "c.nii.gz", four_d)]
    subject = load_subject(_record(paths, _save(tmp_path / "l.nii.gz", _labels())))
    assert subject.image.shape == (4, *SHAPE)
    for channel, expected in enumerate([a, b, four_d[..., 0], four_d[..., 1]]):
        assert np.array_equal(subject.image[channel], expected)


def test_las_image_is_flipped_to_ras(tmp_path: Path) -> None:
    data, label = _volume(), _labels()
    las = RAS.copy()
    las[0, 0] = -2.0
    las[0, 3] = 10.0  # voxel 0 is the right-most column
    subject = load_subject(_record([_save(tmp_path / "i.nii.gz", data, las)],
                                   _save(tmp_path / "l.nii.gz", label, las)))
    assert nib.aff2axcodes(subject.affine) == ("R", "A", "S")
    assert np.array_equal(subject.image[0], data[::-1])
    assert np.array_equal(subject.label, label[::-1])
    # The same world point holds the same value before and after reorientation.
    world = las @ np.array([1, 2, 3, 1.0])
    index = np.round(np.linalg.inv(subject.affine) @ world).astype(int)[:3]
    assert subject.image[0][tuple(index)] == data[1, 2, 3]


def test_permuted_axes_reorder_spacing(tmp_path: Path) -> None:
    data = _volume(shape=(6, 5, 4))
    # Array axis 0 runs superior, axis 1 anterior, axis 2 right; spacing 3, 2, 1 mm.
    affine = np.array([[0, 0, 1.0, 0], [0, 2.0, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    subject = load_subject(_record([_save(tmp_path / "i.nii.gz", data, affine)], None))
    assert subject.image.shape == (1, 4, 5, 6)
    assert subject.spacing == pytest.approx((1.0, 2.0, 3.0))
    assert np.array_equal(subject.image[0], data.transpose(2, 1, 0))


def test_float_label_with_whole_values_and_tiny_affine_noise_are_accepted(tmp_path: Path) -> None:
    label = _save(tmp_path / "l.nii.gz", _labels().astype(np.float32), _shifted(RAS, 1e-3))
    subject = load_subject(_record([_save(tmp_path / "i.nii.gz", _volume())], label), num_classes=3)
    assert subject.label.dtype == np.int64 and np.array_equal(subject.label, _labels())


def test_trailing_singleton_label_axis_is_dropped(tmp_path: Path) -> None:
    label = _save(tmp_path / "l.nii.gz", _labels()[..., None])
    subject = load_subject(_record([_save(tmp_path / "i.nii.gz", _volume())], label))
    assert subject.label.shape == SHAPE


def _shifted(affine: np.ndarray, mm: float) -> np.ndarray:
    moved = affine.copy()
    moved[1, 3] += mm
    return moved


def _corrupt(path: Path) -> None:
    path.write_bytes(b"this is not a NIfTI file at all" * 10)


def _truncated(path: Path) -> None:
    """A complete header, then half the voxels (an interrupted copy of an uncompressed file)."""
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: 352 + (len(raw) - 352) // 2]))


def _cut_gzip(path: Path) -> None:
    """The compressed stream cut short (an interrupted download)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.8)])


BAD_CASES = {
    # case: (how to break the good pair, which file the message must name, what it must say)
    "missing image": (lambda i, l: i.unlink(), "image", "not found"),
    "missing label": (lambda i, l: l.unlink(), "label", "not found"),
    "corrupt image": (lambda i, l: _corrupt(i), "image", "cannot read image file"),
    "truncated label": (lambda i, l: _truncated(l), "label", "cannot read label file"),
    "cut gzip image": (lambda i, l: _cut_gzip(i), "image", "cannot read image file"),
    "empty image file": (lambda i, l: i.write_bytes(b""), "image", "cannot read image file"),
    "shape mismatch": (lambda i, l: _save(l, _labels((6, 5, 3))), "label", "has shape 6x5x3 but image"),
    "non-integer label": (lambda i, l: _save(l, _labels().astype(np.float32) + 0.5), "label", "non-integer"),
    "label out of range": (lambda i, l: _save(l, _labels(classes=5)), "label", "values 3, 4 outside 0..2"),
    "negative label": (lambda i, l: _save(l, _labels().astype(np.int16) - 1), "label", "values -1 outside"),
    "nan intensity": (lambda i, l: _save(i, np.where(_labels() == 1, np.nan, _volume()).astype(np.float32)),
                      "image", "NaN or infinite"),
    "inf intensity": (lambda i, l: _save(i, np.where(_labels() == 2, np.inf, _volume()).astype(np.float32)),
                      "image", "NaN or infinite"),
    "affines disagree": (lambda i, l: _save(l, _labels(), _shifted(RAS, 5.0)), "label", "up to 5 mm apart"),
    "4D label": (lambda i, l: _save(l, np.stack([_labels(), _labels()], axis=-1)), "label", "is 4D"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_subject_and_file(good: tuple[Path, Path], case: str) -> None:
    image, label = good
    breaker, culprit, says = BAD_CASES[case]
    breaker(image, label)
    with pytest.raises(DataError) as err:
        load_subject(_record([image], label, sid="patient-7"), num_classes=3)
    message = str(err.value)
    assert "'patient-7'" in message
    assert str(image if culprit == "image" else label) in message
    assert says in message


def test_modalities_of_different_shapes(tmp_path: Path) -> None:
    a = _save(tmp_path / "a.nii.gz", _volume())
    b = _save(tmp_path / "b.nii.gz", _volume(shape=(6, 5, 5)))
    with pytest.raises(DataError, match="modalities have different shapes") as err:
        load_subject(_record([a, b], None))
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_several_problems_of_one_subject_are_all_reported(good: tuple[Path, Path]) -> None:
    image, label = good
    _save(image, np.full(SHAPE, np.nan, dtype=np.float32))
    _save(label, _labels(classes=4))
    with pytest.raises(DataError) as err:
        load_subject(_record([image], label), num_classes=2)
    assert "NaN" in str(err.value) and "values 2, 3 outside 0..1" in str(err.value)


def test_validate_and_check_list_every_bad_subject(phantom_dir: Path, tmp_path: Path) -> None:
    import shutil

    data = Path(shutil.copytree(phantom_dir, tmp_path / "data"))
    assert validate_dataset(data, num_classes=4) == []
    check_dataset(read_manifest(data), num_classes=4)  # a clean dataset passes

    _corrupt(data / "images" / "sub-002.nii.gz")
    (data / "labels" / "sub-005.nii.gz").unlink()
    problems = validate_dataset(data, num_classes=3)  # the phantom has 4 classes: all out of range
    assert any("sub-002" in p and "cannot read image file" in p for p in problems)
    assert sum("sub-005" in p for p in problems) == 1 and any("label file not found" in p for p in problems)
    assert sum("outside 0..2" in p for p in problems) == 6  # the other six subjects
    with pytest.raises(DataError) as err:
        check_dataset(data, num_classes=3)
    assert f"{len(problems)} problem(s)" in str(err.value)
    assert all(p in str(err.value) for p in problems)


def test_different_channel_counts_across_subjects(tmp_path: Path) -> None:
    _save(tmp_path / "a.nii.gz", _volume())
    _save(tmp_path / "b.nii.gz", np.stack([_volume(), _volume(1)], axis=-1))
    (tmp_path / "manifest.csv").write_text("subject_id,image,label\ns1,a.nii.gz,\ns2,b.nii.gz,\n")
    problems = validate_dataset(tmp_path)
    assert len(problems) == 1 and "different numbers of image channels" in problems[0]
