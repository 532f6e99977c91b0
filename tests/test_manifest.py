"""Manifests: parsing, path resolution, multi-modality, validation errors, fingerprint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from synthmix.datasets.manifest import read_manifest, scan_manifest
from synthmix.errors import DataError


@pytest.fixture
def dataset(phantom_dir: Path, tmp_path: Path) -> Path:
    """A private, editable copy of the shared phantom dataset."""
    return Path(shutil.copytree(phantom_dir, tmp_path / "data"))


def _write(folder: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _rows(folder: Path) -> list[dict]:
    return pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False).to_dict("records")


def test_reads_the_phantom_manifest(phantom_dir: Path, phantom_manifest: Path) -> None:
    manifest = read_manifest(phantom_dir)  # a folder finds its manifest.csv
    assert manifest.path == phantom_manifest
    assert [s.subject_id for s in manifest.subjects] == [f"sub-{i:03d}" for i in range(8)]
    assert manifest.labelled_ids == [s.subject_id for s in manifest.subjects] and manifest.unlabelled_ids == []
    first = manifest.subjects[0]
    assert first.image_paths == (phantom_dir / "images" / "sub-000.nii.gz",)
    assert first.label_path == phantom_dir / "labels" / "sub-000.nii.gz" and first.labelled
    assert all(p.is_absolute() for s in manifest.subjects for p in s.image_paths)
    assert set(manifest.metadata.columns) >= {"age", "lesion_load"}
    assert list(manifest.metadata.index) == manifest.labelled_ids
    assert pd.api.types.is_float_dtype(manifest.metadata["age"])
    assert first.metadata["age"] == manifest.metadata.loc["sub-000", "age"]
    assert manifest.modalities == ("image",)


def test_relative_paths_are_relative_to_the_manifest_not_the_cwd(phantom_manifest: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = read_manifest(phantom_manifest)
    assert manifest.subjects[0].image_paths[0].is_file()


def test_parquet_reads_like_csv(dataset: Path) -> None:
    table = pd.read_csv(dataset / "manifest.csv", keep_default_na=False)
    (dataset / "manifest.csv").unlink()
    table.to_parquet(dataset / "manifest.parquet")
    parquet = read_manifest(dataset)
    assert parquet.path.name == "manifest.parquet"
    assert parquet.labelled_ids == [f"sub-{i:03d}" for i in range(8)]
    assert parquet.subjects[3].image_paths[0] == dataset / "images" / "sub-003.nii.gz"
    assert parquet.metadata["age"].tolist() == table["age"].tolist()


def test_several_modalities_by_separator_or_by_columns(dataset: Path) -> None:
    rows = [{"subject_id": "a", "image": "images/sub-000.nii.gz; images/sub-001.nii.gz",
             "label": "labels/sub-000.nii.gz"}]
    manifest = read_manifest(_write(dataset, rows, "multi.csv"))
    assert manifest.subjects[0].image_paths == (dataset / "images/sub-000.nii.gz", dataset / "images/sub-001.nii.gz")
    assert manifest.modalities == ("image0", "image1")

    rows = [{"subject_id": "a", "image_t1": "images/sub-000.nii.gz", "image_flair": "images/sub-001.nii.gz",
             "label": "labels/sub-000.nii.gz", "site": "x"}]
    manifest = read_manifest(_write(dataset, rows, "columns.csv"))
    assert manifest.modalities == ("t1", "flair")
    assert manifest.subjects[0].image_paths[1] == dataset / "images/sub-001.nii.gz"
    assert list(manifest.metadata.columns) == ["site"]

    rows[0]["image"] = "images/sub-000.nii.gz"
    with pytest.raises(DataError, match="not both"):
        read_manifest(_write(dataset, rows, "both.csv"))


def test_labelled_flag_and_unlabelled_subjects(dataset: Path) -> None:
    rows = _rows(dataset)[:3]
    rows[0]["labelled"] = "no"  # has a label file, but is to be treated as unlabelled
    rows[1]["label"], rows[1]["labelled"] = "", ""  # no label: unlabelled
    rows[2]["labelled"] = "TRUE"
    manifest = read_manifest(_write(dataset, rows, "flags.csv"))
    assert manifest.labelled_ids == ["sub-002"]
    assert manifest.unlabelled_ids == ["sub-000", "sub-001"]
    assert manifest.subject("sub-000").label_path is not None


@pytest.mark.parametrize("content,match", [
    ("", "empty manifest"),
    ("subject_id,image,label\n", "empty manifest"),
    ("subject_id,image\nsub-0,images/sub-000.nii.gz\n", "missing required column 'label'"),
    ("subject,image,label\nsub-0,images/sub-000.nii.gz,\n", "missing required column 'subject_id'"),
    ("subject_id,label\nsub-0,\n", "missing required column 'image'"),
])
def test_unusable_tables_raise(dataset: Path, content: str, match: str) -> None:
    path = dataset / "broken.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as err:
        read_manifest(path)
    assert "broken.csv" in str(err.value)


def test_row_problems_are_all_listed_with_line_and_subject(dataset: Path) -> None:
    rows = _rows(dataset)[:5]
    rows[1]["subject_id"] = "sub-000"  # duplicate of line 2
    rows[2]["image"] = "images/nope.nii.gz"  # missing file
    rows[3]["label"], rows[3]["labelled"] = "", "True"  # labelled without label
    rows[4]["labelled"] = "maybe"
    path = _write(dataset, rows, "bad.csv")
    with pytest.raises(DataError) as err:
        read_manifest(path)
    message = str(err.value)
    assert "4 problem(s)" in message
    assert "duplicate subject_id 'sub-000' on line 2, line 3" in message
    assert "line 4 (subject 'sub-002'): image file not found: " + str(dataset / "images" / "nope.nii.gz") in message
    assert "line 5 (subject 'sub-003'): marked labelled but has no label path" in message
    assert "line 6 (subject 'sub-004'): 'labelled' must be true or false" in message
    # scan_manifest returns the same problems without raising
    manifest, problems = scan_manifest(path)
    assert len(problems) == 4 and len(manifest.subjects) == 5


def test_missing_manifest_or_folder_without_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="no manifest.csv or manifest.parquet"):
        read_manifest(tmp_path)


def test_fingerprint_follows_content_not_location(dataset: Path, tmp_path: Path) -> None:
    original = read_manifest(dataset).fingerprint()
    assert len(original) == 32 and read_manifest(dataset).fingerprint() == original

    moved = Path(shutil.copytree(dataset, tmp_path / "elsewhere"))
    assert read_manifest(moved).fingerprint() == original

    rows = _rows(dataset)
    _write(moved, rows[::-1])  # row order does not matter
    assert read_manifest(moved).fingerprint() == original

    rows[0]["age"] = "99.0"
    _write(moved, rows)
    assert read_manifest(moved).fingerprint() != original

    edited = Path(shutil.copytree(dataset, tmp_path / "edited"))
    label = edited / "labels" / "sub-005.nii.gz"
    data = bytearray(label.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    label.write_bytes(bytes(data))
    assert read_manifest(edited).fingerprint() != original
