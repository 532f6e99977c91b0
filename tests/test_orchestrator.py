"""End to end through a real local Ray: a tiny study runs, is killed with SIGKILL mid-grid,
resumes, and ends with exactly one row per cell; the science rules are checked on the cells
that actually ran."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from synthmix.cli import main
from synthmix.datasets.splits import SplitPlan
from synthmix.orchestrator.status import study_status
from synthmix.orchestrator.store import StudyStore
from synthmix.trainers.generators.artifact import GeneratorArtifact
from test_generator_platform import plant_pickle
from tiny_study import tiny_study_yaml



def _study(tmp_path: Path, lr: float = 1e-3) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_study_yaml(lr=lr))
    return path


def _synthmix(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "synthmix.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _mtimes(paths) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in paths}


@pytest.mark.slow
def test_killed_study_resumes_with_one_row_per_cell_and_no_retraining(tmp_path: Path) -> None:
    study = _study(tmp_path)
    store = StudyStore(tmp_path / "st" / "tiny")

    # First run: SIGKILL the driver as soon as one cell has finished.
    driver = _synthmix("run", str(study), "--storage", str(tmp_path / "st"), cwd=tmp_path)
    deadline = time.monotonic() + 600  # a loaded 2-core machine took over 300 s for the first row
    while not store.finished_cells() and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.5)
    assert store.finished_cells(), driver.communicate()[0] if driver.poll() is not None else "no row in 600 s"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(2)  # the embedded Ray notices its driver is gone
    finished_before = store.finished_cells()
    generators_before = [p for p in (store.root / "artifacts" / "generators").glob("*/weights.pt")]
    before = _mtimes([store.row_file(c) for c in finished_before] + generators_before)

    # Resume: every cell ends with exactly one row; nothing finished is recomputed.
    resumed = _synthmix("resume", "tiny", "--storage", str(tmp_path / "st"), cwd=tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "real_fraction" in output and "synthetic" in output  # the closing results table
    assert _mtimes(map(Path, before)) == before

    plan = json.loads(store.plan_file.read_text())
    cell_ids = [c["cell_id"] for c in plan["cells"]]
    assert len(cell_ids) == 4 and store.finished_cells() == set(cell_ids)
    rows = pd.concat([pd.read_parquet(store.row_file(c)) for c in cell_ids], ignore_index=True)
    assert sorted(rows.cell_id) == sorted(cell_ids)

    # Rule 6: one generator per unique key, each trained once (its Train run exists once).
    keys = {c["generator_key"] for c in plan["cells"] if c["generator_key"]}
    assert len(keys) == len(plan["generator_jobs"]) == 2
    trained = [p.name for p in (store.root / "artifacts" / "generators").iterdir()]
    assert sorted(trained) == sorted(keys)

    # Rule 3: each generator saw exactly the training subset of the cells that use it.
    splits = SplitPlan.load(store.splits_file)
    for cell in plan["cells"]:
        split = splits.get(cell["fold"], cell["repeat"], cell["amount"])
        row = rows[rows.cell_id == cell["cell_id"]].iloc[0]
        assert json.loads(row.train_subjects) == list(split.train)
        if cell["generator_key"]:
            artifact = GeneratorArtifact(store.generator_dir(cell["generator_key"]))
            assert artifact.training_subjects == sorted(split.train)
            assert not set(artifact.training_subjects) & (set(split.val) | set(split.test))

    # Rule 2: the same real subjects across synthetic levels; nested across fractions.
    by_fraction = rows.groupby("real_fraction").train_subjects.agg(set)
    assert all(len(s) == 1 for s in by_fraction)
    assert set(json.loads(next(iter(by_fraction[0.5])))) < set(json.loads(next(iter(by_fraction[1.0]))))

    # Concurrency never exceeded what 2 CPUs can start (one 1-CPU training per trial).
    spans = [(t.timestamp() - d, t.timestamp()) for t, d in
             zip(pd.to_datetime([os.path.getmtime(store.row_file(c)) for c in rows.cell_id], unit="s"),
                 rows.time_cell)]
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap <= 2

    # A pickle planted as a generator's weights under the storage root: a resumed run that must
    # draw a pool from it refuses it, naming the file, and never runs it; the report reads no
    # weights at all (JSON and PNG only).
    target = tmp_path / "pwned"
    key = sorted(keys)[0]
    plant_pickle(store.generator_dir(key) / "weights.pt", target)
    shutil.rmtree(store.root / "artifacts" / "pools")
    victim = next(c["cell_id"] for c in plan["cells"] if c["generator_key"] == key)
    store.row_file(victim).unlink()
    again = _synthmix("resume", "tiny", "--storage", str(tmp_path / "st"), cwd=tmp_path)
    output = again.communicate(timeout=600)[0]
    assert again.returncode != 0 and "weights.pt: not a tensor file" in output, output
    assert victim in output and not target.exists()
    assert main(["report", str(store.root), "--out", str(tmp_path / "report.html")]) == 0
    assert not target.exists()


@pytest.mark.slow
def test_diverging_cells_fail_with_their_reason_and_the_rest_go_on(tmp_path: Path, capsys) -> None:
    # Two baseline cells (no generator to train first: a segmentation divergence is the point).
    study = tmp_path / "tiny.yaml"
    study.write_text(tiny_study_yaml(lr=1e12).replace("synthetic: [0, 1.0]", "synthetic: [0]"))
    assert main(["run", str(study), "--storage", str(tmp_path / "st")]) == 2
    err = capsys.readouterr().err
    assert "did not finish" in err and "TrainingDiverged" in err
    status = study_status("tiny", storage=tmp_path / "st")
    assert len(status.failed) == 2  # every cell ran to its own failure; none blocked the other
    assert all("TrainingDiverged" in reason and "loss" in reason for reason in status.failed.values())
    assert main(["status", "tiny", "--storage", str(tmp_path / "st")]) == 1
    assert "TrainingDiverged" in capsys.readouterr().out

    # Resuming retries the errored cells within the machine's concurrency and ends (no
    # deadlock); a divergence is deterministic, so they fail again with the same reason.
    assert main(["resume", "tiny", "--storage", str(tmp_path / "st")]) == 2
    summary = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  rf")]
    assert len(summary) == 2 and all("TrainingDiverged" in line for line in summary)
    error = json.loads(next((tmp_path / "st" / "tiny" / "errors").glob("*.json")).read_text())
    assert "Traceback" in error["traceback"] and "TrainingDiverged" in error["traceback"]


def test_invalid_study_is_rejected_before_ray_starts(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_study_yaml(real_fractions="[0.5, 1.5]")
                   .replace("architecture: [unet]", "architecture: [unet, nosuchnet]"))
    assert main(["run", str(bad), "--storage", str(tmp_path / "st")]) == 2
    err = capsys.readouterr().err
    assert "factors.real_fraction[1]" in err and "nosuchnet" in err
    assert not (tmp_path / "st" / "tiny" / "results").exists()
