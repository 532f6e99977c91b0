"""Ray Train launch of the real segmentation flow: a worker killed mid-run resumes from its
latest checkpoint with the step counter continuing, and a 2-worker CPU DDP run completes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ray import cloudpickle
import numpy as np
import pytest
import ray
import torch

from synthmix.datasets.arrays import SliceSet
from synthmix.errors import TrainingDiverged
from synthmix.orchestrator.train_launch import Scaling, run_on_ray_train
from synthmix.trainers.checkpoint import CHECKPOINT_FILE
from synthmix.trainers.segmentation import SegmentationData, build_segmentation_config, train_segmentation

# The flows below run in Ray worker processes, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SIZE = 32


def _slices(subjects: list[str], seed: int) -> SliceSet:
    """Per subject 3 slices of a bright disk (class 1) on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, labels = [], []
    for _ in range(len(subjects) * 3):
        cy, cx, r = *rng.integers(11, 21, 2), rng.integers(6, 10)
        lab = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.int64)
        images.append((lab + 0.3 * rng.normal(size=lab.shape))[None].astype(np.float32))
        labels.append(lab)
    return SliceSet(images=np.stack(images), labels=np.stack(labels),
                    subject_ids=np.repeat(subjects, 3), positions=np.tile(np.arange(3), len(subjects)),
                    spacing={s: (2.0, 1.0, 1.0) for s in subjects}, num_classes=2)


def _data() -> SegmentationData:
    return SegmentationData(train=_slices(["a", "b", "c"], 0), val=_slices(["d"], 1), test=_slices(["e"], 2))


def _config(**kw):
    return build_segmentation_config({
        "network": {"levels": 2, "base_filters": 4, "doubling": True, "batch_norm": False},
        "batch_size": 4, "max_steps": 12, "val_every": 4, "checkpoint_every": 4, "seed": 0, **kw})


def _restored_step(context) -> int:
    checkpoint = context.latest_checkpoint()
    if checkpoint is None:
        return 0
    return int(torch.load(checkpoint / CHECKPOINT_FILE, weights_only=False)["step"])


def dying_flow(args: dict, context) -> dict:
    """Segmentation whose worker process dies right after its first checkpoint, once."""
    restored = _restored_step(context)
    report = context.report

    def report_then_die(metrics, checkpoint_dir=None):
        report(metrics, checkpoint_dir)
        if checkpoint_dir is not None and not Path(args["marker"]).exists():
            # Ray Train registers a reported checkpoint when its controller next polls the
            # worker (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s); die only after that.
            time.sleep(5)
            Path(args["marker"]).write_text("died")
            os._exit(1)

    context.report = report_then_die
    result = train_segmentation(_config(), _data(), context)
    return {"restored_step": restored, "steps_done": result.steps_done, "dice": result.metrics["dice_mean"]}


def ddp_flow(args: dict, context) -> dict:
    result = train_segmentation(_config(max_steps=4, val_every=2), _data(), context)
    return {"world_size": context.world_size, "steps_done": result.steps_done}


def diverging_flow(args: dict, context) -> dict:
    with open(args["calls"], "a") as calls:
        calls.write("called\n")
    train_segmentation(_config(lr=1e12), _data(), context)
    return {}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_killed_worker_resumes_from_its_latest_checkpoint(local_ray, tmp_path: Path) -> None:
    marker = tmp_path / "died"
    result = run_on_ray_train(dying_flow, {"marker": str(marker)}, name="dying",
                              storage_path=str(tmp_path / "ray"), scaling=Scaling(workers=1), max_failures=1)
    assert marker.exists()  # the first worker really died
    # The restarted worker found a checkpoint and continued from its step, not from 0.
    assert result["restored_step"] >= 4 and result["steps_done"] == 12


@pytest.mark.slow
def test_two_worker_ddp_run_completes(local_ray, tmp_path: Path) -> None:
    result = run_on_ray_train(ddp_flow, {}, name="ddp", storage_path=str(tmp_path / "ray"),
                              scaling=Scaling(workers=2))
    assert result == {"world_size": 2, "steps_done": 4}


@pytest.mark.slow
def test_divergence_is_reported_once_not_retried(local_ray, tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    with pytest.raises(TrainingDiverged, match="loss"):
        run_on_ray_train(diverging_flow, {"calls": str(calls)}, name="diverge",
                         storage_path=str(tmp_path / "ray"), scaling=Scaling(workers=1), max_failures=3)
    # Reported as a result, not a worker failure: Ray Train never restarted the worker group,
    # although max_failures would have allowed three more attempts.
    assert calls.read_text().splitlines() == ["called"]
