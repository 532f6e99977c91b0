"""Acceptance of the generator platform: a toy family, defined and registered here in one
line, runs through a real local Ray study end to end. It asks for unlabelled images and input
masks; the test checks what it received (rule 3), that its sampler got the subset's masks, that
its pool went through two clean-ups and two filters with the counts recorded, that a changed
filter draws a new pool without retraining, and that ``select`` kept the best snapshot.

The study names this module under ``plugins:``, so the Ray workers import it (and register the
family) too; the log of what the family received goes to ``$TOY_FAMILY_LOG``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from synthmix.trainers.generators import GENERATORS, GeneratorData, GeneratorFamily
from synthmix.trainers.synthetic import Samples


@dataclass(frozen=True)
class ToyConfig:
    steps: int = 6
    checkpoint_every: int = 3


def _log(record: dict) -> None:
    folder = os.environ.get("TOY_FAMILY_LOG")
    if folder:
        with open(Path(folder) / f"{os.getpid()}-{record['what']}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def toy_train(config: ToyConfig, data: GeneratorData, encoding, session) -> dict:
    """Learns nothing: its one weight ("level") is the step, so snapshots differ."""
    _log({"what": "train", "subjects": sorted(data.labelled.subjects), "slices": len(data.labelled),
          "unlabelled": None if data.unlabelled is None else list(data.unlabelled.shape)})
    level = torch.zeros(1)
    session.resume(models={}, optimizers={})
    while session.step < config.steps:
        level += 1
        session.end_step({"loss": 0.0}, weights=lambda: {"level": level.clone()})
    return {"level": level.clone()}


class ToySampler:
    """Images drawn from the masks: each class at its own level (scaled by the weight), plus a
    hole and a speck in every label map, and every fifth sample an all-bright outlier image."""

    def __init__(self, level: float, image_channels: int):
        self.level, self.channels = level, image_channels

    def sample(self, n: int, *, seed: int, device="cpu", masks=None) -> Samples:
        assert masks is not None, "the platform must give a conditional family masks"
        _log({"what": "sample", "n": n, "masks_shape": list(masks.shape), "classes": sorted(np.unique(masks).tolist())})
        rng = np.random.default_rng(seed)
        labels = masks.copy()
        images = (labels[:, None] * 0.5 * self.level / 6 + rng.normal(0, 0.05, (n, 1, *labels.shape[1:])))
        images = np.repeat(images, self.channels, axis=1).astype(np.float32)
        images[::5] += 50.0  # far from every real image: the nearest-neighbour filter's prey
        labels[:, 1, 1] = 1  # a speck
        return Samples(images, labels.astype(np.int64), {"latent_norm": np.ones(n)})


def toy_load(config, encoding, weights, *, seed, shape, device="cpu") -> ToySampler:
    return ToySampler(float(weights["level"]) if weights else 0.0, encoding.image_channels)


GENERATORS.add("toy", GeneratorFamily(config=lambda d: ToyConfig(**d), train=toy_train, load=toy_load,
                                      fit_shape=lambda h, w: (h, w), uses_unlabelled=True, needs_masks=True))

STUDY = """\
name: toy
seed: 0
plugins: [test_toy_family]
dataset:
  phantom: {subjects: 8, size: 32, classes: 3, unlabelled: 3, seed: 0}
split: {test: 0.25, val: 0.25, repeats: 1}
factors:
  real_fraction: [1.0]
  synthetic: [0.5]
  architecture: [unet]
segmenter:
  network: {levels: 2, base_filters: 4}
  batch_size: 4
  max_steps: 4
  val_every: 4
  checkpoint_every: 4
generator:
  name: toy
  config: {steps: 6, checkpoint_every: 3}
  select: {by: swd, every: 2}
  quality: {samples: 16, reference_steps: 2}
  pool:
    size: 64
    oversample: 3
    cleanup: [fill_holes, {name: remove_small, min_pixels: 3}]
    filters: [{name: nearest_neighbour, percentile: 75}, {name: blur, percentile: 10}]
mixing: {policy: additive, source: pool}
"""


def _records(folder: Path, what: str) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob(f"*-{what}.jsonl")) for line in p.read_text().splitlines()]


@pytest.mark.slow
def test_toy_family_through_a_real_ray_study(tmp_path: Path, monkeypatch) -> None:
    from synthmix.orchestrator.study_run import run_study
    from synthmix.trainers.generators.pools import load_pool

    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p))
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv("TOY_FAMILY_LOG", str(log))
    study = tmp_path / "toy.yaml"
    study.write_text(STUDY)
    store = run_study(study, storage=tmp_path / "st", quiet=True)

    plan = json.loads((store.root / "plan.json").read_text())
    (job,), (cell,) = plan["generator_jobs"], plan["cells"]
    split = json.loads((store.root / "splits.json").read_text())
    # Rule 3: exactly the cell's labelled subset, plus the study's unlabelled images.
    (trained,) = _records(log, "train")
    assert trained["subjects"] == sorted(job["subjects"]) and len(job["unlabelled"]) == 3
    assert trained["unlabelled"] == [3 * 16, 1, 32, 32]  # 3 subjects x 16 slices (phantom depth = size / 2)
    all_val_test = {s for sp in split["splits"] for s in sp["val"] + sp["test"]}
    assert not set(trained["subjects"]) & all_val_test
    # The sampler got masks from the subset's labels (classes of the 3-class phantom).
    samples = _records(log, "sample")
    assert samples and all(s["masks_shape"][1:] == [32, 32] and set(s["classes"]) <= {0, 1, 2} for s in samples)
    # Pool: two clean-ups and two filters, with counts.
    pool_dir = store.artifact_dir("pools", cell["pool_key"])
    pool, info = load_pool(pool_dir)
    assert info["drawn"] == 192 and info["kept"] == len(pool) == 64
    assert [s["name"] for s in info["steps"]] == ["fill_holes", "remove_small", "nearest_neighbour", "blur"]
    nn_step = info["steps"][2]
    assert nn_step["removed"] >= nn_step["before"] // 4  # the 75th percentile
    assert (pool.images < 20).all()  # none of the outliers survived
    assert all(pool.labels[:, 1, 1] == 0)  # remove_small took the speck
    row = json.loads(__import__("pandas").read_parquet(store.row_file(cell["cell_id"])).to_json(orient="records"))[0]
    assert row["pool_drawn"] == 192 and row["pool_kept"] == 64
    # select: the published snapshot is the best-scoring one.
    generator = json.loads((store.generator_dir(job["key"]) / "generator.json").read_text())
    scores = generator["selection"]["snapshots"]
    assert [s["step"] for s in scores] == [2, 4, 6]
    best = min(scores, key=lambda s: s["score"])
    assert generator["selection"]["chosen_step"] == best["step"]
    weights = torch.load(store.generator_dir(job["key"]) / "weights.pt", weights_only=True)
    assert float(weights["level"]) == best["step"]

    # A changed filter under the same name: a new pool from the same generator, no retraining.
    mtime = (store.generator_dir(job["key"]) / "weights.pt").stat().st_mtime
    raw = yaml.safe_load(STUDY)
    raw["generator"]["pool"]["filters"][0]["percentile"] = 50
    study.write_text(yaml.safe_dump(raw))
    run_study(study, storage=tmp_path / "st", quiet=True)
    assert (store.generator_dir(job["key"]) / "weights.pt").stat().st_mtime == mtime
    assert len(_records(log, "train")) == 1
    plan2 = json.loads((store.root / "plan.json").read_text())
    assert plan2["generator_jobs"][0]["key"] == job["key"] and plan2["cells"][0]["pool_key"] != cell["pool_key"]
    _, info2 = load_pool(store.artifact_dir("pools", plan2["cells"][0]["pool_key"]))
    assert info2["steps"][2]["removed"] > nn_step["removed"]  # the 50th percentile removes more
