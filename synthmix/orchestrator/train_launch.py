"""Ray Train launch: run a trainer function as a ``TorchTrainer`` worker group.

Trainers are plain functions ``train_x(config, data, context)``; here they get a
``RayTrainContext`` (DDP wrapping and device from ``ray.train.torch``, checkpoints persisted by
``ray.train.report``). A run is named after its cell or generator key under the study's storage,
so a run started again under the same name continues from its latest checkpoint (Ray Train V2
restores by ``(storage_path, name)``), and a worker that dies is restarted from that checkpoint
up to ``max_failures`` times. A failure of Ray Train's own controller, which Ray does not
retry, starts the run again once under the same name.

Divergence is not a worker failure: retrying from the last checkpoint diverges again, so the
worker reports it as a final result and the caller raises ``TrainingDiverged`` once.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from synthmix.errors import TrainingDiverged


@dataclass(frozen=True)
class Scaling:
    """How many workers a training uses and what each asks for."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def total(self) -> dict[str, float]:
        return {"CPU": self.workers * self.cpus_per_worker, "GPU": self.workers * self.gpus_per_worker}


class RayTrainContext:
    """``TrainContext`` inside a Ray Train worker."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.world_rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._restored: Path | None = None

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(dict(metrics), checkpoint=checkpoint)

    def latest_checkpoint(self) -> Path | None:
        import ray.train

        if self._restored is None:
            checkpoint = ray.train.get_checkpoint()
            if checkpoint is None:
                return None
            self._restored = Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="synthmix-restore-")))
        return self._restored


RESULT_FILE = "synthmix_result.json"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Times a run is started again after Ray Train reports a failure of its own controller.
CONTROLLER_RETRIES = 1

logger = logging.getLogger(__name__)


def _worker_loop(payload: dict) -> None:
    """Runs on every worker: build the context, call the flow, report its final result once.

    Ray Train V2 keeps the metrics of the latest *checkpoint*, so the final result travels as a
    small checkpoint holding ``synthmix_result.json``. A run restarted after it finished finds
    that checkpoint and returns at once instead of training again.
    """
    context = RayTrainContext()
    previous = context.latest_checkpoint()
    if previous is not None and (previous / RESULT_FILE).exists():
        final = json.loads((previous / RESULT_FILE).read_text())
    else:
        flow: Callable[[dict, Any], dict] = payload["flow"]
        try:
            final = {"result": flow(payload["args"], context)}
        except TrainingDiverged as err:
            final = {"diverged": str(err)}
    checkpoint_dir = None
    if context.world_rank == 0:
        checkpoint_dir = Path(tempfile.mkdtemp(prefix="synthmix-result-"))
        (checkpoint_dir / RESULT_FILE).write_text(json.dumps(final, default=float))
    context.report({"synthmix_done": True}, checkpoint_dir)


def _worker_resources(scaling: Scaling) -> dict[str, float]:
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.gpus_per_worker:
        resources["GPU"] = scaling.gpus_per_worker
    return resources


def _backend(scaling: Scaling) -> str:
    """NCCL for GPU workers, as Ray Train would choose; gloo when this torch has no NCCL (a CPU
    build given logical GPUs: ``ray.init(num_gpus=N)`` on a machine without one)."""
    return "nccl" if scaling.use_gpu and torch.distributed.is_nccl_available() else "gloo"


def run_on_ray_train(
    flow: Callable[[dict, Any], dict],
    args: dict,
    *,
    name: str,
    storage_path: str,
    scaling: Scaling,
    max_failures: int = 2,
    callbacks: Sequence[Any] = (),
) -> dict:
    """Run ``flow(args, context)`` on a TorchTrainer worker group; return rank 0's result dict.

    ``flow`` must be a module-level function (it is pickled to the workers) that returns a
    JSON-serialisable dict on every rank. ``callbacks`` are ``ray.train.UserCallback``s, run in
    Ray Train's controller.
    """
    from ray.train import TrainingFailedError

    # Ray Train's preemption watcher, one more actor process per training, only logs node drains
    # for ray.train.get_preemption_info, which no flow reads: a lost node is a worker failure,
    # retried from the last checkpoint (max_failures). Read here, in the process that starts
    # the training, and passed on by Ray Train to its controller.
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    for attempt in range(CONTROLLER_RETRIES + 1):
        trainer = _trainer(flow, args, name=name, storage_path=storage_path, scaling=scaling,
                           max_failures=max_failures, callbacks=callbacks)
        try:
            result = trainer.fit()
            break
        except TrainingFailedError as err:
            controller_failure = getattr(err, "controller_failure", None)
            if controller_failure is not None and attempt < CONTROLLER_RETRIES:
                # Ray Train raises a controller failure (its own control loop, not our code)
                # without retrying it; the same run name continues from its latest checkpoint,
                # and a training that had finished finds its result there and returns at once.
                logger.warning("Ray Train run %r: controller failed (%s); starting it again from its "
                               "latest checkpoint", name, controller_failure)
                continue
            cause = _failure_cause(err)
            if cause is None:
                raise
            # Ray's wrapper starts with "Training failed due to ... errors:" and a truncated
            # traceback; the cell's error (and the run's summary line) should be the cause itself.
            raise cause from err
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name!r} ended without reporting a result")
    with result.checkpoint.as_directory() as directory:
        final = json.loads((Path(directory) / RESULT_FILE).read_text())
    if "diverged" in final:
        raise TrainingDiverged(final["diverged"])
    return final["result"]


def _trainer(flow: Callable[[dict, Any], dict], args: dict, *, name: str, storage_path: str,
             scaling: Scaling, max_failures: int, callbacks: Sequence[Any]) -> Any:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        _worker_loop,
        train_loop_config={"flow": flow, "args": args},
        torch_config=TorchConfig(backend=_backend(scaling)),
        scaling_config=ScalingConfig(
            num_workers=scaling.workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=_worker_resources(scaling),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=list(callbacks),
        ),
    )


def _failure_cause(err: BaseException) -> BaseException | None:
    """The exception under Ray's wrapper: the controller's own failure, or the one the lowest
    failed rank raised (unwrapped from Ray's task error); None when there is neither."""
    controller_failure = getattr(err, "controller_failure", None)
    if isinstance(controller_failure, BaseException):
        return controller_failure
    failures = getattr(err, "worker_failures", None) or {}
    for rank in sorted(failures):
        failure = failures[rank]
        cause = getattr(failure, "cause", None)
        return cause if isinstance(cause, BaseException) else failure
    return None
