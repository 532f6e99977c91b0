"""One cell = one Ray Tune trial: its generator (trained once per key), its segmentation
training and evaluation, one results row.

Reads top to bottom: ``run_cell`` is the Tune function trainable; ``generator_flow`` and
``segmentation_flow`` run on Ray Train workers (``train_launch.run_on_ray_train``). Workers load
their data themselves from the study's preprocessed cache (memory-mapped), so no arrays travel
through the object store. The trial reserves no CPU: while it waits for another trial's
generator it holds nothing a training could use.

Paths that must be local (data, cache, generator copies) are worked out on the worker from the
store's root (``StudyStore.at``), since with remote storage each node keeps its own.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from synthmix.orchestrator.generators import ensure_generator
from synthmix.orchestrator.rows import build_row, write_row
from synthmix.orchestrator.store import StudyStore
from synthmix.orchestrator.train_launch import Scaling, run_on_ray_train


# --- worker flows (run on every Ray Train worker) ---------------------------------------------


def _local_manifest(args: dict, store: StudyStore) -> str:
    """The dataset's manifest on this node. A phantom is (re)built under this node's data
    folder when missing: it is deterministic from its parameters, and with remote storage the
    driver's copy is on another machine. A user's manifest must be on a path every node sees."""
    if args.get("phantom") is None:
        return args["manifest"]
    from synthmix.search_spaces.expand import resolve_dataset
    from synthmix.search_spaces.schema import DatasetSpec, PhantomSpec

    dataset = DatasetSpec(phantom=PhantomSpec(**args["phantom"]), manifest=None, preprocess={})
    return str(resolve_dataset(SimpleNamespace(dataset=dataset), store.data_dir))  # reads .dataset only


def _training_slices(args: dict):
    """The cell's real training subset, normalised with statistics from it alone (rule 4)."""
    from synthmix.datasets.cache import build_cache
    from synthmix.datasets.loader import fit_normaliser, load_slices
    from synthmix.datasets.preprocess import build_preprocess_config

    store = StudyStore.at(args["root"])
    preprocess = build_preprocess_config(args["preprocess"])
    entry = build_cache(_local_manifest(args, store), preprocess, store.cache_dir)
    normaliser = fit_normaliser(entry, args["train"], preprocess)
    train = load_slices(entry, args["train"], normaliser=normaliser, training=True, preprocess=preprocess)
    return entry, preprocess, normaliser, train


def generator_flow(args: dict, context) -> dict:
    """Train the generator of one key on exactly its training subset (rule 3), on this node's
    disk; rank 0 then publishes it to the store (an upload when the store is remote)."""
    from synthmix.trainers.generators import GENERATORS

    _, _, _, train = _training_slices(args)
    family = GENERATORS.get(args["name"])
    config = family.config({**args["config"], "seed": args["seed"]})
    store = StudyStore.at(args["root"])
    out_dir = store.generator_workdir(args["key"])
    artifact = family.train(config, train, context, out_dir)
    if context.world_rank != 0:
        return {"quality": {}}
    store.publish_generator(args["key"], out_dir)  # before the final report: see ensure_generator
    return {"quality": artifact.quality}


def _synthetic_source(args: dict, device):
    """A fixed pool, or a generator sampled on the fly (one loaded network, seeded per draw)."""
    from synthmix.trainers.generators.artifact import GeneratorArtifact

    if args["generator_key"] is None:
        return None, 0
    artifact = GeneratorArtifact(StudyStore.at(args["root"]).local_generator(args["generator_key"]))
    if args["mixing"]["source"] == "pool":
        pool = artifact.pool()
        return pool, len(pool)
    network = artifact.load_generator(device)

    def generate(n: int, rng: np.random.Generator):
        return network.sample(n, seed=int(rng.integers(2**31)), device=device)

    return generate, -1


def segmentation_flow(args: dict, context) -> dict:
    """Train and evaluate one cell's segmentation network on real (+ synthetic) data."""
    from synthmix.datasets.loader import load_slices
    from synthmix.datasets.mixing import MIXING_POLICIES
    from synthmix.trainers.segmentation import SegmentationData, build_segmentation_config, train_segmentation

    entry, preprocess, normaliser, train = _training_slices(args)
    val = load_slices(entry, args["val"], normaliser=normaliser, training=False, preprocess=preprocess)
    test = load_slices(entry, args["test"], normaliser=normaliser, training=False, preprocess=preprocess)
    config = build_segmentation_config(args["segmenter"])
    synthetic, available = _synthetic_source(args, context.device)
    sampler = MIXING_POLICIES.get(args["mixing"]["policy"]).build_sampler(
        args["level"], real=train, synthetic=synthetic, batch_size=config.batch_size)
    result = train_segmentation(config, SegmentationData(train=train, val=val, test=test, sampler=sampler), context)
    metrics = {k: v for k, v in result.metrics.items() if k != "per_subject"}
    return {"metrics": {**metrics, "best_step": result.best_step, "steps_done": result.steps_done},
            "timings": result.timings, "n_train_slices": len(train), "n_synthetic_available": available}


# --- the Tune trial -----------------------------------------------------------------------------


def run_cell(config: dict) -> None:
    """Ray Tune function trainable for one cell; ``config`` is built by ``study_run``."""
    from ray import tune

    store = StudyStore.at(config["root"])
    cell = config["cell"]
    try:
        row = _run(store, cell, config)
    except Exception as err:
        store.record_error(cell["cell_id"], err)
        raise
    store.clear_error(cell["cell_id"])
    tune.report({"dice_mean": row.get("dice_mean", float("nan")), "done": 1})


def _run(store: StudyStore, cell: dict, config: dict) -> dict:
    start = time.monotonic()
    if store.row_file(cell["cell_id"]).exists():  # finished by an earlier attempt
        return {}
    scaling = Scaling(**config["scaling"])
    storage_path = store.ray_storage("train")
    split, job = config["split"], config.get("generator_job")
    common = {"root": str(store.root), "manifest": config["manifest"], "phantom": config.get("phantom"),
              "preprocess": config["preprocess"], "train": split["train"]}

    gen_timing, quality = {"train_s": 0.0, "wait_s": 0.0}, {}
    if job is not None:
        key = job["key"]
        gen_args = {**common, "train": job["subjects"], "name": job["name"], "config": job["config"],
                    "seed": job["seed"], "key": key}
        gen_timing = ensure_generator(
            key, artifact_dir=store.generator_dir(key), is_complete=lambda _: store.generator_complete(key),
            study_name=store.name, owner=cell["cell_id"],
            train=lambda: run_on_ray_train(generator_flow, gen_args, name=f"generator-{key}",
                                           storage_path=storage_path, scaling=scaling,
                                           max_failures=config["max_failures"]))
        quality = store.generator_quality(key)

    seg_args = {**common, "val": split["val"], "test": split["test"], "segmenter": config["segmenter"],
                "mixing": config["mixing"], "level": cell["synthetic"],
                "generator_key": job["key"] if job else None}
    seg_start = time.monotonic()
    seg = run_on_ray_train(segmentation_flow, seg_args, name=f"cell-{cell['cell_id']}",
                           storage_path=storage_path, scaling=scaling, max_failures=config["max_failures"])
    seg_wall = time.monotonic() - seg_start

    timings = {"generator_train": gen_timing["train_s"], "generator_wait": gen_timing["wait_s"],
               "segmentation_train": seg["timings"].get("train_s", seg_wall),
               "evaluation": seg["timings"].get("eval_s", 0.0),
               "cell": time.monotonic() - start}
    data = {"train_subjects": split["train"], "n_val_subjects": len(split["val"]),
            "n_test_subjects": len(split["test"]), "n_train_slices": seg["n_train_slices"],
            "n_synthetic_available": seg["n_synthetic_available"]}
    row = build_row(study=config["study"], cell=cell, factors=config["factors"], mixing=config["mixing"],
                    data=data, metrics=seg["metrics"], generator=quality, timings=timings)
    write_row(store, row)
    return row
