"""Synthetic pools: what a cell may draw from a trained generator, after clean-up and filters.

A pool is an artifact of its own (``artifacts/pools/POOL_KEY/``: ``pool.npz`` + ``pool.json``)
keyed by the generator key and the pool settings, so changing the pool draws a new one from
the same trained generator. ``pool.json`` records the counts of every step:
``{drawn, kept, steps: [{name, removed}]}``. Sampling on the fly (003) goes through the same
clean-up per draw (``on_the_fly``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from synthmix.datasets.arrays import SliceSet, SyntheticPool
from synthmix.trainers.generators.artifact import GeneratorArtifact, read_json, write_artifact_folder
from synthmix.trainers.generators.flow import sample_fn
from synthmix.trainers.generators.masks import MaskSource, build_mask_spec

POOL_FILE = "pool.npz"
POOL_INFO = "pool.json"


def is_complete(path: str | Path) -> bool:
    return all((Path(path) / f).is_file() for f in (POOL_FILE, POOL_INFO))


def _draw_fn(artifact: GeneratorArtifact, reference: SliceSet, device) -> Callable:
    from synthmix.trainers.generators import GENERATORS

    masks = None
    if GENERATORS.get(artifact.family_name).needs_masks:
        masks = MaskSource(reference.labels, build_mask_spec(artifact.spec.get("masks")))
    return sample_fn(artifact.sampler(device), masks, device)


def draw_pool(artifact: GeneratorArtifact, spec: dict, reference: SliceSet, *, seed: int, key: str,
              out_dir: Path, device="cpu") -> Path:
    """Draw, clean up and filter a pool from ``artifact`` with ``reference`` (the cell's
    labelled training subset: rule 3) and write it to ``out_dir``."""
    from synthmix.trainers.synthetic import Reference, build_pool_spec, draw

    pool_spec = build_pool_spec(spec)
    samples, counts = draw(_draw_fn(artifact, reference, device), pool_spec, Reference(reference), seed=seed)
    info = {"key": key, "generator": artifact.spec["key"], "family": artifact.family_name, "seed": seed,
            "spec": pool_spec.to_dict(), **counts}

    def write(tmp: Path) -> None:
        SyntheticPool(samples.images, samples.labels, meta={"pool_key": key, "generator": artifact.spec["key"],
                                                            "num_classes": artifact.num_classes}).save(tmp / POOL_FILE)
        (tmp / POOL_INFO).write_text(json.dumps(info, indent=2, default=float))

    write_artifact_folder(Path(out_dir), write, finished=is_complete)
    return Path(out_dir)


def load_pool(path: str | Path) -> tuple[SyntheticPool, dict]:
    return SyntheticPool.load(Path(path) / POOL_FILE), read_json(Path(path) / POOL_INFO)


def on_the_fly(artifact: GeneratorArtifact, spec: dict, reference: SliceSet, device="cpu"):
    """``generate(n, rng) -> (images, labels)`` drawing n fresh samples through the pool's
    clean-up (and any per-sample filter) for every call; ``plan`` has refused filters that
    need a whole pool."""
    from synthmix.trainers.synthetic import Reference, build_pool_spec, draw

    pool_spec = build_pool_spec(spec)
    draw_fn, ref = _draw_fn(artifact, reference, device), Reference(reference)

    def generate(n: int, rng: np.random.Generator):
        batch_spec = type(pool_spec)(**{**pool_spec.__dict__, "size": n})
        samples, _ = draw(draw_fn, batch_spec, ref, seed=int(rng.integers(2**31)), on_the_fly=True)
        return samples.images, samples.labels

    return generate
