"""``synthmix run`` / ``resume``: validate, plan, prepare data, fan the pending cells out on
Ray Tune, and end with the aggregated table.

Everything that can reject a study happens before Ray starts: schema validation, the dataset
check (every NIfTI file opened and checked), the splits (written once, reloaded and checked on
every later run) and the preprocessed cache. Results rows are the source of truth for what is
done: each run (first or resumed) is a fresh Tune experiment over the cells that have no row
yet, so a killed driver, an errored trial or a cancelled run all resume the same way, and a
finished cell or generator is never computed twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import yaml

from synthmix.errors import SynthmixError, headline
from synthmix.orchestrator.progress import ProgressCallback
from synthmix.orchestrator.store import ENDPOINT_ENV, StudyStore, atomic_write_bytes
from synthmix.search_spaces.expand import Plan, expand_cells, resolve_dataset, build_split_plan
from synthmix.search_spaces.schema import Study, load_study

TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"

# A trial's own reservation: a token amount of memory, no CPU, so that a trial waiting for a
# generator holds nothing a training could use (Tune refuses an all-zero request).
TRIAL_RESOURCES = [{"memory": 1024 * 1024}]


def prepare_study(study_ref: str | Path | None, *, storage: str | Path | None = None,
                  name: str | None = None) -> tuple[Study, StudyStore, Plan]:
    """Validate the study, freeze it under the store, check the data, write plan and splits."""
    from synthmix.datasets.cache import build_cache
    from synthmix.datasets.manifest import read_manifest
    from synthmix.datasets.nifti import check_dataset
    from synthmix.datasets.preprocess import build_preprocess_config
    from synthmix.datasets.splits import SplitPlan
    from synthmix.search_spaces.data_checks import check_study_data

    study = load_study(str(study_ref) if study_ref else "quickstart")
    store = StudyStore.open(name or study.name, storage)
    frozen = _study_to_freeze(study, store)  # refused here if it differs; written once the data passed
    manifest_path = resolve_dataset(study, store.data_dir)
    manifest = read_manifest(manifest_path)
    preprocess = build_preprocess_config(study.dataset.preprocess)
    check_dataset(manifest, num_classes=_declared_classes(study, preprocess))
    if study.tune:
        from synthmix.orchestrator.tuning import frozen_winner

        study = frozen_winner(study, store)  # the study itself while its search is unfinished
    if store.splits_file.exists():
        with store.local_copy(store.splits_file) as local:
            splits = SplitPlan.load(local)  # re-checks every rule; overlap is an error
        splits.check_groups(manifest.groups, str(manifest.path))
    else:
        splits = build_split_plan(study, manifest.labelled_ids, manifest.unlabelled_ids, manifest.groups)
        with store.staged(store.splits_file) as local:
            splits.save(local)
    data = check_study_data(study, manifest, splits)  # the plan's checks, before Ray starts
    plan = expand_cells(study, splits, dataset_fingerprint=manifest.fingerprint(), manifest=manifest_path,
                        data=data)
    _check_same_dataset(store, plan, study_ref)
    if frozen is not None:
        atomic_write_bytes(store.study_file, frozen)
    atomic_write_bytes(store.plan_file, plan.to_json().encode())
    for config in {repr(p): p for p in data.preprocess.values()}.values():  # one per fitted crop
        build_cache(manifest_path, build_preprocess_config(config), store.cache_dir)  # before any worker
    return study, store, plan


def _declared_classes(study: Study, preprocess) -> int | None:
    # Labels are checked against the classes before any remapping: with a remap, its keys.
    if preprocess.remap:
        return max(int(k) for k in preprocess.remap) + 1
    return preprocess.num_classes or (study.dataset.phantom.classes if study.dataset.phantom else None)


def _study_to_freeze(study: Study, store: StudyStore) -> bytes | None:
    """The study text to keep as run (None: the stored one is the same). A different study
    under the same name is refused, except one that differs only in ``generator.pool`` or in
    named generator levels, which replaces the stored one. The caller writes it only after the data checks passed, so a study
    refused by them can be fixed and rerun under its name."""
    raw = yaml.safe_load(Path(study.source).read_text())
    manifest = raw.get("dataset", {}).get("manifest")
    if manifest and study.dataset.manifest:
        raw["dataset"]["manifest"] = str(study.dataset.manifest)  # absolute, valid from the store
    text = yaml.safe_dump(raw, sort_keys=False)
    if store.study_file.exists():
        with store.local_copy(store.study_file) as local:
            previous = load_study(local)
        if previous.fingerprint() == study.fingerprint():
            if previous.generator_levels == study.generator_levels:
                return None
            # Named generator levels added, removed or changed: their own cells get new ids
            # (schema.level_fingerprint); the other levels' cells and the baseline keep theirs.
            return text.encode()
        if previous.fingerprint(without_pool=True) == study.fingerprint(without_pool=True):
            # Only generator.pool changed: the trained generators stay valid; new pools are drawn
            # from them and the cells that use synthetic data get new ids (the old rows are no
            # longer in the plan).
            return text.encode()
        raise SynthmixError(
            f"{store.root} already holds study {previous.name!r} with a different configuration; "
            "pick another --name (or --storage) for the changed study, or resume the stored one "
            f"with 'synthmix resume {store.name}'")
    return text.encode()


def _check_same_dataset(store: StudyStore, plan: Plan, study_ref) -> None:
    """A study's data edited in place would give every cell a new id while the old rows stay:
    refused, like a changed configuration."""
    if not store.plan_file.exists():
        return
    before = json.loads(store.plan_file.read_text()).get("dataset_fingerprint")
    if before and before != plan.dataset_fingerprint:
        raise SynthmixError(
            f"{store.root}: the dataset of study {store.name!r} changed since it was run (fingerprint "
            f"{before} -> {plan.dataset_fingerprint}: a file or the manifest was edited in place); "
            f"its results belong to the old data. Run the new data under another name "
            f"('synthmix run {study_ref or 'quickstart'} --name {store.name}-v2') or restore the old files")


def trial_configs(study: Study, store: StudyStore, plan: Plan) -> list[dict]:
    """One Tune config ``{"spec": CellSpec dict}`` per pending cell, in plan order (the cell
    queue decides the launch order), then one per model-selection candidate still to train
    (``"candidate": True``, see ``orchestrator.choices``)."""
    from synthmix.orchestrator.choices import candidate_configs
    from synthmix.orchestrator.spec import build_cell_specs

    done = store.finished_cells()
    pending = [c for c in plan.cells if c.cell_id not in done]
    specs = build_cell_specs(study, str(store.root), plan, pending)
    return [{"spec": s.to_dict()} for s in specs] + candidate_configs(store, specs)


def queued_cells(plan: Plan, configs: list[dict]) -> list:
    """The trial configs as the cell queue sees them: artifact keys and the plan's estimates (a
    pool drawn in a run of its own costs a Ray start-up)."""
    from synthmix.orchestrator.capacity import QueuedCell
    from synthmix.orchestrator.choices import CHOICE_PREFIX
    from synthmix.search_spaces.expand import RAY_START_SECONDS, cell_costs, generator_costs

    costs, gen_costs = cell_costs(plan), generator_costs(plan)
    cells = []
    for config in configs:
        spec = config["spec"]
        cell_id, pool = spec["cell"]["cell_id"], spec["pool"]
        if config.get("candidate"):  # a model-selection candidate: a generator training alone
            key = spec["generator"]["key"]
            cells.append(QueuedCell(cell_id=cell_id, generator_key=key, generator_seconds=gen_costs[key], payload=config))
            continue
        if spec.get("choice"):  # waits for its candidates, then needs the choice and its pool
            choice = spec["choice"]
            cells.append(QueuedCell(cell_id=cell_id, generator_key=CHOICE_PREFIX + choice["key"],
                                    generator_seconds=RAY_START_SECONDS, segmentation_seconds=costs[cell_id][1],
                                    payload=config,
                                    after=tuple(c["generator"]["key"] for c in choice["candidates"])))
            continue
        blocks = spec["cell"].get("blocks") or ()  # generator.block_size: fixed pools only
        each = costs[cell_id][0] / max(len(blocks), 1)  # the cost model is the same for every block
        cells.append(QueuedCell(cell_id=cell_id, generator_key=spec["cell"]["generator_key"],
                                generator_seconds=costs[cell_id][0], segmentation_seconds=costs[cell_id][1],
                                pool_key=pool["key"] if pool and pool["source"] == "pool" else None,
                                pool_seconds=RAY_START_SECONDS, payload=config,
                                artifacts=tuple(k for b in blocks for k in b),
                                artifact_seconds=tuple(s for _ in blocks for s in (each, RAY_START_SECONDS))))
    return cells


def artifact_check(store: StudyStore, plan: Plan):
    """``is_complete(key)`` for the queue: a generator or pool key of the plan, asked of the
    store at most once a second (local) or every 5 s (object storage)."""
    from synthmix.orchestrator.capacity import completion_check
    from synthmix.orchestrator.choices import CHOICE_PREFIX, choice_complete

    kinds = {**{k: "generators" for k in plan.generator_jobs}, **{k: "pools" for k in plan.pool_jobs}}

    def complete(key: str) -> bool:
        if key.startswith(CHOICE_PREFIX):  # model selection: made, and its chosen pool drawn
            return choice_complete(store, plan, key[len(CHOICE_PREFIX):])
        return store.artifact_complete(kinds[key], key)

    return completion_check(complete, 5.0 if store.remote else 1.0)


def concurrency(study: Study, cluster: dict[str, float]) -> int:
    """How many cells can train at once on this fixed cluster (at least 1): each training needs
    workers x per-worker resources, and a trial beyond that would only wait. (On a joined,
    autoscaling cluster the count follows the cluster instead: see ``capacity``.)"""
    from synthmix.orchestrator.capacity import training_slots

    r = study.resources
    if r.max_concurrent_trials:
        return r.max_concurrent_trials
    if r.gpus_per_worker and cluster.get("GPU", 0) < r.workers * r.gpus_per_worker:
        raise SynthmixError(f"resources: each training asks for {r.workers * r.gpus_per_worker:g} GPU "
                            f"but the cluster has {cluster.get('GPU', 0):g}")
    return max(1, training_slots(r, cluster))


def run_study(study_ref: str | Path | None = None, *, storage: str | Path | None = None,
              name: str | None = None, address: str | None = None, quiet: bool = False) -> StudyStore:
    """Run (or continue) a study; returns its store. Raises if any cell failed."""
    from ray import tune

    study, store, plan = prepare_study(study_ref, storage=storage, name=name)
    if study.tune and not study.tuned:  # the tuning stage first; its winner is frozen into the grid
        from synthmix.orchestrator.tuning import run_tuning

        run_tuning(study, store, plan, address=address, quiet=quiet)
        study, store, plan = prepare_study(study_ref, storage=storage, name=name)
    configs = trial_configs(study, store, plan)
    say = (lambda *a: None) if quiet else print
    say(f"study {study.name}: {len(plan.cells)} cells, {len(plan.generator_jobs)} generator(s); "
        f"{len(plan.cells) - sum(not c.get('candidate') for c in configs)} already done; storage {store.root}")
    if configs:
        from synthmix.orchestrator.capacity import CellQueue, ClusterLimit

        with ray_session(study, address) as joined:
            import ray

            if any(c["spec"]["generator"] or c["spec"].get("choice") for c in configs):
                from synthmix.orchestrator.generators import start_coordinator

                coordinator = start_coordinator(store.name)  # noqa: F841 (held for the run)
            limit = ClusterLimit(study.resources,
                                 fixed=None if joined else concurrency(study, ray.cluster_resources()))
            say(f"running {len(configs)} cell(s), at most {limit.limit()} at a time"
                + (" for now: the limit follows the cluster as it scales" if joined else ""))
            queue = CellQueue(queued_cells(plan, configs), limit, is_complete=artifact_check(store, plan),
                              on_wait=lambda n: say(
                                  f"{n} cell(s) wait for the cluster to provide their resources (autoscaling)"))
            tuner = tune.Tuner(
                tune.with_resources(_trainable(), tune.PlacementGroupFactory(TRIAL_RESOURCES)),
                tune_config=tune.TuneConfig(search_alg=queue, num_samples=len(configs)),
                run_config=tune.RunConfig(
                    name=f"attempt-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=store.ray_storage("tune"),
                    verbose=0, callbacks=[ProgressCallback(total=len(configs), quiet=quiet, noun=(
                        "cells and candidate trainings" if any(c.get("candidate") for c in configs) else "cells"))],
                    failure_config=tune.FailureConfig(max_failures=0)),
            )
            tuner.fit()
    failed = {k: v for k, v in store.errors().items() if k not in store.finished_cells()}
    missing = [c.cell_id for c in plan.cells if c.cell_id not in store.finished_cells()]
    if missing:
        lines = [f"  {cid}: {headline(failed.get(cid, {}).get('error', 'did not finish'))}" for cid in missing]
        raise SynthmixError(f"{len(missing)} of {len(plan.cells)} cells did not finish "
                            f"(rerun 'synthmix resume {store.name}' to retry them):\n" + "\n".join(lines))
    return store


# Processes one running cell keeps on its node besides its workers: the Tune trial, Ray
# Train's controller, synchronisation actor, dataset manager and placement-group cleaner.
PROCESSES_PER_CELL = 5


def _embedded_config(study: Study) -> dict:
    """The embedded Ray's worker startup concurrency, sized to the processes of the cells that
    fit at once. Ray's default (the CPU count) makes the raylet warn ("N PYTHON worker processes
    have been started ... 4x the maximum expected startup concurrency") on every small machine:
    trials and Train controllers reserve no CPU by design, so more processes run than CPUs."""
    r = study.resources
    cpus = os.cpu_count() or 1
    cells = max(1, int(cpus // max(r.workers * r.cpus_per_worker, 1e-9)))
    return {"worker_maximum_startup_concurrency": max(cpus, cells * (PROCESSES_PER_CELL + r.workers))}


@contextlib.contextmanager
def ray_session(study: Study, address: str | None) -> Iterator[bool]:
    """Ray as synthmix's runs expect it: an embedded local Ray, or the cluster at ``address``
    (or ``$RAY_ADDRESS``); yields whether a cluster was joined. A Ray started here is shut
    down afterwards; a joined cluster's autoscaler request is cleared."""
    import ray

    from synthmix.orchestrator.capacity import ClusterLimit

    # Tune's newer console output prints its own banner even at verbose=0; ours replaces it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray Train's controller drains each worker's report queue every health check (2 s by
    # default) and a worker's report() blocks until then: small cells lost seconds to it.
    os.environ.setdefault(TRAIN_POLL_ENV, "0.5")
    # A failed cell's traceback goes to errors/CELL.json and its first line to our summary;
    # Tune's own log would print every traceback again mid-progress.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    joined = bool(address or os.environ.get("RAY_ADDRESS"))
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level="ERROR", runtime_env=_runtime_env(joined),
                 _system_config=None if joined else _embedded_config(study))
    try:
        yield joined
    finally:
        if joined and ray.is_initialized():
            ClusterLimit(study.resources).demand(0)  # let the autoscaler release this run's request
        if started_here:
            ray.shutdown()


def _runtime_env(joined: bool) -> dict | None:
    """Workers of a joined cluster do not inherit this shell: forward the storage endpoint and
    region (never credentials: nodes use their instance role or their own environment). Inside
    ``ray job submit`` the job's own runtime_env carries them, and repeating a variable there
    is an error."""
    if not joined or "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        return None
    env = {k: os.environ[k] for k in (*ENDPOINT_ENV, TRAIN_POLL_ENV) if os.environ.get(k)}
    return {"env_vars": env} if env else None


def _trainable():
    from synthmix.orchestrator.cells import run_cell

    def trial(config: dict) -> None:
        run_cell(config["cell_config"])

    return trial


def resume_study(name: str, *, storage: str | Path | None = None, address: str | None = None,
                 quiet: bool = False) -> StudyStore:
    """Continue a study from what its store holds."""
    store = StudyStore.open(name, storage)
    if not store.study_file.exists():
        raise SynthmixError(f"no study named {name!r} under {store.storage} (no {store.study_file.name})")
    with store.local_copy(store.study_file) as study_file:
        return run_study(study_file, storage=store.storage, name=name, address=address, quiet=quiet)
