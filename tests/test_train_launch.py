"""Ray Train launch of the real segmentation flow: a worker killed mid-run resumes from its
latest checkpoint with the step counter continuing, so does a run whose Ray Train controller
failed (once; a controller failure is raised as its own cause), a 2-worker CPU DDP run completes,
and 1 and 2 workers train on exactly the same global batches (sampler, shuffle and augmentation
alike)."""

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
from ray.train import UserCallback

from synthmix.datasets.arrays import SliceSet, SyntheticPool
from synthmix.datasets.mixing import MIXING_POLICIES
from synthmix.errors import TrainingDiverged
from synthmix.orchestrator.train_launch import Scaling, _failure_cause, run_on_ray_train
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
            # worker (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, by default 2 s); die only after that.
            time.sleep(5)
            Path(args["marker"]).write_text("died")
            os._exit(1)

    context.report = report_then_die
    result = train_segmentation(_config(), _data(), context)
    return {"restored_step": restored, "steps_done": result.steps_done, "dice": result.metrics["dice_mean"]}


def resuming_flow(args: dict, context) -> dict:
    restored = _restored_step(context)
    result = train_segmentation(_config(), _data(), context)
    return {"restored_step": restored, "steps_done": result.steps_done}


class FailingController(UserCallback):
    """Raises in Ray Train's controller at each checkpoint, ``times`` times in all (counted in
    ``log``, as the controller is a new process on each attempt)."""

    def __init__(self, log: Path, times: int) -> None:
        self.log, self.times = log, times

    def after_report(self, run_context, metrics, checkpoint) -> None:
        failures = self.log.read_text().count("failed") if self.log.exists() else 0
        if checkpoint is not None and failures < self.times:
            with self.log.open("a") as log:
                log.write("failed\n")
            raise RuntimeError("the controller fell over")


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
def test_controller_failure_restarts_the_run_once_from_its_checkpoint(local_ray, tmp_path: Path) -> None:
    log = tmp_path / "controller.log"
    result = run_on_ray_train(resuming_flow, {}, name="controller", storage_path=str(tmp_path / "ray"),
                              scaling=Scaling(workers=1), callbacks=[FailingController(log, times=1)])
    assert log.read_text().splitlines() == ["failed"]
    # Ray Train registered the checkpoint before the callback failed; the second run went on from it.
    assert result["restored_step"] >= 4 and result["steps_done"] == 12


def test_a_controller_failure_is_raised_as_its_cause() -> None:
    from ray.train import ControllerError

    cause = RuntimeError("the controller fell over")
    assert _failure_cause(ControllerError(cause)) is cause
    assert _failure_cause(RuntimeError("not Ray's")) is None


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


# --- the same science on 1 or N workers: segmenter.batch_size is the global batch ---------------

GB_SIZE, BATCH, STEPS = 16, 8, 6


def _noise_slices(subjects: list[str], seed: int) -> SliceSet:
    rng = np.random.default_rng(seed)
    n = 3 * len(subjects)
    labels = (rng.random((n, GB_SIZE, GB_SIZE)) > 0.6).astype(np.int64)
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
    train = _noise_slices(["a", "b", "c"], 0)
    fake = _noise_slices(["s0", "s1", "s2", "s3"], 1)
    sampler = MIXING_POLICIES.get("additive").build_sampler(
        1.0, real=train, synthetic=SyntheticPool(images=fake.images, labels=fake.labels), batch_size=BATCH)
    data = SegmentationData(train=train, val=_noise_slices(["d"], 2), test=_noise_slices(["e"], 3), sampler=sampler)
    config = build_segmentation_config({
        "network": {"levels": 2, "base_filters": 4, "doubling": True, "batch_norm": False},
        "batch_size": BATCH, "max_steps": STEPS, "val_every": 3, "checkpoint_every": 3,
        "augmentation": "standard", "seed": 7})
    result = train_segmentation(config, data, context)
    np.save(Path(args["out"]) / f"w{context.world_size}-r{context.world_rank}.npy", np.stack(seen))
    return {"real_draws": result.real_draws, "synthetic_draws": result.synthetic_draws}


@pytest.mark.slow
def test_one_and_two_workers_train_on_the_same_global_batches(local_ray, tmp_path: Path) -> None:
    draws = {}
    for workers in (1, 2):
        draws[workers] = run_on_ray_train(recording_flow, {"out": str(tmp_path)}, name=f"w{workers}",
                                          storage_path=str(tmp_path / "ray"), scaling=Scaling(workers=workers))
    one = np.load(tmp_path / "w1-r0.npy")
    rank0, rank1 = np.load(tmp_path / "w2-r0.npy"), np.load(tmp_path / "w2-r1.npy")
    assert one.shape == (STEPS, BATCH, 1, GB_SIZE, GB_SIZE)
    assert rank0.shape == rank1.shape == (STEPS, BATCH // 2, 1, GB_SIZE, GB_SIZE)
    # Each rank trains on its half of the global batch; together they are the 1-worker batch.
    np.testing.assert_array_equal(np.concatenate([rank0, rank1], axis=1), one)
    assert not np.array_equal(rank0, rank1)
    assert draws[1] == draws[2] and draws[1]["real_draws"] + draws[1]["synthetic_draws"] == STEPS * BATCH
    assert 0 < draws[1]["synthetic_draws"] < STEPS * BATCH  # the stream really mixes both
