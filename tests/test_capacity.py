"""Concurrency that follows the cluster: how many trainings fit, what the autoscaler is asked
for, and the queue that feeds cells to Tune (no Ray cluster needed: its two calls are faked)."""

from __future__ import annotations

import ray
import ray.autoscaler.sdk
from ray.tune.search import Searcher

from synthmix.orchestrator import capacity
from synthmix.orchestrator.capacity import CellQueue, ClusterLimit, training_slots, worker_bundles
from synthmix.search_spaces.schema import ResourcesSection


def test_training_slots_count_whole_trainings() -> None:
    cpu = ResourcesSection(workers=2, cpus_per_worker=1)
    assert training_slots(cpu, {"CPU": 5}) == 2
    gpu = ResourcesSection(workers=1, cpus_per_worker=4, gpus_per_worker=1)
    assert training_slots(gpu, {"CPU": 32, "GPU": 3}) == 3  # GPUs bound it
    assert training_slots(gpu, {"CPU": 8}) == 0  # a head node without GPUs fits none
    assert worker_bundles(ResourcesSection(workers=2, cpus_per_worker=4, gpus_per_worker=0.5), 3) == \
        [{"CPU": 4.0, "GPU": 0.5}] * 6


def test_fixed_limit_never_asks_an_autoscaler(monkeypatch) -> None:
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda **kw: (_ for _ in ()).throw(AssertionError))
    limit = ClusterLimit(ResourcesSection(), fixed=2)
    queue = CellQueue([{"id": i} for i in range(3)], limit)
    assert queue.suggest("t1") == {"cell_config": {"id": 0}}
    assert queue.suggest("t2") == {"cell_config": {"id": 1}}
    assert queue.suggest("t3") is None  # two running: the third waits
    queue.on_trial_complete("t1")
    assert queue.suggest("t3") == {"cell_config": {"id": 2}}
    assert queue.suggest("t4") == Searcher.FINISHED


def test_queue_follows_an_autoscaling_cluster(monkeypatch) -> None:
    cluster = {"CPU": 8.0}  # the head node only
    requests: list[list[dict]] = []
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(cluster))
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda bundles: requests.append(bundles))
    monkeypatch.setattr(capacity, "REFRESH_SECONDS", -1.0)  # re-read the cluster on every call
    resources = ResourcesSection(workers=1, cpus_per_worker=4, gpus_per_worker=1, max_concurrent_trials=3)
    waited = []
    queue = CellQueue([{"id": i} for i in range(5)], ClusterLimit(resources), on_wait=waited.append)

    assert requests == [[{"CPU": 4.0, "GPU": 1.0}] * 3]  # 5 cells, capped at 3 concurrent trainings
    assert queue.suggest("t0") is None and waited == [5]  # no GPU yet: wait, said once
    cluster.update(CPU=16.0, GPU=1.0)  # the autoscaler added one GPU node
    assert queue.suggest("t0") == {"cell_config": {"id": 0}}
    assert queue.suggest("t1") is None
    cluster.update(CPU=40.0, GPU=4.0)  # three more; the study caps concurrency at 3
    assert [queue.suggest(t) for t in ("t1", "t2", "t3")] == [
        {"cell_config": {"id": 1}}, {"cell_config": {"id": 2}}, None]
    queue.on_trial_complete("t0")  # 2 queued + 2 running: still 3 asked for (the cap)
    assert len(requests) == 1
    queue.on_trial_complete("t1")  # 2 queued + 1 running = 3: unchanged
    assert queue.suggest("t3") == {"cell_config": {"id": 3}}
    assert queue.suggest("t4") == {"cell_config": {"id": 4}}
    for trial in ("t2", "t3"):
        queue.on_trial_complete(trial)
    assert requests[-1] == [{"CPU": 4.0, "GPU": 1.0}]  # the tail of the grid: one training left
    queue.on_trial_complete("t4")
    assert requests[-1] == [] and queue.suggest("t5") == Searcher.FINISHED
