"""Problems found before training: every impossible combination of a study and its dataset is
rejected by ``synthmix plan`` naming the field, and by ``synthmix run`` before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import ray

from awkward_data import awkward_study_yaml, write_awkward_dataset
from synthmix.cli import main
from synthmix.errors import StudyError
from synthmix.orchestrator.study_run import prepare_study, run_study


@pytest.fixture(scope="module")
def awkward(tmp_path_factory) -> Path:
    return write_awkward_dataset(tmp_path_factory.mktemp("awkward"))


def _plan(tmp_path: Path, text: str, capsys) -> tuple[int, str]:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    code = main(["plan", str(path), "--format", "json"])
    out = capsys.readouterr()
    return code, out.err if code else out.out


IMPOSSIBLE = {
    "patch larger than the slices": (
        "crop: {box: [[0, 20], [0, 20], [0, 6]]}, patch_size: 32", {},
        "dataset.preprocess.patch_size: [32, 32] is larger than the slices, 20x20 after preprocessing"),
    "resize with patches that do not fit": (
        "resize: [48, 40], patch_size: 44", {},
        "dataset.preprocess.patch_size: [44, 44] is larger than resize [48, 40] (the slice size)"),
    "slices of different sizes": (
        "axis: 2", {},
        "dataset.preprocess: the subjects' slices come out in different sizes: 45x37 (sub-01, sub-03a, sub-06); "
        "47x39 (sub-04); 49x41 (sub-07); 51x40 (sub-02, sub-03b, sub-05); set dataset.preprocess.resize"),
    "slices too large for the generator": (
        "resize: [300, 260]", {},
        "generator: dcgan_wgangp cannot learn the training slices of 300x260: slices of 300x260 exceed the "
        "largest DCGAN size 256"),
    "a crop box outside a volume": (
        "crop: {box: [[0, 46], [0, 30], [0, 6]]}, resize: 32", {},
        "dataset.preprocess.crop.box: subject sub-01: preprocess.crop.box [[0, 46], [0, 30], [0, 6]] reaches beyond "
        "the volume of shape 45x37x6"),
    "a pool smaller than an additive level draws": (
        "resize: [48, 40], patch_size: 32, patch_stride: 16", {"pool_size": 90},
        "generator.pool.size: 90 is too small: the additive level 1 of a training subset of "
        "96 real patches draws 96 distinct synthetic samples; set it to at least 96"),
    "a sliding window option without sliding windows": (
        "resize: 32", {"segmenter": "window_size: 16"},
        "segmenter.window_size: only with inference: sliding_window"),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_plan_rejects_naming_the_field(case, awkward, tmp_path, capsys):
    preprocess, extra, message = IMPOSSIBLE[case]
    code, err = _plan(tmp_path, awkward_study_yaml(awkward, preprocess=preprocess, **extra), capsys)
    assert code == 2, err
    assert message in err


def test_a_group_column_with_a_missing_value_is_rejected(awkward, tmp_path, capsys):
    rows = pd.read_csv(awkward, dtype=str, keep_default_na=False)
    rows.loc[3, "group"] = ""
    for column in ("image_t1", "image_t2", "label"):
        rows[column] = [str(awkward.parent / p) for p in rows[column]]
    rows.to_csv(tmp_path / "manifest.csv", index=False)
    code, err = _plan(tmp_path, awkward_study_yaml(tmp_path / "manifest.csv", preprocess="resize: 32"), capsys)
    assert code == 2 and "manifest.csv line 5 (subject 'sub-03b'): empty 'group'" in err


def test_a_valid_awkward_study_plans_with_its_shapes_and_fitted_crops(awkward, tmp_path, capsys):
    preprocess = "resize: [48, 40], patch_size: 32, patch_stride: 16, crop: {labels: true, margin_mm: 5}"
    code, out = _plan(tmp_path, awkward_study_yaml(awkward, preprocess=preprocess), capsys)
    assert code == 0, out
    data = json.loads(out)["data"]
    assert data["slice_size"] == [48, 40] and data["train_size"] == [32, 32]
    (crop,) = data["fitted_crops"]
    assert crop["fold"] == 0 and crop["repeat"] == 0 and len(crop["crop"]["box_mm"]) == 3
    assert main(["plan", str(tmp_path / "study.yaml")]) == 0
    assert "slices: 48x40 whole slices for validation and test, training on 32x32 patches" in capsys.readouterr().out


def test_run_refuses_before_any_ray_process_starts(awkward, tmp_path):
    assert not ray.is_initialized()
    path = tmp_path / "study.yaml"
    path.write_text(awkward_study_yaml(awkward, preprocess="axis: 2"))  # found from the headers only
    with pytest.raises(StudyError, match="slices come out in different sizes"):
        run_study(path, storage=tmp_path / "runs", quiet=True)
    assert not ray.is_initialized()
    assert not (tmp_path / "runs" / "awkward" / "ray").exists()
    assert not (tmp_path / "runs" / "awkward" / "plan.json").exists()
    assert not (tmp_path / "runs" / "awkward" / "study.yaml").exists()  # nothing frozen for a refused study
    # Fixed, it runs under its own name (a frozen refused study would be "a different configuration").
    path.write_text(awkward_study_yaml(awkward, preprocess="resize: 32"))
    _, store, plan = prepare_study(path, storage=tmp_path / "runs")
    assert store.study_file.exists() and plan.cells
    assert not ray.is_initialized()
