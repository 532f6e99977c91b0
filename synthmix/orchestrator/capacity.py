"""Which cell starts next, and how many train at once, following the cluster as it scales.

Order and readiness (``ReadyCells``, pure: no Ray, no clock, so ``benchmarks/schedule_sim.py``
replays a plan through this same code). A cell is handed to Tune only when it can train now:
it needs no generator, or its generator is finished, or it is the first cell handed out for an
unfinished generator key, the one that trains it. The other cells of that key wait here, not in
a training slot, until the key is finished; if the training cell ends and the key is still
unfinished (it failed), the next cell of the key trains it, so nothing deadlocks. A fixed pool
is the same: the cell that trains a generator draws its own pool; the first cell of another
pool of a finished generator draws that one, and the pool's other cells wait for it. Among the
cells that can start: generator trainings first, longest (generator + its cell's segmentation)
first, so that the critical path starts at once; then the rest, longest segmentation first, so
that short cells fill the end of the grid. Ties keep plan order. The seconds are the plan's
estimates (``expand.cell_costs``).

Model selection (``generator.choose``): each candidate generator is an item of its own that
trains it and nothing else; a cell of the subset lists the candidates' keys in ``after`` and
waits here until they are all finished, then needs the choice (made and its pool drawn by the
first such cell, ``orchestrator.choices``). Should a candidate's item end with the key
unfinished, the first waiting cell trains it itself rather than wait for ever.

How many at once (``ClusterLimit``). Tune's ``max_concurrent_trials`` is fixed when an
experiment starts; an autoscaling cluster's size is not. So ``CellQueue``, a Tune ``Searcher``,
hands out the next ready cell only while fewer cells run than the cluster can train *at that
moment* (``training_slots`` of ``ray.cluster_resources()``, re-read every few seconds;
fractional ``gpus_per_worker`` pack several trainings on a GPU). A handed-out cell trains at
once, so starting more than fits would only park it and starting fewer would leave GPUs idle.

On a cluster that was joined (``--address``, or a driver started by ``ray job submit``), the
queue also tells the autoscaler what the cells that can start now need, one bundle per training
worker (``ray.autoscaler.sdk.request_resources``): the autoscaler adds GPU nodes, up to its
``max_workers``, the queue starts cells as the nodes join, and as the grid drains (or waits for
a generator) the request shrinks so idle nodes can go. The request is cleared when the run
ends. A study's ``resources.max_concurrent_trials`` caps both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from ray.tune.search import Searcher

REFRESH_SECONDS = 5.0
_EPS = 1e-9  # 0.6 GPU / 0.2 per training is 2.9999999999999996 in floating point


class QueueCell(Protocol):
    """What the queue reads of a cell; ``payload`` is what the Tune trial receives."""

    cell_id: str
    generator_key: str | None
    generator_seconds: float
    segmentation_seconds: float
    payload: Any


@dataclass(frozen=True)
class QueuedCell:
    """A cell as the queue sees it: its generator key (None without one), the key of the pool it
    draws from that generator (None without a fixed pool), and the plan's estimated seconds of
    that generator's training, of the pool's draw and of the cell's segmentation."""

    cell_id: str
    generator_key: str | None
    generator_seconds: float = 0.0
    segmentation_seconds: float = 0.0
    payload: Any = None
    pool_key: str | None = None
    pool_seconds: float = 0.0
    # generator.block_size: every artifact the cell needs in the order it makes them (block 1's
    # generator and pool, block 2's, ...) and each one's seconds; empty: generator_key, pool_key.
    artifacts: tuple[str, ...] = ()
    artifact_seconds: tuple[float, ...] = ()
    after: tuple[str, ...] = ()  # keys other items make (model-selection candidates); see the docstring


def training_slots(resources, cluster: dict[str, float]) -> int:
    """Trainings that fit at once in ``cluster`` (may be 0): each needs workers x per-worker
    CPUs and GPUs (a fraction of a GPU packs ``1 / gpus_per_worker`` trainings on one).
    ``resources`` is the study's ``ResourcesSection``."""
    need_cpu = max(resources.workers * resources.cpus_per_worker, 1e-9)
    slots = math.floor(cluster.get("CPU", 0) / need_cpu + _EPS)
    if resources.gpus_per_worker:
        need_gpu = resources.workers * resources.gpus_per_worker
        slots = min(slots, math.floor(cluster.get("GPU", 0) / need_gpu + _EPS))
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
    Ray, or the simulator) the limit is that number and nothing is asked of an autoscaler."""

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


def completion_check(is_complete: Callable[[str], bool], every: float = REFRESH_SECONDS) -> Callable[[str], bool]:
    """``is_complete(key)`` asked at most once per ``every`` seconds per key (Tune asks the queue
    many times a second; on object storage each question is a request). A finished key stays
    finished: an artifact is never removed during a run."""
    finished: set[str] = set()
    asked: dict[str, float] = {}

    def check(key: str) -> bool:
        if key in finished:
            return True
        now = time.monotonic()
        if now - asked.get(key, -math.inf) >= every:
            asked[key] = now
            if is_complete(key):
                finished.add(key)
        return key in finished

    return check


def _needs(cell: QueueCell) -> tuple[str, ...]:
    """The artifacts a cell needs, in the order they are made: its generator, then its pool
    (with blocks: each block's generator and pool in turn)."""
    if getattr(cell, "artifacts", ()):
        return tuple(cell.artifacts)
    return tuple(k for k in (cell.generator_key, getattr(cell, "pool_key", None)) if k)


def _making_seconds(cell: QueueCell, first: int) -> float:
    """Seconds to make the cell's artifacts from ``_needs(cell)[first]`` on."""
    if getattr(cell, "artifacts", ()):
        return sum(cell.artifact_seconds[first:])
    seconds = (cell.generator_seconds, getattr(cell, "pool_seconds", 0.0))
    return sum(seconds[first:len(_needs(cell))]) if cell.generator_key else 0.0


class ReadyCells:
    """The pending cells; ``pop()`` takes the best one that can train now (see the module
    docstring), ``finished(cell_id)`` is told when a handed-out cell ends, well or not.

    A cell's artifacts are its generator, then (for a fixed pool) its pool: the cell that trains
    a generator also draws its own pool in that run, and the first cell of another pool of a
    finished generator draws that pool. ``is_complete(key)`` answers for either kind of key."""

    def __init__(self, cells: Iterable[QueueCell], is_complete: Callable[[str], bool]):
        self._is_complete = is_complete
        self._complete: set[str] = set()
        self._making: dict[str, str] = {}      # artifact key -> the cell making it
        self._makes: dict[str, list[str]] = {}  # that cell -> the keys it makes
        # (after, needs) -> its pending cells
        self._groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[int, QueueCell]]] = {}
        ordered = sorted(enumerate(cells), key=lambda ic: (-ic[1].segmentation_seconds, ic[0]))
        for item in ordered:
            self._groups.setdefault((tuple(getattr(item[1], "after", ())), _needs(item[1])), []).append(item)

    def __len__(self) -> int:
        return sum(map(len, self._groups.values()))

    def _finished(self, key: str) -> bool:
        if key not in self._complete and self._is_complete(key):
            self._complete.add(key)
        return key in self._complete

    def _first_missing(self, needs: tuple[str, ...]) -> int | None:
        """Index of the first unfinished artifact, len(needs) if all are finished, None if the
        first unfinished one is being made by another cell (the cells needing it wait)."""
        for i, key in enumerate(needs):
            if not self._finished(key):
                return None if key in self._making else i
        return len(needs)

    def _orphans(self, after: tuple[str, ...]) -> tuple[str, ...] | None:
        """None while a key of ``after`` is unfinished and being made, or still to be made by a
        pending item; else its unfinished keys that nothing will make (the cell makes them)."""
        missing = tuple(k for k in after if not self._finished(k))
        if any(k in self._making or any(k in needs for _, needs in self._groups) for k in missing):
            return None
        return missing

    def _candidates(self) -> Iterable[tuple[tuple, tuple, tuple[str, ...], int]]:
        """(rank, group, what its cell needs, first missing) of each group's first cell that can
        start now."""
        for group, items in self._groups.items():
            orphans = self._orphans(group[0])
            if orphans is None:
                continue
            needs = orphans + group[1]
            first = self._first_missing(needs)
            if first is None:
                continue
            index, cell = items[0]
            if first < len(needs):  # it makes what is missing: generator trainings first
                making = _making_seconds(cell, max(0, first - len(orphans)))  # orphans: not modelled
                yield (0, -(making + cell.segmentation_seconds), index), group, needs, first
            else:
                yield (1, -cell.segmentation_seconds, index), group, needs, first

    def pop(self) -> QueueCell | None:
        """The best cell that can train now, or None if every pending cell waits for an
        artifact that another cell is making."""
        best = min(self._candidates(), default=None, key=lambda c: c[0])
        if best is None:
            return None
        _, group, needs, first = best
        cell = self._groups[group].pop(0)[1]
        if not self._groups[group]:
            del self._groups[group]
        if first < len(needs):
            self._makes[cell.cell_id] = list(needs[first:])
            self._making.update((key, cell.cell_id) for key in needs[first:])
        return cell

    def ready(self) -> int:
        """How many pending cells could start now (what an autoscaler should provide for)."""
        count = 0
        for (after, needs), items in self._groups.items():
            orphans = self._orphans(after)
            first = None if orphans is None else self._first_missing(orphans + needs)
            needs = needs if orphans is None else orphans + needs
            count += 0 if first is None else len(items) if first == len(needs) else 1
        return count

    def finished(self, cell_id: str) -> None:
        for key in self._makes.pop(cell_id, []):
            self._making.pop(key, None)  # made, or failed: then the next cell needing it makes it


class CellQueue(Searcher):
    """Hands Tune one ready cell at a time (``{"cell_config": cell.payload}``), best first, while
    ``limit.limit()`` allows (see the module docstring). ``is_complete(key)`` says whether a
    generator key is finished (``completion_check`` of the store's)."""

    def __init__(self, cells: Iterable[QueueCell], limit: ClusterLimit, *,
                 is_complete: Callable[[str], bool], on_wait: Callable[[int], None] | None = None):
        super().__init__()
        self._cells = ReadyCells(cells, is_complete)
        self._running: dict[str, str] = {}  # trial id -> cell id
        self._limit, self._on_wait, self._warned = limit, on_wait, False
        self._demand()

    def suggest(self, trial_id: str) -> dict | None:
        if not len(self._cells):
            return Searcher.FINISHED
        self._demand()  # a generator may have finished: its cells can start, on more nodes
        allowed = self._limit.limit()
        if len(self._running) >= allowed:
            if allowed == 0 and not self._warned and self._on_wait:
                self._on_wait(len(self._cells))
                self._warned = True
            return None
        cell = self._cells.pop()
        if cell is None:  # every pending cell waits for a generator in training
            return None
        self._running[trial_id] = cell.cell_id
        return {"cell_config": cell.payload}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        cell_id = self._running.pop(trial_id, None)
        if cell_id is not None:
            self._cells.finished(cell_id)
        self._demand()

    def _demand(self) -> None:
        self._limit.demand(len(self._running) + self._cells.ready())

    # Each run is a fresh Tune experiment (results rows are the record of what is done), so
    # there is no searcher state to keep.
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass
