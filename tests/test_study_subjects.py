"""End to end through a real local Ray: a tiny study with a budget in real exposures and fresh
synthetic draws writes its per-subject table, `results --per-subject --by age` stratifies it,
the report shows it, and editing the study's data in place makes a rerun refuse."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from synthmix.cli import main
from synthmix.datasets.splits import SplitPlan
from synthmix.orchestrator.store import StudyStore
from tiny_study import tiny_study_yaml

REAL_DRAWS, BATCH = 40, 4


def _yaml() -> str:
    text = tiny_study_yaml(real_fractions="[1.0]")
    text = text.replace("subjects: 8,", "subjects: 12,")  # 3 test subjects
    text = text.replace("pool: {size: 64}", "pool: {size: 96}")  # 6 training subjects: 96 slices at +100%
    text = text.replace("max_steps: 10", f"budget: {{real_draws: {REAL_DRAWS}}}")
    return text.replace("mixing: {policy: additive, source: pool}",
                        "mixing: {policy: additive, source: pool, draw: fresh}")


@pytest.mark.slow
def test_per_subject_table_budget_and_edited_data(tmp_path: Path, capsys) -> None:
    study = tmp_path / "tiny.yaml"
    study.write_text(_yaml())
    storage = tmp_path / "st"
    assert main(["run", str(study), "--storage", str(storage)]) == 0
    capsys.readouterr()
    store = StudyStore(storage / "tiny")
    plan = json.loads(store.plan_file.read_text())
    splits = SplitPlan.load(store.splits_file)

    # One results row per cell: the pool, the draws, and steps that grow with synthetic data.
    rows = pd.concat([pd.read_parquet(store.row_file(c["cell_id"])) for c in plan["cells"]]).set_index("synthetic")
    split = splits.get(0, 0, 1.0)
    assert (rows["n_pool_subjects"] == len(split.pool)).all() and (rows["mixing_draw"] == "fresh").all()
    assert rows.loc[0, "steps_done"] == REAL_DRAWS // BATCH and rows.loc[0, "real_draws"] == REAL_DRAWS
    assert rows.loc[0, "synthetic_draws"] == 0
    assert rows.loc[1.0, "steps_done"] == 2 * REAL_DRAWS // BATCH  # +100%: half of each batch synthetic
    assert rows.loc[1.0, "real_draws"] + rows.loc[1.0, "synthetic_draws"] == 2 * REAL_DRAWS

    # One per-subject table per cell: every test subject, its metadata, every metric.
    for cell in plan["cells"]:
        table = pd.read_parquet(store.results_dir / "subjects" / f"{cell['cell_id']}.parquet")
        assert sorted(table["subject_id"]) == sorted(split.test)
        assert {"cell_id", "fold", "repeat", "synthetic", "real_fraction", "age", "lesion_load",
                "dice_mean", "dice_1", "hd95_mean"} <= set(table.columns)
        row = rows.loc[cell["synthetic"]]
        assert table["dice_mean"].mean() == pytest.approx(row["dice_mean"], abs=1e-9)

    # Paired by subject, stratified by age; its box plot; the report shows it.
    assert main(["results", str(store.root), "--per-subject", "--by", "age", "--bins", "3",
                 "--plot", str(tmp_path / "subjects.png")]) == 0
    out = capsys.readouterr().out
    assert "Q1/3 [" in out and "Q3/3 [" in out and "n=subjects per cell" in out
    assert "paired on subject_id" in out and "age: 3 quantile bins over 3 subjects" in out
    assert (tmp_path / "subjects.png").stat().st_size > 10_000
    assert main(["report", str(store.root), "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "Per-subject results" in page and "By age" in page
    capsys.readouterr()

    # The data edited in place under the same study name: the rerun is refused before Ray starts.
    image = next((store.data_dir).glob("phantom-*/images/*.nii.gz"))
    volume = nib.load(image)
    nib.save(nib.Nifti1Image(np.asarray(volume.dataobj) * 1.01, volume.affine, volume.header), image)
    assert main(["run", str(study), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "the dataset of study 'tiny' changed since it was run" in err and "--name tiny-v2" in err
    assert json.loads(store.plan_file.read_text()) == plan  # nothing of the old study overwritten
