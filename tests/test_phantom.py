"""The phantom dataset: deterministic files, brain-like anatomy, covariates, pose, class merges."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from synthmix.datasets.manifest import read_manifest
from synthmix.datasets.phantom import CLASS_MERGES, write_phantom_dataset
from synthmix.errors import DataError


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _image(path: Path) -> np.ndarray:
    return nib.load(path).get_fdata()


def _label(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def five_class(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """12 subjects at 48x48 with all five base classes: enough for covariate statistics."""
    out = tmp_path_factory.mktemp("phantom5")
    manifest = write_phantom_dataset(out, subjects=12, size=48, classes=5, seed=3)
    return out, pd.read_csv(manifest)


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    args = dict(subjects=3, size=32, classes=5, unlabelled=1, seed=7)
    write_phantom_dataset(tmp_path / "a", **args)
    write_phantom_dataset(tmp_path / "b", **args)
    first, second = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert len(first) == 3 + 3 + 1 + 1 + 1  # images (incl. unlabelled), labels, manifest, phantom.json
    assert first == second
    write_phantom_dataset(tmp_path / "c", **{**args, "seed": 8})
    other = _hashes(tmp_path / "c")
    assert other["images/sub-000.nii.gz"] != first["images/sub-000.nii.gz"]


def test_subjects_do_not_change_when_more_are_requested(tmp_path: Path) -> None:
    write_phantom_dataset(tmp_path / "few", subjects=2, size=32, seed=1)
    write_phantom_dataset(tmp_path / "more", subjects=4, size=32, seed=1)
    few, more = _hashes(tmp_path / "few"), _hashes(tmp_path / "more")
    for name in ("images/sub-000.nii.gz", "images/sub-001.nii.gz", "labels/sub-001.nii.gz"):
        assert few[name] == more[name]


def test_files_geometry_and_types(phantom_dir: Path) -> None:
    img = nib.load(phantom_dir / "images" / "sub-000.nii.gz")
    lab = nib.load(phantom_dir / "labels" / "sub-000.nii.gz")
    assert img.shape == lab.shape == (32, 32, 16)
    assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
    assert np.allclose(img.header.get_zooms(), (6.0, 6.0, 12.0))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.allclose(img.affine, lab.affine)
    assert np.all(np.isfinite(img.get_fdata()))


def test_all_base_classes_present_and_metadata_matches_labels(five_class) -> None:
    out, table = five_class
    spacing = nib.load(out / table.image[0]).header.get_zooms()
    voxel_ml = float(np.prod(spacing)) / 1000
    seen = set()
    for row in table.itertuples():
        label = _label(out / row.label)
        values = set(np.unique(label).tolist())
        assert {0, 1, 2, 3} <= values, row.subject_id
        seen |= values
        assert row.lesion_load == pytest.approx((label == 4).sum() * voxel_ml, abs=1e-3)
        assert row.lesion_count == ndimage.label(label == 4)[1]
    assert seen == {0, 1, 2, 3, 4}
    assert table.lesion_count.nunique() > 2  # lesion number varies
    assert (table.lesion_load > 0).mean() >= 0.75


def test_ventricles_grow_with_age(five_class) -> None:
    out, table = five_class
    csf = np.array([(_label(out / p) == 3).sum() for p in table.label])
    assert np.corrcoef(table.age, csf)[0, 1] > 0.6
    assert np.corrcoef(table.age, table.ventricle_volume)[0, 1] > 0.6
    assert table.age.max() - table.age.min() > 30


def test_tissue_contrast_skull_ring_and_visible_lesions(five_class) -> None:
    out, table = five_class
    lesion, wm, gm, csf, ring = [], [], [], [], []
    for row in table.itertuples():
        image, label = _image(out / row.image), _label(out / row.label)
        intracranial = label > 0
        shell = ndimage.binary_dilation(intracranial, iterations=2) & ~intracranial
        wm.append(image[label == 2].mean())
        gm.append(image[label == 1].mean())
        csf.append(image[label == 3].mean())
        ring.append(np.percentile(image[shell], 90))
        if (label == 4).any():
            lesion.append(image[label == 4].mean() / image[label == 2].mean())
    wm, gm, csf, ring = map(np.array, (wm, gm, csf, ring))
    assert np.all(wm > gm) and np.all(gm > csf)
    assert np.all(ring > wm)  # the skull just outside the brain is brighter than anything inside
    assert np.median(lesion) > 1.15  # lesions hyperintense to white matter


def test_pose_differs_between_subjects_but_not_the_affine(five_class) -> None:
    out, table = five_class
    affines, centroids, angles = [], [], []
    for row in table.itertuples():
        img = nib.load(out / row.label)
        brain = np.asarray(img.dataobj) > 0
        affines.append(img.affine)
        coords = np.argwhere(brain).astype(float)
        centroids.append(coords.mean(axis=0))
        # In-plane orientation of the brain's long (anterior-posterior) axis.
        xy = coords[:, :2] - coords[:, :2].mean(axis=0)
        _, vectors = np.linalg.eigh(np.cov(xy.T))
        major = vectors[:, -1] * np.sign(vectors[1, -1])
        angles.append(np.degrees(np.arctan2(major[0], major[1])))
    assert all(np.array_equal(a, affines[0]) for a in affines)
    assert np.std(np.array(centroids), axis=0)[:2].max() > 0.5  # voxels
    assert np.ptp(angles) > 8  # degrees


def test_class_merges_are_applied_to_the_same_anatomy(tmp_path: Path) -> None:
    base = read_manifest(write_phantom_dataset(tmp_path / "k5", subjects=2, size=32, classes=5, seed=4))
    full = _label(base.subjects[0].label_path)
    for classes, merge in CLASS_MERGES.items():
        manifest = read_manifest(write_phantom_dataset(tmp_path / f"k{classes}", subjects=2, size=32,
                                                       classes=classes, seed=4))
        merged = _label(manifest.subjects[0].label_path)
        assert np.array_equal(merged, np.array(merge)[full])
        assert set(np.unique(merged)) == set(range(classes))
        # The image (lesions included) does not depend on the label classes.
        assert (manifest.subjects[0].image_paths[0].read_bytes() == base.subjects[0].image_paths[0].read_bytes())


def test_unlabelled_subjects_have_no_label(phantom_unlabelled_dir: Path) -> None:
    table = pd.read_csv(phantom_unlabelled_dir / "manifest.csv", keep_default_na=False)
    assert list(table.columns[:6]) == ["subject_id", "image", "label", "labelled", "age", "lesion_load"]
    unlabelled = table[table.labelled.astype(str) == "False"]
    assert len(unlabelled) == 4 and (unlabelled.label == "").all()
    for sid in unlabelled.subject_id:
        assert (phantom_unlabelled_dir / "images" / f"{sid}.nii.gz").is_file()
        assert not (phantom_unlabelled_dir / "labels" / f"{sid}.nii.gz").exists()
    manifest = read_manifest(phantom_unlabelled_dir)
    assert manifest.unlabelled_ids == list(unlabelled.subject_id)
    assert len(manifest.labelled_ids) == 6


@pytest.mark.parametrize("bad", [dict(classes=6), dict(classes=8), dict(classes=1), dict(subjects=0), dict(size=8),
                                 dict(unlabelled=-1)])
def test_bad_arguments_are_refused(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(DataError, match="--" + next(iter(bad))):
        write_phantom_dataset(tmp_path, **{"subjects": 2, "size": 32, **bad})


def test_bias_field_makes_white_matter_vary_smoothly(five_class) -> None:
    """A quadratic trend in space explains much of the white-matter intensity (noise alone would
    give R^2 near 0; measured ~0.01 with the bias field switched off)."""
    out, table = five_class
    r2 = []
    for row in table.itertuples():
        image, label = _image(out / row.image), _label(out / row.label)
        wm = ndimage.binary_erosion(label == 2)
        x = np.argwhere(wm).astype(float)
        y = image[wm]
        design = np.c_[np.ones(len(x)), x, x ** 2, x[:, [0]] * x[:, [1]], x[:, [0]] * x[:, [2]], x[:, [1]] * x[:, [2]]]
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        r2.append(1 - (y - design @ coef).var() / y.var())
    assert np.median(r2) > 0.25


def test_seven_classes_are_004s_tumour_structure_in_the_same_head(tmp_path: Path) -> None:
    """classes=7: the 5-class subject's head with one tumour instead of its lesions, labelled in
    004's order (1 necrotic core, 2 oedema, 3 enhancing rim, 4 WM, 5 GM, 6 CSF), each tumour
    class with its own intensity; the other class counts are untouched (tested above)."""
    from synthmix.datasets.phantom import PHANTOM_CLASSES

    assert 7 in PHANTOM_CLASSES
    base = read_manifest(write_phantom_dataset(tmp_path / "k5", subjects=2, size=48, classes=5, seed=2))
    seven = read_manifest(write_phantom_dataset(tmp_path / "k7", subjects=2, size=48, classes=7, seed=2))
    table = pd.read_csv(tmp_path / "k7" / "manifest.csv")
    for s5, s7 in zip(base.subjects, seven.subjects):
        full, label = _label(s5.label_path), _label(s7.label_path)
        assert set(np.unique(label)) == set(range(7))
        tumour = (label >= 1) & (label <= 3)
        outside = ~tumour & (full != 4)  # neither the tumour nor the 5-class lesions
        as_004 = np.array([0, 5, 4, 6, 4])[full]  # base GM 1 -> 5, WM 2 -> 4, CSF 3 -> 6
        assert np.array_equal(label[outside], as_004[outside])
        image = _image(s7.image_paths[0])
        means = {c: image[label == c].mean() for c in (1, 2, 3, 4)}  # partial volume blurs the small core
        assert means[1] < means[4] < means[2] < means[3], means
    assert table.lesion_count.min() >= 1 and (table.lesion_load > 0).all()
    assert write_phantom_dataset(tmp_path / "again", subjects=2, size=48, classes=7, seed=2).read_bytes() \
        == (tmp_path / "k7" / "manifest.csv").read_bytes()
