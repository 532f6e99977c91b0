"""The preprocessed cache and loading into SliceSets, on tiny NIfTI datasets written in the test
(known contents) and end to end on the phantom."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from synthmix.datasets.cache import MARKER, _publish, build_cache, cache_key, open_cache
from synthmix.datasets.loader import fit_normaliser, load_slices, prepare_split_data
from synthmix.datasets.manifest import read_manifest
from synthmix.datasets.preprocess import Normaliser, PreprocessConfig
from synthmix.datasets.splits import SplitSpec, build_splits
from synthmix.errors import DataError

SPACING = (1.0, 1.5, 3.0)


def write_dataset(out: Path, volumes: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> Path:
    """NIfTI files with a diagonal RAS affine (already canonical) and a manifest.csv."""
    out.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*SPACING, 1.0])
    rows = []
    for sid, (image, label) in volumes.items():
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), out / f"{sid}.nii.gz")
        if label is not None:
            nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), out / f"{sid}_seg.nii.gz")
        rows.append({"subject_id": sid, "image": f"{sid}.nii.gz",
                     "label": f"{sid}_seg.nii.gz" if label is not None else ""})
    pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
    return out / "manifest.csv"


def make_volumes(n: int = 5, shape=(10, 9, 6), scale: dict[str, float] | None = None, unlabelled: int = 1,
                 seed: int = 0) -> dict:
    """Subjects with a bright block (label 1..3 inside), empty first/last axial slices."""
    rng = np.random.default_rng(seed)
    volumes = {}
    for i in range(n + unlabelled):
        sid = f"s{i}" if i < n else f"u{i}"
        image = np.zeros(shape, dtype=np.float32)
        label = np.zeros(shape, dtype=np.uint8)
        image[2:8, 2:7, 1:-1] = rng.normal(100, 10, size=(6, 5, shape[2] - 2))
        label[3:7, 3:6, 1:-1] = rng.integers(1, 4, size=(4, 3, shape[2] - 2))
        volumes[sid] = (image * (scale or {}).get(sid, 1.0), label if i < n else None)
    return volumes


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, dict]:
    volumes = make_volumes()
    return write_dataset(tmp_path / "data", volumes), volumes


def test_cache_holds_the_raw_slices_of_every_subject(dataset, tmp_path):
    manifest, volumes = dataset
    entry = build_cache(manifest, PreprocessConfig(), tmp_path / "cache")
    assert entry.subject_ids == tuple(volumes)
    assert isinstance(entry.images, np.memmap)
    assert entry.images.shape == (6 * 6, 1, 10, 9) and entry.images.dtype == np.float32
    assert entry.labels.dtype == np.uint8 and entry.num_classes == 4
    for sid, (image, label) in volumes.items():
        rows = entry.slice_indices(sid)
        np.testing.assert_array_equal(entry.images[rows][:, 0], np.moveaxis(image, 2, 0))
        expected = np.moveaxis(label, 2, 0) if label is not None else np.zeros((6, 10, 9))
        np.testing.assert_array_equal(entry.labels[rows], expected)
        np.testing.assert_array_equal(entry.position[rows], np.arange(6))
        np.testing.assert_array_equal(entry.nonempty[rows], expected.reshape(6, -1).any(axis=1))
        assert entry.spacing[sid] == (3.0, 1.0, 1.5)  # (slice, row, col) for axis 2
        assert entry.labelled[sid] == (label is not None)


def test_axis_padding_and_remap(dataset, tmp_path):
    manifest, volumes = dataset
    cfg = PreprocessConfig(axis=0, pad_to=(12, 4), remap={0: 0, 1: 1, 2: 1, 3: 1})
    entry = build_cache(manifest, cfg, tmp_path / "cache")
    image, label = volumes["s2"]
    rows = entry.slice_indices("s2")
    assert entry.images.shape[1:] == (1, 12, 4) and entry.num_classes == 2
    expected = np.pad(image, ((0, 0), (1, 2), (0, 0)))[:, :, 1:5]  # (9,6) -> pad rows to 12, crop cols to 4
    np.testing.assert_array_equal(entry.images[rows][:, 0], expected)
    np.testing.assert_array_equal(entry.labels[rows], (np.pad(label, ((0, 0), (1, 2), (0, 0)))[:, :, 1:5] > 0))
    assert entry.spacing["s2"] == (1.0, 1.5, 3.0)


def test_key_changes_with_slicing_config_and_manifest_content(dataset, tmp_path):
    manifest, volumes = dataset
    m = read_manifest(manifest)
    base = cache_key(m, PreprocessConfig())
    assert cache_key(m, PreprocessConfig(normalise="minmax", skip_empty=True, patch_size=4)) == base
    for cfg in (PreprocessConfig(axis=1), PreprocessConfig(pad_to=16), PreprocessConfig(remap={0: 0, 1: 1, 2: 1, 3: 1}),
                PreprocessConfig(num_classes=5)):
        assert cache_key(m, cfg) != base
    image, label = volumes["s0"]
    edited = write_dataset(tmp_path / "data2", {**volumes, "s0": (image + 1, label)})
    assert cache_key(read_manifest(edited), PreprocessConfig()) != base
    copied = write_dataset(tmp_path / "data3", volumes)  # same content elsewhere: same key
    assert cache_key(read_manifest(copied), PreprocessConfig()) == base


def test_reuses_a_finished_cache_and_ignores_unfinished_ones(dataset, tmp_path):
    manifest, _ = dataset
    root = tmp_path / "cache"
    key = cache_key(read_manifest(manifest), PreprocessConfig())
    (root / key).mkdir(parents=True)
    (root / key / "images.npy").write_bytes(b"half written")  # no marker: must not be used
    with pytest.raises(DataError, match="not a finished"):
        open_cache(root / key)
    entry = build_cache(manifest, PreprocessConfig(), root)
    assert entry.path == root / key and (root / key / MARKER).is_file()
    stamp = (root / key / MARKER).stat().st_mtime_ns
    again = build_cache(manifest, PreprocessConfig(), root)
    assert (root / key / MARKER).stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.images, entry.images)
    assert sorted(p.name for p in root.iterdir()) == [key]  # no temporary or stale folders left


def test_publish_keeps_the_winner(tmp_path):
    final, mine = tmp_path / "key", tmp_path / ".key.tmp-1"
    final.mkdir()
    (final / MARKER).write_text("theirs")
    mine.mkdir()
    (mine / MARKER).write_text("mine")
    _publish(mine, final)
    assert (final / MARKER).read_text() == "theirs"


def _build_in_process(manifest: str, root: str, barrier, queue) -> None:
    barrier.wait()
    entry = build_cache(manifest, PreprocessConfig(pad_to=12), root)
    queue.put((str(entry.path), float(np.asarray(entry.images).sum())))


def test_two_processes_building_at_once_end_with_one_valid_cache(dataset, tmp_path):
    manifest, _ = dataset
    root = tmp_path / "cache"
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build_in_process, args=(str(manifest), str(root), barrier, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    assert [p.name for p in root.iterdir()] == [Path(results[0][0]).name]
    entry = open_cache(results[0][0])
    fresh = build_cache(manifest, PreprocessConfig(pad_to=12), tmp_path / "fresh")
    np.testing.assert_array_equal(entry.images, fresh.images)
    np.testing.assert_array_equal(entry.labels, fresh.labels)


def test_load_slices_applies_training_steps_only_when_training(dataset, tmp_path):
    manifest, volumes = dataset
    cfg = PreprocessConfig(skip_empty=True, patch_size=(5, 5), patch_stride=(5, 3), normalise="none")
    entry = build_cache(manifest, cfg, tmp_path / "cache")
    norm = Normaliser.identity(1)
    evaluation = load_slices(entry, ["s1", "s0"], normaliser=norm, training=False, preprocess=cfg)
    assert evaluation.subjects == ["s1", "s0"] and len(evaluation) == 12
    assert evaluation.images.shape[2:] == (10, 9) and evaluation.labels.dtype == np.int64
    sid, image, label, spacing = next(evaluation.volumes())
    np.testing.assert_array_equal(image[:, 0], np.moveaxis(volumes["s1"][0], 2, 0))
    train = load_slices(entry, ["s1", "s0"], normaliser=norm, training=True, preprocess=cfg)
    # 4 non-empty slices per subject, each tiled into 2 x 3 patches of 5 x 5
    assert train.images.shape == (2 * 4 * 6, 1, 5, 5)
    assert set(train.positions.tolist()) == {1, 2, 3, 4}
    np.testing.assert_array_equal(train.images[0, 0], np.moveaxis(volumes["s1"][0], 2, 0)[1, 0:5, 0:5])
    with pytest.raises(DataError, match="'nobody'"):
        load_slices(entry, ["s0", "nobody"], normaliser=norm, training=True, preprocess=cfg)
    with pytest.raises(DataError, match="'u5' has no label"):
        load_slices(entry, ["u5"], normaliser=norm, training=True, preprocess=cfg)
    with pytest.raises(DataError, match="was built with"):
        load_slices(entry, ["s0"], normaliser=norm, training=True, preprocess=PreprocessConfig(axis=0))


def test_normaliser_comes_from_training_subjects_only(tmp_path):
    # val/test subjects on a 10x (then 100x) intensity scale: the statistics must not move.
    split = build_splits([f"s{i}" for i in range(5)], SplitSpec(test=0.2, val=0.2, seed=3)).get(0, 0, 1.0)
    held_out = split.val + split.test
    cfg = PreprocessConfig()
    normalisers = []
    for factor in (10.0, 100.0):
        volumes = make_volumes(scale={sid: factor for sid in held_out})
        manifest = write_dataset(tmp_path / f"data{factor}", volumes)
        train, val, test, norm = prepare_split_data(manifest, split, cfg, tmp_path / "cache")
        normalisers.append(norm.to_dict())
        stack = np.concatenate([np.moveaxis(volumes[s][0], 2, 0) for s in split.train])
        fg = stack[stack > 0].astype(np.float64)
        assert norm.shift[0] == pytest.approx(fg.mean(), rel=1e-6)
        assert norm.scale[0] == pytest.approx(fg.std(), rel=1e-6)
        assert train.subjects == list(split.train) and val.subjects == list(split.val)
        assert test.subjects == list(split.test)
        assert val.images.max() > 5 * train.images.max()  # held-out scale left visible, not re-fitted
    assert normalisers[0] == normalisers[1]


def test_loading_from_cache_equals_decoding_again_on_the_phantom(phantom_manifest, tmp_path):
    from synthmix.datasets.cache import subject_slices

    manifest = read_manifest(phantom_manifest)
    split = build_splits(manifest.labelled_ids, SplitSpec(folds=3, fractions=[0.5, 1.0], seed=1)).get(1, 0, 0.5)
    cfg = PreprocessConfig(pad_to=40, skip_empty=True, normalise="zscore")
    train, val, test, norm = prepare_split_data(phantom_manifest, split, cfg, tmp_path / "cache")
    assert set(train.subjects) == set(split.train)
    for sliceset, subjects, training in ((train, split.train, True), (test, split.test, False)):
        images, labels = [], []
        for sid in subjects:
            img, lab, spacing = subject_slices(manifest.subject(sid), cfg)
            keep = lab.reshape(len(lab), -1).any(axis=1) if training else np.ones(len(lab), bool)
            images.append(img[keep])
            labels.append(lab[keep])
            assert sliceset.spacing[sid] == spacing
        np.testing.assert_array_equal(sliceset.images, norm.apply(np.concatenate(images)))
        np.testing.assert_array_equal(sliceset.labels, np.concatenate(labels))
    assert fit_normaliser(open_cache(build_cache(manifest, cfg, tmp_path / "cache").path), split.train, cfg) == norm
