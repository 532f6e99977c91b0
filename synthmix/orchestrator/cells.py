"""One cell = one Ray Tune trial: its generator (trained once per key), its pool (drawn once
per pool key), its segmentation training and evaluation, one results row.

Reads top to bottom: ``run_cell`` is the Tune function trainable; ``generator_flow``,
``pool_flow`` and ``segmentation_flow`` run on Ray Train workers
(``train_launch.run_on_ray_train``). Each takes the cell's typed ``CellSpec`` (as its dict)
and a TrainContext. Workers load their data themselves from the study's preprocessed cache
(memory-mapped), so no arrays travel through the object store. The trial reserves no CPU:
while it waits for another trial's generator or pool it holds nothing a training could use.

With model selection (``generator.choose``) a cell first takes the recorded choice of its
subset, or makes it once every candidate is trained (``orchestrator.choices``), and from then on
is a cell of the chosen candidate's generator and pool; a candidate's own trial
(``"candidate": True``) trains that generator alone.

Paths that must be local (data, cache, artifact copies) are worked out on the worker from the
store's root (``StudyStore.at``), since with remote storage each node keeps its own.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from synthmix.orchestrator import sleep_trainer
from synthmix.orchestrator.generators import ensure_generator
from synthmix.orchestrator.rows import (build_row, subject_metadata, subject_records, write_row,
                                        write_subject_rows, write_unlabelled_rows)
from synthmix.orchestrator.spec import CellSpec
from synthmix.orchestrator.store import StudyStore
from synthmix.orchestrator.train_launch import Scaling, run_on_ray_train


# --- worker flows (run on every Ray Train worker) ---------------------------------------------


def _spec(args: dict) -> CellSpec:
    from synthmix.search_spaces.schema import import_plugins

    spec = CellSpec.from_dict(args["spec"])
    import_plugins(spec.plugins)  # the user's registry entries exist in this process too
    return spec


def _local_manifest(spec: CellSpec, store: StudyStore) -> str:
    """The dataset's manifest on this node. A phantom is (re)built under this node's data
    folder when missing: it is deterministic from its parameters, and with remote storage the
    driver's copy is on another machine. A user's manifest must be on a path every node sees."""
    if spec.data.phantom is None:
        return spec.data.manifest
    from synthmix.search_spaces.expand import resolve_dataset
    from synthmix.search_spaces.schema import DatasetSpec, PhantomSpec

    dataset = DatasetSpec(phantom=PhantomSpec(**spec.data.phantom), manifest=None, preprocess={})
    return str(resolve_dataset(SimpleNamespace(dataset=dataset), store.data_dir))  # reads .dataset only


def _entry(spec: CellSpec):
    """(the study's cache entry on this node, the cell's preprocessing)."""
    from synthmix.datasets.cache import build_cache
    from synthmix.datasets.preprocess import build_preprocess_config

    store = StudyStore.at(spec.root)
    preprocess = build_preprocess_config(spec.data.preprocess)
    return build_cache(_local_manifest(spec, store), preprocess, store.cache_dir), preprocess


def _data(spec: CellSpec):
    """The cache entry, preprocessing, and the cell's real training subset normalised with
    statistics from it alone (rule 4), plus a loader for other subjects with that normaliser."""
    from synthmix.datasets.loader import fit_normaliser, load_slices

    entry, preprocess = _entry(spec)
    normaliser = fit_normaliser(entry, spec.split.train, preprocess)

    def load(subjects, *, training: bool = False, unlabelled: bool = False):
        return load_slices(entry, subjects, normaliser=normaliser, training=training, preprocess=preprocess,
                           allow_unlabelled=unlabelled)

    return load(spec.split.train, training=True), load


def generator_flow(args: dict, context) -> dict:
    """Train the generator of one key on exactly its training subset (and, for a family that
    asks, the study's unlabelled images): rule 3. Rank 0 publishes it to the store, then draws
    and publishes the cell's pool, saving a second Ray Train start-up."""
    if sleep_trainer.table() is not None:  # test-only, see sleep_trainer
        return sleep_trainer.generator_flow(args, context)
    from synthmix.trainers.generators import GeneratorData
    from synthmix.trainers.generators.flow import train_generator

    spec = _spec(args)
    job, store = spec.generator, StudyStore.at(spec.root)
    train, load = _data(spec)
    unlabelled = load(job.unlabelled, unlabelled=True).images if job.unlabelled else None
    out_dir = store.artifact_workdir("generators", job.key)
    artifact = train_generator(job.generator_spec(), GeneratorData(train, unlabelled), context, out_dir,
                               val=load(spec.split.val))
    if context.world_rank != 0:
        return {}
    store.publish_artifact("generators", job.key, out_dir)  # before the final report: see ensure_generator
    if spec.pool is not None and spec.pool.source == "pool" and not store.artifact_complete("pools", spec.pool.key):
        _draw_and_publish(spec, store, artifact, train, context.device)
    if spec.choice is not None:  # a model-selection candidate: the last one trained chooses and draws here
        from synthmix.orchestrator.choices import choose_after_training
        from synthmix.trainers.generators.artifact import GeneratorArtifact

        choose_after_training(spec, store, lambda chosen: _draw_and_publish(
            chosen, store, GeneratorArtifact(store.local_artifact("generators", chosen.generator.key)), train,
            context.device))
    return {}


def pool_flow(args: dict, context) -> dict:
    """Draw one pool from a finished generator (rank 0; clean-up and filters see the cell's
    training subset only)."""
    if sleep_trainer.table() is not None:  # test-only, see sleep_trainer
        return sleep_trainer.pool_flow(args, context)
    from synthmix.trainers.generators.artifact import GeneratorArtifact

    spec = _spec(args)
    if context.world_rank == 0:
        store = StudyStore.at(spec.root)
        artifact = GeneratorArtifact(store.local_artifact("generators", spec.generator.key))
        _draw_and_publish(spec, store, artifact, _data(spec)[0], context.device)
    return {}


def _draw_and_publish(spec: CellSpec, store: StudyStore, artifact, train, device) -> None:
    from synthmix.trainers.generators.pools import draw_pool

    out_dir = store.artifact_workdir("pools", spec.pool.key)
    draw_pool(artifact, spec.pool.spec, train, seed=spec.pool.seed, key=spec.pool.key, out_dir=out_dir,
              device=device)
    store.publish_artifact("pools", spec.pool.key, out_dir)


def _synthetic_source(spec: CellSpec, train, device):
    """(a fixed pool, or a generator sampled on the fly through the pool's clean-up; the
    number of samples the policy may draw, -1 on the fly)."""
    from synthmix.trainers.generators.artifact import GeneratorArtifact
    from synthmix.trainers.generators.pools import load_pool, on_the_fly

    if spec.generator is None:
        return None, 0
    store = StudyStore.at(spec.root)
    if spec.blocks:
        pool = _block_pool(spec, store)
        return pool, len(pool)
    if spec.pool.source == "pool":
        pool, _ = load_pool(store.local_artifact("pools", spec.pool.key))
        return pool, len(pool)
    artifact = GeneratorArtifact(store.local_artifact("generators", spec.generator.key))
    return on_the_fly(artifact, spec.pool.spec, train, device), -1


def _block_pool(spec: CellSpec, store: StudyStore):
    """The cell's pool from its blocks' pools (generator.block_size): each block's samples are
    in the intensity space of its block's normaliser, so they are mapped into the cell's (fitted
    on its whole subset, like its real data), then combined in equal shares."""
    from synthmix.datasets.loader import fit_normaliser
    from synthmix.datasets.mixing import pool_blocks, renormalise_pool
    from synthmix.trainers.generators.pools import load_pool

    entry, preprocess = _entry(spec)
    cell = fit_normaliser(entry, spec.split.train, preprocess)
    pools = [renormalise_pool(load_pool(store.local_artifact("pools", pool.key))[0],
                              fit_normaliser(entry, job.subjects, preprocess), cell)
             for job, pool in spec.blocks]
    return pool_blocks(pools)


def segmentation_flow(args: dict, context) -> dict:
    """Train and evaluate one cell's segmentation network on real (+ synthetic) data, with
    every label remapped to the cell's classes level (factor ``classes``) when it has one."""
    if sleep_trainer.table() is not None:  # test-only, see sleep_trainer
        return sleep_trainer.segmentation_flow(args, context)
    from synthmix.datasets.class_levels import ClassLevel, remap_slices, remap_synthetic
    from synthmix.datasets.mixing import MIXING_POLICIES
    from synthmix.trainers.augmentation import build_augmentation
    from synthmix.trainers.segmentation import SegmentationData, build_segmentation_config, train_segmentation

    spec = _spec(args)
    full_train, load = _data(spec)
    level = ClassLevel.from_dict(spec.classes) if spec.classes else None

    def at_level(slices, what: str):
        return remap_slices(slices, level, what) if level is not None else slices

    train = at_level(full_train, "the real training data")
    val = at_level(load(spec.split.val), "the validation data")
    # A tuning trial (score: validation) is evaluated on the validation subjects and loads no
    # test subject (rule 4).
    score = args.get("score", "test")
    test = val if score == "validation" else at_level(load(spec.split.test), "the test data")
    config = build_segmentation_config(spec.segmenter)
    # The generator and its pool hold the full label set (one key serves every classes level):
    # clean-up references the full labels, then the samples are remapped like the real data.
    synthetic, available = _synthetic_source(spec, full_train, context.device)
    if level is not None:
        synthetic = remap_synthetic(synthetic, level)
    n_real = len(train)
    offline = build_augmentation(config.augmentation, config.augmentation_params)
    if getattr(offline, "offline", False):  # 002's traditional: copies of the real slices, made once
        train = offline.expand(train, seed=config.seed)
    sampler = MIXING_POLICIES.get(spec.mixing["policy"]).build_sampler(
        spec.cell.factors["synthetic"], real=train, synthetic=synthetic, batch_size=config.batch_size,
        draw=spec.mixing.get("draw", "fixed"), base=n_real)
    unlabelled, known = _unlabelled_to_segment(spec, load, at_level) if score == "test" else (None, ())
    result = train_segmentation(config, SegmentationData(train=train, val=val, test=test, sampler=sampler,
                                                         unlabelled=unlabelled, unlabelled_known=known), context)
    metrics = {k: v for k, v in result.metrics.items() if k != "per_subject"}
    return {"metrics": {**metrics, "best_step": result.best_step, "steps_done": result.steps_done},
            "timings": result.timings, "n_train_slices": n_real, "n_augmented_slices": len(train) - n_real,
            "n_synthetic_available": available,
            "real_draws": result.real_draws, "synthetic_draws": result.synthetic_draws,
            "n_classes": train.num_classes, "class_names": list(level.names) if level is not None else None,
            "per_subject": result.metrics["per_subject"],
            "subject_metadata": subject_metadata(_local_manifest(spec, StudyStore.at(spec.root)), list(spec.split.test)),
            "unlabelled": result.unlabelled,
            "unlabelled_metadata": subject_metadata(_local_manifest(spec, StudyStore.at(spec.root)),
                                                    [r["subject"] for r in result.unlabelled])}


def _unlabelled_to_segment(spec: CellSpec, load, at_level):
    """evaluate: {unlabelled: true}: the split's unlabelled subjects, normalised like the cell's
    real data, with the labels their manifest rows name anyway (a phantom's ``truth``) filled
    in; (None, ()) otherwise. None of them is a validation or test subject (splits.py)."""
    if not spec.evaluate.get("unlabelled") or not spec.split.unlabelled:
        return None, ()
    from synthmix.datasets.loader import with_known_labels
    from synthmix.datasets.preprocess import build_preprocess_config

    slices, known = with_known_labels(load(spec.split.unlabelled, unlabelled=True),
                                      _local_manifest(spec, StudyStore.at(spec.root)),
                                      build_preprocess_config(spec.data.preprocess))
    return at_level(slices, "the unlabelled subjects' labels"), known


# --- the Tune trial -----------------------------------------------------------------------------


def run_cell(config: dict) -> None:
    """Ray Tune function trainable for one cell; ``config["spec"]`` is a CellSpec dict."""
    from ray import tune

    spec = _spec(config)
    store = StudyStore.at(spec.root)
    try:
        row = execute_cell(store, spec, config)
    except Exception as err:
        store.record_error(spec.cell_id, err)
        raise
    store.clear_error(spec.cell_id)
    tune.report({"dice_mean": row.get("dice_mean", float("nan")), "done": 1})


def _ensure(kind: str, key: str, store: StudyStore, spec: CellSpec, flow, config: dict) -> dict:
    """Make sure artifact ``kind``/``key`` exists, running ``flow`` on Ray Train here only if
    no other trial is (one lease per artifact: rule 6)."""
    return ensure_generator(
        f"{kind}-{key}", artifact_dir=store.artifact_dir(kind, key),
        is_complete=lambda _: store.artifact_complete(kind, key), study_name=store.name, owner=spec.cell_id,
        train=lambda: run_on_ray_train(flow, config, name=f"{kind[:-1]}-{key}", storage_path=store.ray_storage("train"),
                                       scaling=Scaling(**spec.scaling), max_failures=spec.max_failures))


def _chosen(store: StudyStore, spec: CellSpec, config: dict) -> tuple[CellSpec, dict]:
    """The recorded choice, or (every candidate trained: each by its own trial as a rule, here
    only one that no trial trains any more) the choice made now (``orchestrator.choices``)."""
    from synthmix.orchestrator.choices import candidate_spec, chosen_spec, make_choice, recorded_choice

    record = recorded_choice(store, spec.choice.key)
    if record is None:
        for cand in spec.choice.candidates:  # the lease's owner is this cell, the flow the candidate's
            _ensure("generators", cand.generator.key, store, spec, generator_flow,
                    {**config, "spec": candidate_spec(spec, cand).to_dict()})
        record = make_choice(store, spec.choice)
    resolved = chosen_spec(spec, record)
    return resolved, {**config, "spec": resolved.to_dict()}


def execute_cell(store: StudyStore, spec: CellSpec, config: dict) -> dict:
    """The cell's generator, pool and segmentation; returns its row, written to the store. A
    tuning trial's config has ``score``: ``validation`` (evaluated on the validation subjects,
    nothing written) or ``generator`` (stops after the generator: its quality figures)."""
    start = time.monotonic()
    score = config.get("score", "test")
    if score == "test" and store.row_file(spec.cell_id).exists():  # finished by an earlier attempt
        return {}
    if config.get("candidate"):  # a model-selection candidate's own trial: its training alone
        _ensure("generators", spec.generator.key, store, spec, generator_flow, config)
        return {}
    if spec.choice is not None:  # model selection: from here on, the chosen candidate's generator and pool
        spec, config = _chosen(store, spec, config)
    gen_timing, quality, pool_info = {"train_s": 0.0, "wait_s": 0.0}, {}, {}
    if spec.generator is not None:
        # One generator (and pool) per block with generator.block_size, each trained once per
        # key however many cells share it; the first block's quality figures go in the row.
        for part in spec.block_specs():
            part_config = {**config, "spec": part.to_dict()} if part is not spec else config
            timing = _ensure("generators", part.generator.key, store, part, generator_flow, part_config)
            if part.pool.source == "pool":
                pool_timing = _ensure("pools", part.pool.key, store, part, pool_flow, part_config)
                timing = {k: timing[k] + pool_timing[k] for k in ("train_s", "wait_s")}
                info = store.pool_info(part.pool.key)
                pool_info = {k: pool_info.get(k, 0) + info.get(k, 0) for k in ("drawn", "kept")}
            gen_timing = {k: gen_timing[k] + timing[k] for k in ("train_s", "wait_s")}
        quality = store.generator_quality(spec.generator.key)
    if score == "generator":
        return {"cell_id": spec.cell_id, "generator_key": spec.generator.key,
                **{f"gen_{k}": float(v) for k, v in _flat_quality(quality).items()}}

    seg_start = time.monotonic()
    seg = run_on_ray_train(segmentation_flow, config, name=f"cell-{spec.cell_id}",
                           storage_path=store.ray_storage("train"), scaling=Scaling(**spec.scaling),
                           max_failures=spec.max_failures)
    seg_wall = time.monotonic() - seg_start

    timings = {"generator_train": gen_timing["train_s"], "generator_wait": gen_timing["wait_s"],
               "segmentation_train": seg["timings"].get("train_s", seg_wall),
               "evaluation": seg["timings"].get("eval_s", 0.0),
               "cell": time.monotonic() - start}
    data = {"train_subjects": list(spec.split.train), "n_val_subjects": len(spec.split.val),
            "n_test_subjects": len(spec.split.test), "n_pool_subjects": spec.split.n_pool,
            "n_train_slices": seg["n_train_slices"], "n_synthetic_available": seg["n_synthetic_available"],
            "pool_drawn": pool_info.get("drawn", 0), "pool_kept": pool_info.get("kept", 0),
            "real_draws": seg["real_draws"], "synthetic_draws": seg["synthetic_draws"],
            "n_classes": seg.get("n_classes"), "class_names": seg.get("class_names"),
            "n_augmented_slices": seg.get("n_augmented_slices", 0)}
    row = build_row(study=spec.study, cell=spec.cell.to_dict(), factors=list(spec.factors), mixing=spec.mixing,
                    data=data, metrics=seg["metrics"], generator=_flat_quality(quality), timings=timings)
    if score == "test":  # a tuning trial's scores are its own record (synthmix.orchestrator.tuning)
        write_subject_rows(store, spec.cell_id, subject_records(row, list(spec.factors), seg["per_subject"],
                                                                seg["subject_metadata"]))
        if seg.get("unlabelled"):  # evaluate: {unlabelled: true}
            write_unlabelled_rows(store, spec.cell_id, subject_records(row, list(spec.factors), seg["unlabelled"],
                                                                       seg["unlabelled_metadata"]))
        write_row(store, row)
    return row


def _flat_quality(quality: dict) -> dict:
    """The numeric quality figures (``gen_<name>`` columns of the row)."""
    return {k: v for k, v in quality.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
