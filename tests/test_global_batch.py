"""The same science on 1 or N workers: ``segmenter.batch_size`` is the global batch, and 1 and 2
Ray Train CPU workers train on exactly the same items, step by step (a mixed real + synthetic
stream with augmentation, so the sampler, the shuffle and the augmentation are all covered)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from ray import cloudpickle

from synthmix.datasets.arrays import SliceSet, SyntheticPool
from synthmix.datasets.mixing import MIXING_POLICIES
from synthmix.orchestrator.train_launch import Scaling, run_on_ray_train
from synthmix.trainers.segmentation import SegmentationData, build_segmentation_config, train_segmentation

# The flow runs in Ray worker processes, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SIZE, BATCH, STEPS = 16, 8, 6


def _slices(subjects: list[str], seed: int) -> SliceSet:
    rng = np.random.default_rng(seed)
    n = 3 * len(subjects)
    labels = (rng.random((n, SIZE, SIZE)) > 0.6).astype(np.int64)
    images = (labels + 0.3 * rng.normal(size=labels.shape))[:, None].astype(np.float32)
    return SliceSet(images=images, labels=labels, subject_ids=np.repeat(subjects, 3),
                    positions=np.tile(np.arange(3), len(subjects)),
                    spacing={s: (1.0, 1.0, 1.0) for s in subjects}, num_classes=2)


def recording_flow(args: dict, context) -> dict:
    """Train a few steps and save every training batch this rank's network was given."""
    seen: list[np.ndarray] = []
    prepare = context.prepare_model

    def record(module, inputs):
        if module.training:  # training steps only, not validation or test evaluation
            seen.append(inputs[0].detach().cpu().numpy().copy())

    def prepare_and_record(model):
        model.register_forward_pre_hook(record)
        return prepare(model)

    context.prepare_model = prepare_and_record
    train = _slices(["a", "b", "c"], 0)
    fake = _slices(["s0", "s1", "s2", "s3"], 1)
    sampler = MIXING_POLICIES.get("additive").build_sampler(
        1.0, real=train, synthetic=SyntheticPool(images=fake.images, labels=fake.labels), batch_size=BATCH)
    data = SegmentationData(train=train, val=_slices(["d"], 2), test=_slices(["e"], 3), sampler=sampler)
    config = build_segmentation_config({
        "network": {"levels": 2, "base_filters": 4, "doubling": True, "batch_norm": False},
        "batch_size": BATCH, "max_steps": STEPS, "val_every": 3, "checkpoint_every": 3,
        "augmentation": "standard", "seed": 7})
    result = train_segmentation(config, data, context)
    np.save(Path(args["out"]) / f"w{context.world_size}-r{context.world_rank}.npy", np.stack(seen))
    return {"real_draws": result.real_draws, "synthetic_draws": result.synthetic_draws}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_one_and_two_workers_train_on_the_same_global_batches(local_ray, tmp_path: Path) -> None:
    draws = {}
    for workers in (1, 2):
        draws[workers] = run_on_ray_train(recording_flow, {"out": str(tmp_path)}, name=f"w{workers}",
                                          storage_path=str(tmp_path / "ray"), scaling=Scaling(workers=workers))
    one = np.load(tmp_path / "w1-r0.npy")
    rank0, rank1 = np.load(tmp_path / "w2-r0.npy"), np.load(tmp_path / "w2-r1.npy")
    assert one.shape == (STEPS, BATCH, 1, SIZE, SIZE)
    assert rank0.shape == rank1.shape == (STEPS, BATCH // 2, 1, SIZE, SIZE)
    # Each rank trains on its half of the global batch; together they are the 1-worker batch.
    np.testing.assert_array_equal(np.concatenate([rank0, rank1], axis=1), one)
    assert not np.array_equal(rank0, rank1)
    assert draws[1] == draws[2] and draws[1]["real_draws"] + draws[1]["synthetic_draws"] == STEPS * BATCH
    assert 0 < draws[1]["synthetic_draws"] < STEPS * BATCH  # the stream really mixes both
