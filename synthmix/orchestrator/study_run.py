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

import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from synthmix.errors import SynthmixError
from synthmix.orchestrator.progress import ProgressCallback
from synthmix.orchestrator.store import StudyStore, atomic_write_bytes
from synthmix.search_spaces.expand import Plan, expand_cells, resolve_dataset, build_split_plan
from synthmix.search_spaces.schema import Study, load_study

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

    study = load_study(str(study_ref) if study_ref else "quickstart")
    store = StudyStore.open(name or study.name, storage)
    _freeze_study(study, store)
    manifest_path = resolve_dataset(study, store.data_dir)
    manifest = read_manifest(manifest_path)
    preprocess = build_preprocess_config(study.dataset.preprocess)
    check_dataset(manifest, num_classes=_declared_classes(study, preprocess))
    if store.splits_file.exists():
        splits = SplitPlan.load(store.splits_file)  # re-checks every rule; overlap is an error
    else:
        splits = build_split_plan(study, manifest.labelled_ids, manifest.unlabelled_ids)
        splits.save(store.splits_file)
    plan = expand_cells(study, splits, dataset_fingerprint=manifest.fingerprint(), manifest=manifest_path)
    atomic_write_bytes(store.plan_file, plan.to_json().encode())
    build_cache(manifest_path, preprocess, store.cache_dir)  # once, before any worker needs it
    return study, store, plan


def _declared_classes(study: Study, preprocess) -> int | None:
    # Labels are checked against the classes before any remapping: with a remap, its keys.
    if preprocess.remap:
        return max(int(k) for k in preprocess.remap) + 1
    return preprocess.num_classes or (study.dataset.phantom.classes if study.dataset.phantom else None)


def _freeze_study(study: Study, store: StudyStore) -> None:
    """Keep the study as run; a different study under the same name is refused."""
    raw = yaml.safe_load(Path(study.source).read_text())
    manifest = raw.get("dataset", {}).get("manifest")
    if manifest and study.dataset.manifest:
        raw["dataset"]["manifest"] = str(study.dataset.manifest)  # absolute, valid from the store
    text = yaml.safe_dump(raw, sort_keys=False)
    if store.study_file.exists():
        previous = load_study(store.study_file)
        if previous.fingerprint() != study.fingerprint():
            raise SynthmixError(
                f"{store.root} already holds study {previous.name!r} with a different configuration; "
                "pick another --name (or --storage) for the changed study, or resume the stored one "
                f"with 'synthmix resume {store.name}'")
        return
    atomic_write_bytes(store.study_file, text.encode())


def trial_configs(study: Study, store: StudyStore, plan: Plan) -> list[dict]:
    """One Tune config per pending cell, in launch order: one cell per generator key first (so
    generators start early), then cells without synthetic data, then the rest."""
    done = store.finished_cells()
    pending = [c for c in plan.cells if c.cell_id not in done]
    first_of_key, seen = [], set()
    for c in pending:
        if c.generator_key and c.generator_key not in seen:
            seen.add(c.generator_key)
            first_of_key.append(c)
    no_gen = [c for c in pending if c.generator_key is None]
    rest = [c for c in pending if c.generator_key and c not in first_of_key]
    r = study.resources
    scaling = {"workers": r.workers, "cpus_per_worker": r.cpus_per_worker, "gpus_per_worker": r.gpus_per_worker}
    configs = []
    for c in first_of_key + no_gen + rest:
        split = plan.splits.get(c.fold, c.repeat, c.amount)
        job = plan.generator_jobs.get(c.generator_key) if c.generator_key else None
        segmenter = {**study.segmenter_config(c.factors.get("architecture", "unet"),
                                              c.factors.get("augmentation", "none")), "seed": c.seed}
        configs.append({
            "root": str(store.root), "study": study.name, "factors": list(study.factors),
            "cell": c.to_dict(), "manifest": str(plan.manifest), "preprocess": study.dataset.preprocess,
            "split": {"train": list(split.train), "val": list(split.val), "test": list(split.test)},
            "generator_job": _job_dict(job), "segmenter": segmenter,
            "mixing": {"policy": study.mixing.policy, "source": study.mixing.source},
            "scaling": scaling, "max_failures": r.max_failures,
        })
    return configs


def _job_dict(job) -> dict | None:
    if job is None:
        return None
    d = asdict(job)
    d["subjects"], d["unlabelled"] = list(job.subjects), list(job.unlabelled)
    return d


def concurrency(study: Study, cluster: dict[str, float]) -> int:
    """How many cells can train at once on this cluster (at least 1): each training needs
    workers x per-worker resources, and a trial beyond that would only wait."""
    r = study.resources
    if r.max_concurrent_trials:
        return r.max_concurrent_trials
    slots = math.floor(cluster.get("CPU", 1) / max(r.workers * r.cpus_per_worker, 1e-9))
    if r.gpus_per_worker:
        slots = min(slots, math.floor(cluster.get("GPU", 0) / (r.workers * r.gpus_per_worker)))
        if slots < 1:
            raise SynthmixError(f"resources: each training asks for {r.workers * r.gpus_per_worker:g} GPU "
                                f"but the cluster has {cluster.get('GPU', 0):g}")
    return max(1, slots)


def run_study(study_ref: str | Path | None = None, *, storage: str | Path | None = None,
              name: str | None = None, address: str | None = None, quiet: bool = False) -> StudyStore:
    """Run (or continue) a study; returns its store. Raises if any cell failed."""
    import ray
    from ray import tune

    study, store, plan = prepare_study(study_ref, storage=storage, name=name)
    configs = trial_configs(study, store, plan)
    say = (lambda *a: None) if quiet else print
    say(f"study {study.name}: {len(plan.cells)} cells, {len(plan.generator_jobs)} generator(s); "
        f"{len(plan.cells) - len(configs)} already done; storage {store.root}")
    if configs:
        # Tune's newer console output prints its own banner even at verbose=0; ours replaces it.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=True, logging_level="ERROR")
        try:
            from synthmix.orchestrator.generators import start_coordinator

            coordinator = start_coordinator(store.name)  # noqa: F841 (held for the run)
            limit = concurrency(study, ray.cluster_resources())
            say(f"running {len(configs)} cell(s), at most {limit} at a time")
            tuner = tune.Tuner(
                tune.with_resources(_trainable(), tune.PlacementGroupFactory(TRIAL_RESOURCES)),
                param_space={"cell_config": tune.grid_search(configs)},
                tune_config=tune.TuneConfig(max_concurrent_trials=limit),
                run_config=tune.RunConfig(
                    name=f"attempt-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(store.ray_dir / "tune"),
                    verbose=0, callbacks=[ProgressCallback(total=len(configs), quiet=quiet)],
                    failure_config=tune.FailureConfig(max_failures=0)),
            )
            tuner.fit()
        finally:
            if started_here:
                ray.shutdown()
    failed = {k: v for k, v in store.errors().items() if k not in store.finished_cells()}
    missing = [c.cell_id for c in plan.cells if c.cell_id not in store.finished_cells()]
    if missing:
        lines = [f"  {cid}: {failed.get(cid, {}).get('error', 'did not finish').splitlines()[0]}" for cid in missing]
        raise SynthmixError(f"{len(missing)} of {len(plan.cells)} cells did not finish "
                            f"(rerun 'synthmix resume {store.name}' to retry them):\n" + "\n".join(lines))
    return store


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
        raise SynthmixError(f"no study named {name!r} under {store.root.parent} (no {store.study_file.name})")
    return run_study(store.study_file, storage=store.root.parent, name=name, address=address, quiet=quiet)
