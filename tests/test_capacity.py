"""The cell queue: which cell starts next (dependency- and cost-aware), how many trainings fit,
and what the autoscaler is asked for (no Ray cluster needed: its two calls are faked)."""

from __future__ import annotations

import pytest

import ray
import ray.autoscaler.sdk
from ray.tune.search import Searcher

from synthmix.orchestrator import capacity
from synthmix.orchestrator.capacity import (CellQueue, ClusterLimit, QueuedCell, ReadyCells, completion_check,
                                            training_slots, worker_bundles)
from synthmix.search_spaces.schema import ResourcesSection


def _never(key: str) -> bool:
    return False


def _free_cells(n: int) -> list[QueuedCell]:
    """``n`` cells without a generator and of equal cost: the queue keeps their plan order."""
    return [QueuedCell(f"c{i}", None, 0.0, 10.0, payload=i) for i in range(n)]


def test_training_slots_count_whole_trainings() -> None:
    cpu = ResourcesSection(workers=2, cpus_per_worker=1)
    assert training_slots(cpu, {"CPU": 5}) == 2
    gpu = ResourcesSection(workers=1, cpus_per_worker=4, gpus_per_worker=1)
    assert training_slots(gpu, {"CPU": 32, "GPU": 3}) == 3  # GPUs bound it
    assert training_slots(gpu, {"CPU": 8}) == 0  # a head node without GPUs fits none
    quarter = ResourcesSection(workers=1, cpus_per_worker=1, gpus_per_worker=0.25)
    assert training_slots(quarter, {"CPU": 16, "GPU": 1}) == 4  # four small trainings share a GPU
    fifth = ResourcesSection(workers=1, cpus_per_worker=1, gpus_per_worker=0.2)
    assert training_slots(fifth, {"CPU": 16, "GPU": 0.6}) == 3  # 0.6 / 0.2 is 2.999... in floats
    assert worker_bundles(ResourcesSection(workers=2, cpus_per_worker=4, gpus_per_worker=0.5), 3) == \
        [{"CPU": 4.0, "GPU": 0.5}] * 6


def test_fixed_limit_never_asks_an_autoscaler(monkeypatch) -> None:
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda **kw: (_ for _ in ()).throw(AssertionError))
    limit = ClusterLimit(ResourcesSection(), fixed=2)
    queue = CellQueue(_free_cells(3), limit, is_complete=_never)
    assert queue.suggest("t1") == {"cell_config": 0}
    assert queue.suggest("t2") == {"cell_config": 1}
    assert queue.suggest("t3") is None  # two running: the third waits
    queue.on_trial_complete("t1")
    assert queue.suggest("t3") == {"cell_config": 2}
    assert queue.suggest("t4") == Searcher.FINISHED


def test_queue_follows_an_autoscaling_cluster(monkeypatch) -> None:
    cluster = {"CPU": 8.0}  # the head node only
    requests: list[list[dict]] = []
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(cluster))
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda bundles: requests.append(bundles))
    monkeypatch.setattr(capacity, "REFRESH_SECONDS", -1.0)  # re-read the cluster on every call
    resources = ResourcesSection(workers=1, cpus_per_worker=4, gpus_per_worker=1, max_concurrent_trials=3)
    waited = []
    queue = CellQueue(_free_cells(5), ClusterLimit(resources), is_complete=_never, on_wait=waited.append)

    assert requests == [[{"CPU": 4.0, "GPU": 1.0}] * 3]  # 5 cells, capped at 3 concurrent trainings
    assert queue.suggest("t0") is None and waited == [5]  # no GPU yet: wait, said once
    cluster.update(CPU=16.0, GPU=1.0)  # the autoscaler added one GPU node
    assert queue.suggest("t0") == {"cell_config": 0}
    assert queue.suggest("t1") is None
    cluster.update(CPU=40.0, GPU=4.0)  # three more; the study caps concurrency at 3
    assert [queue.suggest(t) for t in ("t1", "t2", "t3")] == [
        {"cell_config": 1}, {"cell_config": 2}, None]
    queue.on_trial_complete("t0")  # 2 queued + 2 running: still 3 asked for (the cap)
    assert len(requests) == 1
    queue.on_trial_complete("t1")  # 2 queued + 1 running = 3: unchanged
    assert queue.suggest("t3") == {"cell_config": 3}
    assert queue.suggest("t4") == {"cell_config": 4}
    for trial in ("t2", "t3"):
        queue.on_trial_complete(trial)
    assert requests[-1] == [{"CPU": 4.0, "GPU": 1.0}]  # the tail of the grid: one training left
    queue.on_trial_complete("t4")
    assert requests[-1] == [] and queue.suggest("t5") == Searcher.FINISHED


def _cells() -> list[QueuedCell]:
    """Two generator keys (k1 trains 100 s, k2 50 s) and two cells without one."""
    spec = [("a1", "k1", 100, 10), ("a2", "k1", 100, 30), ("b1", "k2", 50, 5), ("f1", None, 0, 20),
            ("f2", None, 0, 40)]
    return [QueuedCell(cid, key, gen, seg, payload=cid) for cid, key, gen, seg in spec]


def test_waiting_cells_take_no_slot_and_ready_cells_start() -> None:
    finished: set[str] = set()
    queue = CellQueue(_cells(), ClusterLimit(ResourcesSection(), fixed=3), is_complete=finished.__contains__)
    # Generator trainings first, longest first (k1: 100 + its longest cell a2's 30 s), then the
    # longest cell that needs no generator: a1 waits for k1 and is not handed out.
    assert [queue.suggest(t)["cell_config"] for t in ("t1", "t2", "t3")] == ["a2", "b1", "f2"]
    assert queue.suggest("t4") is None  # three trainings run: the limit, none of them waiting
    queue.on_trial_complete("t3")  # f2 done; k1 is still training: f1 starts, not a1
    assert queue.suggest("t4") == {"cell_config": "f1"}
    queue.on_trial_complete("t4")
    assert queue.suggest("t5") is None  # only a1 is left and k1 is not finished: nothing starts
    finished.add("k1")
    assert queue.suggest("t5") == {"cell_config": "a1"}
    assert queue.suggest("t6") == Searcher.FINISHED


def test_a_failed_generator_training_passes_to_the_next_cell_of_its_key() -> None:
    queue = CellQueue(_cells()[:2], ClusterLimit(ResourcesSection(), fixed=2), is_complete=_never)
    assert queue.suggest("t1") == {"cell_config": "a2"}  # trains k1
    assert queue.suggest("t2") is None  # a1 waits for k1
    queue.on_trial_complete("t1", error=True)  # k1 not finished: a1 now trains it (no deadlock)
    assert queue.suggest("t2") == {"cell_config": "a1"}


def test_a_generator_finished_earlier_needs_no_training() -> None:
    ready = ReadyCells(_cells(), is_complete=lambda key: key == "k2")  # k2 from an earlier run
    # k1's training first; then by segmentation alone: f2 40, a1 waits, f1 20, b1 5
    assert [ready.pop().cell_id for _ in range(4)] == ["a2", "f2", "f1", "b1"]
    assert ready.pop() is None and len(ready) == 1 and ready.ready() == 0


def test_autoscaler_is_asked_only_for_cells_that_can_start() -> None:
    finished: set[str] = set()
    asked: list[int] = []
    limit = ClusterLimit(ResourcesSection(), fixed=4)
    limit.demand = asked.append  # what a joined cluster's queue would request
    queue = CellQueue(_cells()[:3], limit, is_complete=finished.__contains__)
    assert asked[-1] == 2  # a training cell per key; a1 waits for k1 and asks for nothing
    queue.suggest("t1"), queue.suggest("t2")
    assert queue.suggest("t3") is None and asked[-1] == 2
    finished.add("k1")
    assert asked[-1] == 2 and queue.suggest("t3") == {"cell_config": "a1"} and asked[-1] == 3


def test_completion_is_asked_rarely_and_remembered() -> None:
    calls: list[str] = []
    answers = iter([False, True])
    check = completion_check(lambda key: calls.append(key) or next(answers), every=3600)
    assert [check("k"), check("k")] == [False, False] and calls == ["k"]  # second: not asked again
    check = completion_check(lambda key: calls.append(key) or next(answers), every=0)
    assert [check("k"), check("k")] == [True, True] and calls == ["k", "k"]  # finished: remembered


def _resources_problems(**resources) -> list[str]:
    import yaml

    from synthmix.errors import StudyError
    from synthmix.search_spaces.schema import validate_study
    from tiny_study import tiny_study_yaml

    raw = yaml.safe_load(tiny_study_yaml())
    raw["resources"] = resources
    try:
        validate_study(raw, "gpus.yaml")
    except StudyError as err:
        return err.problems
    return []


def test_fractions_of_a_gpu_that_ray_and_nccl_refuse_are_caught_before_a_run() -> None:
    assert _resources_problems(workers=1, gpus_per_worker=0.25) == []
    assert _resources_problems(workers=2, gpus_per_worker=2) == []
    assert any("whole number" in p for p in _resources_problems(gpus_per_worker=1.5))
    assert any("4 decimals" in p for p in _resources_problems(gpus_per_worker=0.123456))
    assert any("NCCL" in p for p in _resources_problems(workers=2, gpus_per_worker=0.5))


def test_plan_estimates_per_cell_costs_and_gpu_time_of_fractional_gpus(phantom_manifest) -> None:
    import yaml

    from synthmix.search_spaces.expand import (RAY_START_SECONDS, cell_costs, expand_study, generator_seconds,
                                               segmentation_seconds)
    from synthmix.search_spaces.schema import validate_study
    from tiny_study import tiny_study_yaml

    raw = yaml.safe_load(tiny_study_yaml())
    raw["resources"] = {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0.25}
    plan = expand_study(validate_study(raw, "quarter.yaml"), phantom_manifest)
    costs = cell_costs(plan)
    seg = segmentation_seconds(plan.study)
    for cell in plan.cells:
        job = plan.generator_jobs.get(cell.generator_key)
        gen = generator_seconds(job, plan.estimate["image_pixels"]) + RAY_START_SECONDS if job else 0.0
        assert costs[cell.cell_id] == pytest.approx((gen, seg))
    e = plan.estimate
    assert e["trainings_per_gpu"] == 4 and abs(e["gpu_seconds"] - e["total_cpu_seconds"] * 0.25) < 0.1
    assert "4 trainings share each GPU" in plan.render()
