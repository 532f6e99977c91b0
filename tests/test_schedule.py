"""Scheduling through a real local Ray with logical GPUs: fractional GPUs pack several trainings
on one GPU, and a cell waits (outside any slot) for the generator another cell trains. Every
training is the test-only sleeping trainer (``synthmix.orchestrator.sleep_trainer``), run on the
Ray Train worker group and resources the real training would use; rows are written as usual."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from synthmix.orchestrator.sleep_trainer import SLEEP_ENV
from synthmix.orchestrator.study_run import run_study

STUDY = """\
name: packed
seed: 0
dataset:
  phantom: {subjects: 8, size: 32, classes: 3, seed: 0}
  preprocess: {axis: 2}
split: {test: 0.25, val: 0.25, repeats: 1}
factors:
  real_fraction: [0.5, 1.0]
  synthetic: [0, 1.0]
  architecture: [unet]
  augmentation: [none]
segmenter: {batch_size: 4, max_steps: 10}
generator: {name: dcgan_wgangp, config: {steps: 4, batch_size: 8}}
mixing: {policy: additive, source: pool}
resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0.25, max_failures: 0}
"""


def _overlap(records: list[dict]) -> int:
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
def test_quarter_gpus_pack_four_trainings_and_waiting_cells_hold_no_slot(tmp_path: Path, monkeypatch) -> None:
    # 4 cells: 2 generator keys (real_fraction 0.5, 1.0) with 1 cell each, 2 cells without one.
    # 4 CPUs and 0.25 GPU per training: 4 trainings at once, all on the one GPU. The first four
    # must run together ("together": each waits until all four have started, so it fails if
    # Ray or the queue allows fewer): the two generator trainings and the two cells without a
    # generator, while the two cells that need an unfinished generator wait outside any slot
    # (had they taken a slot, the four could not meet: the queue would deadlock the meeting).
    study, trace = tmp_path / "packed.yaml", tmp_path / "trace"
    study.write_text(STUDY)
    monkeypatch.setenv(SLEEP_ENV, json.dumps({"dcgan_wgangp": 4, "unet": 2, "trace": str(trace), "together": 4}))
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        store = run_study(study, storage=tmp_path / "runs", quiet=True)
    finally:
        ray.shutdown()

    assert len(store.finished_cells()) == 4  # one row per cell, through the normal path
    records = [json.loads(p.read_text()) for p in trace.glob("*.json")]
    assert len(records) == 6  # 2 generators + 4 segmentations: each generator trained once
    assert {tuple(r["gpu_ids"]) for r in records} == {("0",)}  # all on GPU 0
    assert _overlap(records) == 4  # four at once, never more
    gens = {r["name"].removeprefix("generator-"): r for r in records if r["name"].startswith("generator-")}
    plan = json.loads((store.root / "plan.json").read_text())
    key_of = {f"cell-{c['cell_id']}": c["generator_key"] for c in plan["cells"]}
    first_four = sorted(records, key=lambda r: r["start"])[:4]
    assert sum(r["name"].startswith("generator-") for r in first_four) == 2
    assert all(key_of.get(r["name"]) is None for r in first_four if r["name"].startswith("cell-"))
    for r in records:  # no segmentation began before its generator had finished
        key = key_of.get(r["name"])
        if key:
            assert r["start"] >= gens[key]["end"], r["name"]
