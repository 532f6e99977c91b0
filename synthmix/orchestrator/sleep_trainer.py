"""A test-only trainer that sleeps, for scheduling checks on logical GPUs
(``benchmarks/schedule_sim.py --ray``, ``tests/test_schedule.py``).

With ``SYNTHMIX_TEST_SLEEP`` set to a JSON object, the worker flows of ``cells.py`` do not train.
Each sleeps for the seconds the table gives it: a segmentation by its cell's architecture
(``{"unet": 4, "uresnet": 24}``), a generator by its family name or ``"generator"``, a pool
draw for ``"pool"`` (0 if absent). It sleeps on
the Ray Train worker group the real training would use, with the same resources, and returns
what the real flow returns, so the row is written by the normal path. A generator leaves a
stand-in artifact (and pool): every file of a complete one, none of them usable. With ``"trace": DIR``
each training writes ``DIR/<run name>-rank<r>.json``: its wall-clock start and end and the GPU ids Ray gave
its worker; with ``"together": N`` as well, the first N trainings wait until all N have begun
(they can only if they hold their resources at once). The variable reaches the workers of the embedded local Ray from the driver's
environment.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SLEEP_ENV = "SYNTHMIX_TEST_SLEEP"


def table() -> dict | None:
    """The sleep table, or None when the variable is unset (the normal case)."""
    text = os.environ.get(SLEEP_ENV)
    return json.loads(text) if text else None


def _sleep(seconds: float, context) -> dict:
    import ray
    import ray.train

    name = ray.train.get_context().get_experiment_name()  # the run: cell-ID or generator-KEY
    entries = table() or {}
    start = time.time()
    if entries.get("together"):
        _meet(Path(entries["trace"]), f"{name}-rank{context.world_rank}", int(entries["together"]))
    time.sleep(seconds)
    record = {"name": name, "start": start, "end": time.time(), "rank": context.world_rank,
              "gpu_ids": [str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]}
    if entries.get("trace"):
        Path(entries["trace"]).mkdir(parents=True, exist_ok=True)
        (Path(entries["trace"]) / f"{name}-rank{context.world_rank}.json").write_text(json.dumps(record))
    return record


def _meet(trace: Path, name: str, count: int, timeout: float = 300.0) -> None:
    """``"together": N``: the first N trainings wait here until all N have started, which they
    can only do if they hold their resources at the same time (later ones pass at once)."""
    arrived = trace / "arrived"
    arrived.mkdir(parents=True, exist_ok=True)
    (arrived / name).touch()
    deadline = time.monotonic() + timeout
    while len(list(arrived.iterdir())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{SLEEP_ENV}: {name}: {len(list(arrived.iterdir()))} of {count} trainings "
                               f"started within {timeout:g} s")
        time.sleep(0.2)


def _seconds(entries: dict, name: str, fallback: str | None = None) -> float:
    value = entries.get(name, entries.get(fallback) if fallback else None)
    if value is None:
        raise KeyError(f"{SLEEP_ENV}: no duration for {name!r}; the table has {sorted(entries)}")
    return float(value)


def _stand_in(kind: str, key: str, root: str, files: dict[str, str]) -> None:
    """Write and publish an artifact folder whose files exist but hold nothing usable."""
    from synthmix.orchestrator.store import StudyStore

    store = StudyStore.at(root)
    out_dir = store.artifact_workdir(kind, key)
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (tmp / name).write_text(text)
    os.replace(tmp, out_dir)
    store.publish_artifact(kind, key, out_dir)


def _pool(spec) -> None:
    from synthmix.trainers.generators.pools import POOL_FILE, POOL_INFO

    _stand_in("pools", spec.pool.key, spec.root, {POOL_FILE: "stand-in", POOL_INFO: "{}"})


def generator_flow(args: dict, context) -> dict:
    """Sleep, then publish a stand-in artifact under the key (and the cell's pool, as the real
    flow draws it in the same run)."""
    from synthmix.orchestrator.spec import CellSpec
    from synthmix.orchestrator.store import StudyStore
    from synthmix.trainers.generators.artifact import ARTIFACT_FILES, QUALITY_FILE

    spec = CellSpec.from_dict(args["spec"])
    job = spec.generator
    draws = spec.pool is not None and spec.pool.source == "pool" and \
        not StudyStore.at(spec.root).artifact_complete("pools", spec.pool.key)
    _sleep(_seconds(table(), job.name, "generator") + (float(table().get("pool", 0.0)) if draws else 0.0), context)
    if context.world_rank != 0:
        return {}
    _stand_in("generators", job.key, spec.root,
              {name: "{}" if name == QUALITY_FILE else "stand-in" for name in ARTIFACT_FILES})
    if draws:
        _pool(spec)
    return {}


def pool_flow(args: dict, context) -> dict:
    """Sleep for ``"pool"`` seconds (0 if absent), then publish a stand-in pool."""
    from synthmix.orchestrator.spec import CellSpec

    _sleep(float(table().get("pool", 0.0)), context)
    if context.world_rank == 0:
        _pool(CellSpec.from_dict(args["spec"]))
    return {}


def segmentation_flow(args: dict, context) -> dict:
    """Sleep for the cell's architecture; report a result shaped like the real one."""
    from synthmix.orchestrator.spec import CellSpec

    spec = CellSpec.from_dict(args["spec"])
    record = _sleep(_seconds(table(), spec.segmenter["architecture"]), context)
    return {"metrics": {"dice_mean": 0.0, "best_step": 0, "steps_done": 0},
            "timings": {"train_s": record["end"] - record["start"], "eval_s": 0.0},
            "n_train_slices": 0, "n_synthetic_available": 0, "real_draws": 0, "synthetic_draws": 0,
            "per_subject": [{"subject": sid, "dice_mean": 0.0} for sid in spec.split.test],
            "subject_metadata": {}}
