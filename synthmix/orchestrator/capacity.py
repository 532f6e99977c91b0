"""How many cells train at once, following the cluster as it grows and shrinks.

Tune's ``max_concurrent_trials`` is fixed when an experiment starts; an autoscaling cluster's
size is not. So the cells are fed to Tune by ``CellQueue``, a Tune ``Searcher`` that hands out
the next cell only while fewer cells run than the cluster can train *at that moment*
(``training_slots`` of ``ray.cluster_resources()``, re-read every few seconds). A waiting trial
holds nothing, so starting one more than fits would only park it; starting fewer would leave
GPUs idle.

On a cluster that was joined (``--address``, or a driver started by ``ray job submit``), the
queue also tells the autoscaler what the unfinished cells need, one bundle per training worker
(``ray.autoscaler.sdk.request_resources``): the autoscaler adds GPU nodes, up to its
``max_workers``, while cells are queued, the queue starts cells as the nodes join, and as the
grid drains the request shrinks so idle nodes can go. The request is cleared when the run ends.
A study's ``resources.max_concurrent_trials`` caps both.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from ray.tune.search import Searcher

REFRESH_SECONDS = 5.0


def training_slots(resources, cluster: dict[str, float]) -> int:
    """Trainings that fit at once in ``cluster`` (may be 0): each needs workers x per-worker
    CPUs and GPUs. ``resources`` is the study's ``ResourcesSection``."""
    slots = math.floor(cluster.get("CPU", 0) / max(resources.workers * resources.cpus_per_worker, 1e-9))
    if resources.gpus_per_worker:
        slots = min(slots, math.floor(cluster.get("GPU", 0) / (resources.workers * resources.gpus_per_worker)))
    return max(0, slots)


def worker_bundles(resources, trainings: int) -> list[dict[str, float]]:
    """The resource bundles of ``trainings`` concurrent trainings, one per worker."""
    bundle = {"CPU": float(resources.cpus_per_worker)}
    if resources.gpus_per_worker:
        bundle["GPU"] = float(resources.gpus_per_worker)
    return [dict(bundle) for _ in range(trainings * resources.workers)]


class ClusterLimit:
    """``limit()``: how many cells may run now; ``demand(n)``: ask the autoscaler for ``n``
    concurrent trainings. With ``fixed`` (a cluster that does not scale: the embedded local
    Ray) the limit is that number and nothing is asked of an autoscaler."""

    def __init__(self, resources, *, fixed: int | None = None):
        self.resources, self.fixed = resources, fixed
        self._cached: tuple[float, int] | None = None
        self._demanded: int | None = None

    def limit(self) -> int:
        if self.fixed is not None:
            return self.fixed
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > REFRESH_SECONDS:
            import ray

            self._cached = (now, training_slots(self.resources, ray.cluster_resources()))
        cap = self.resources.max_concurrent_trials
        return min(self._cached[1], cap) if cap else self._cached[1]

    def demand(self, trainings: int) -> None:
        cap = self.resources.max_concurrent_trials
        trainings = min(trainings, cap) if cap else trainings
        if self.fixed is not None or trainings == self._demanded:
            return
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=worker_bundles(self.resources, trainings))
        self._demanded = trainings


class CellQueue(Searcher):
    """Hands Tune one cell config at a time, in the given order, while ``limit.limit()``
    allows; the configs are ``{"cell_config": config}``."""

    def __init__(self, configs: list[dict], limit: ClusterLimit,
                 on_wait: Callable[[int], None] | None = None):
        super().__init__()
        self._queue, self._running = list(configs), set()
        self._limit, self._on_wait, self._warned = limit, on_wait, False
        limit.demand(len(self._queue))

    def suggest(self, trial_id: str) -> dict | None:
        if not self._queue:
            return Searcher.FINISHED
        allowed = self._limit.limit()
        if len(self._running) >= allowed:
            if allowed == 0 and not self._warned and self._on_wait:
                self._on_wait(len(self._queue))
                self._warned = True
            return None
        self._running.add(trial_id)
        return {"cell_config": self._queue.pop(0)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._running.discard(trial_id)
        self._limit.demand(len(self._queue) + len(self._running))

    # Each run is a fresh Tune experiment (results rows are the record of what is done), so
    # there is no searcher state to keep.
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass
