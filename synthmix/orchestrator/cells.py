"""One cell = one Ray Tune trial: its generator (trained once per key), its segmentation
training and evaluation, one results row.

Reads top to bottom: ``run_cell`` is the Tune function trainable; ``generator_flow`` and
``segmentation_flow`` run on Ray Train workers (``train_launch.run_on_ray_train``). Workers load
their data themselves from the study's preprocessed cache (memory-mapped), so no arrays travel
through the object store. The trial reserves no CPU: while it waits for another trial's
generator it holds nothing a training could use.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from synthmix.orchestrator.generators import ensure_generator
from synthmix.orchestrator.rows import build_row, write_row
from synthmix.orchestrator.store import StudyStore
from synthmix.orchestrator.train_launch import Scaling, run_on_ray_train


# --- worker flows (run on every Ray Train worker) ---------------------------------------------


def _training_slices(args: dict):
    """The cell's real training subset, normalised with statistics from it alone (rule 4)."""
    from synthmix.datasets.cache import build_cache
    from synthmix.datasets.loader import fit_normaliser, load_slices
    from synthmix.datasets.preprocess import build_preprocess_config

    preprocess = build_preprocess_config(args["preprocess"])
    entry = build_cache(args["manifest"], preprocess, args["cache_root"])
    normaliser = fit_normaliser(entry, args["train"], preprocess)
    train = load_slices(entry, args["train"], normaliser=normaliser, training=True, preprocess=preprocess)
    return entry, preprocess, normaliser, train


def generator_flow(args: dict, context) -> dict:
    """Train the generator of one key on exactly its training subset (rule 3)."""
    from synthmix.trainers.generators import GENERATORS

    _, _, _, train = _training_slices(args)
    family = GENERATORS.get(args["name"])
    config = family.config({**args["config"], "seed": args["seed"]})
    artifact = family.train(config, train, context, Path(args["out_dir"]))
    return {"quality": artifact.quality if context.world_rank == 0 else {}}


def _synthetic_source(args: dict, device):
    """A fixed pool, or a generator sampled on the fly (one loaded network, seeded per draw)."""
    from synthmix.trainers.generators.artifact import GeneratorArtifact

    if args["generator_dir"] is None:
        return None, 0
    artifact = GeneratorArtifact(args["generator_dir"])
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

    store = StudyStore(Path(config["root"]))
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
    storage_path = str(store.ray_dir / "train")
    split, job = config["split"], config.get("generator_job")
    common = {"manifest": config["manifest"], "cache_root": str(store.cache_dir),
              "preprocess": config["preprocess"], "train": split["train"]}

    gen_timing, quality, generator_dir = {"train_s": 0.0, "wait_s": 0.0}, {}, None
    if job is not None:
        generator_dir = store.generator_dir(job["key"])
        gen_args = {**common, "train": job["subjects"], "name": job["name"], "config": job["config"],
                    "seed": job["seed"], "out_dir": str(generator_dir)}
        from synthmix.trainers.generators.artifact import GeneratorArtifact, is_complete

        gen_timing = ensure_generator(
            job["key"], artifact_dir=generator_dir, is_complete=is_complete, study_name=store.name,
            owner=cell["cell_id"],
            train=lambda: run_on_ray_train(generator_flow, gen_args, name=f"generator-{job['key']}",
                                           storage_path=storage_path, scaling=scaling,
                                           max_failures=config["max_failures"]))
        quality = GeneratorArtifact(generator_dir).quality

    seg_args = {**common, "val": split["val"], "test": split["test"], "segmenter": config["segmenter"],
                "mixing": config["mixing"], "level": cell["synthetic"],
                "generator_dir": str(generator_dir) if generator_dir else None}
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
