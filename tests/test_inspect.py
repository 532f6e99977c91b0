"""``synthmix data inspect`` and ``synthmix data phantom``: report contents, problems, exit codes."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthmix.cli import main
from synthmix.datasets.inspect import inspect_dataset
from synthmix.errors import DataError


@pytest.fixture
def broken(phantom_dir: Path, tmp_path: Path) -> Path:
    """A copy of the phantom with three bad subjects: corrupt image, NaN image, missing label."""
    data = Path(shutil.copytree(phantom_dir, tmp_path / "broken"))
    (data / "images" / "sub-001.nii.gz").write_bytes(b"garbage")
    img = nib.load(data / "images" / "sub-004.nii.gz")
    values = img.get_fdata().astype(np.float32)
    values[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(values, img.affine), data / "images" / "sub-004.nii.gz")
    (data / "labels" / "sub-006.nii.gz").unlink()
    return data


def test_report_matches_an_independent_count(phantom_dir: Path) -> None:
    report = inspect_dataset(phantom_dir)
    assert report.problems == []
    assert (report.labelled, report.unlabelled, report.loaded) == (8, 0, 8)
    assert report.shapes == Counter({(32, 32, 16): 8})
    assert report.spacings == Counter({(6.0, 6.0, 12.0): 8})

    voxels: Counter = Counter()
    low, high = np.inf, -np.inf
    for i in range(8):
        label = np.asarray(nib.load(phantom_dir / "labels" / f"sub-{i:03d}.nii.gz").dataobj)
        voxels.update(dict(zip(*np.unique(label, return_counts=True))))
        image = nib.load(phantom_dir / "images" / f"sub-{i:03d}.nii.gz").get_fdata()
        low, high = min(low, image.min()), max(high, image.max())
    assert dict(report.class_voxels) == {int(k): int(v) for k, v in voxels.items()}
    assert report.intensity["image"].minimum == pytest.approx(low)
    assert report.intensity["image"].maximum == pytest.approx(high)

    text = report.render()
    for expected in ("8 labelled, 0 unlabelled", "32x32x16 (8 subjects)", "6x6x12 mm", "problems    none",
                     "age: min", "lesion_load"):
        assert expected in text
    share = voxels[3] / sum(voxels.values())
    assert f"3: {share:8.3%}" in text


def test_bad_subjects_are_listed_not_raised(broken: Path) -> None:
    report = inspect_dataset(broken)
    assert report.loaded == 5
    assert len(report.problems) == 3
    by_subject = {sid: [p for p in report.problems if sid in p] for sid in ("sub-001", "sub-004", "sub-006")}
    assert "cannot read image file" in by_subject["sub-001"][0]
    assert "NaN or infinite" in by_subject["sub-004"][0]
    assert "label file not found" in by_subject["sub-006"][0]
    assert "problems    3" in report.render()


def test_non_consecutive_labels_get_a_note(tmp_path: Path) -> None:
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), affine), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image(np.array([0, 1, 2, 4] * 16, np.uint8).reshape(4, 4, 4), affine), tmp_path / "l.nii.gz")
    (tmp_path / "manifest.csv").write_text("subject_id,image,label\nbrats-1,i.nii.gz,l.nii.gz\n")
    report = inspect_dataset(tmp_path)
    assert report.problems == []
    assert "not consecutive" in report.render()


def test_unreadable_manifest_raises(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("")
    with pytest.raises(DataError, match="empty manifest"):
        inspect_dataset(tmp_path)


def test_cli_phantom_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ph"
    args = ["data", "phantom", "--out", str(out), "--subjects", "3", "--size", "16", "--classes", "3",
            "--unlabelled", "2", "--seed", "5"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'manifest.csv'}" in printed
    assert "3 labelled, 2 unlabelled" in printed and "16x16x8" in printed
    assert len(list((out / "images").iterdir())) == 5 and len(list((out / "labels").iterdir())) == 3

    assert main(["data", "inspect", str(out / "manifest.csv")]) == 0
    assert "problems    none" in capsys.readouterr().out


def test_cli_inspect_exit_codes(broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "inspect", str(broken)]) == 1
    assert "sub-001" in capsys.readouterr().out

    assert main(["data", "inspect", str(tmp_path / "nowhere")]) == 2
    assert "manifest not found" in capsys.readouterr().err

    assert main(["data", "phantom", "--out", str(tmp_path / "x"), "--classes", "9"]) == 2
    assert "--classes must be one of 2, 3, 4, 5, 7" in capsys.readouterr().err
