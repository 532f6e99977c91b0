"""`synthmix report`: one self-contained HTML page with the table, comparisons, plots and the
study's generators."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from synthmix.cli import main  # noqa: E402
from synthmix.results.simulate import simulate_results  # noqa: E402

FACTORS = {"real_fraction": [0.5, 1.0], "synthetic": [0, 1.0]}


def _study(root: Path) -> Path:
    rows = simulate_results(factors=FACTORS, folds=1, repeats=4, effects={"synthetic": {1.0: 0.05}},
                            study="tiny", seed=1)
    (root / "results").mkdir(parents=True)
    cells = rows[["cell_id", *FACTORS, "fold", "repeat"]].to_dict("records")
    (root / "plan.json").write_text(json.dumps({"study": "tiny", "factors": list(FACTORS),
                                                "baseline": {"synthetic": 0}, "cells": cells}))
    for i in range(len(rows)):
        rows.iloc[[i]].to_parquet(root / "results" / f"{rows.loc[i, 'cell_id']}.parquet", index=False)
    generator = root / "artifacts" / "generators" / "key123"
    generator.mkdir(parents=True)
    (generator / "quality.json").write_text(json.dumps({"swd": 12.5, "swd_untrained": 99.0}))
    plt.imsave(generator / "samples.png", [[0.0, 1.0], [1.0, 0.0]])
    plt.imsave(generator / "real.png", [[1.0, 0.0], [0.0, 1.0]])
    (generator / "generator.json").write_text(json.dumps({"family": "dcgan_wgangp", "selection": {
        "by": "swd", "chosen_step": 200, "snapshots": [{"step": 100, "score": 30.0}, {"step": 200, "score": 12.5}]}}))
    pool = root / "artifacts" / "pools" / "poolkey1"
    pool.mkdir(parents=True)
    (pool / "pool.json").write_text(json.dumps({"key": "poolkey1", "generator": "key123", "drawn": 40, "kept": 20,
                                                "steps": [{"name": "blur", "removed": 4}]}))
    (root / "errors").mkdir()
    (root / "errors" / "lost-cell.json").write_text(json.dumps({"error": "TrainingDiverged: loss nan"}))
    return root


def test_report_holds_table_tests_plots_and_generators(tmp_path: Path, capsys) -> None:
    root = _study(tmp_path / "storage" / "tiny")
    out = tmp_path / "report.html"
    assert main(["report", "tiny", "--storage", str(tmp_path / "storage"), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text()
    assert "synthmix study tiny" in page and "dice_mean: mean (std)" in page
    assert "Comparisons with the baseline" in page and "p_adjusted" in page and "cohens_d_pooled" in page
    images = page.count("data:image/png;base64,")
    assert images == 4  # line plot, box plot, the real and the synthetic grid
    assert "kept step 200" in page and "drawn 40, kept 20" in page and "blur removed 4" in page
    sample = base64.b64encode((root / "artifacts/generators/key123/samples.png").read_bytes()).decode()
    assert sample in page and "key123" in page and "12.5" in page
    assert "lost-cell" in page  # the failed cell is listed


def test_report_of_a_missing_study_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["report", "nosuch", "--storage", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "nosuch" in capsys.readouterr().err and not (tmp_path / "r.html").exists()
