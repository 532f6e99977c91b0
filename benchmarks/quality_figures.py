"""What each generator quality figure says for real data, an untrained DCGAN and a trained one.

Trains the default joint WGAN-GP DCGAN with the quickstart's generator options (latent 64, 16
base filters, 300 steps) on a phantom training subset, then prints ``quality_report``'s figures
for the trained sampler, the untrained one (same architecture and seed) and real data (the
floors), and writes real / trained / untrained sample grids to look at. The reference of every
figure is measured in the same run: the real column. Prints, asserts nothing.

    .venv/bin/python benchmarks/quality_figures.py [--size 32|64] [--train N] [--steps 300]
        [--n 256] [--keep DIR]

``--size 32``: the quickstart's phantom (12 subjects, 3 classes); ``--train 3`` and ``--train 6``
are its two real fractions. ``--size 64``: the default phantom (20 subjects, 4 classes). Three
subjects after the training ones are the validation slices (the reference segmenter's own Dice
only). With ``--keep DIR`` a generator already trained there is reused.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from synthmix.datasets.loader import prepare_split_data
from synthmix.datasets.phantom import write_phantom_dataset
from synthmix.datasets.preprocess import PreprocessConfig
from synthmix.datasets.splits import Split
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators.artifact import GeneratorArtifact, is_complete, save_sample_grid
from synthmix.trainers.generators.training import build_generator_config, train_generator
from synthmix.trainers.quality import quality_report
from synthmix.trainers.synthetic import Samples

print = functools.partial(print, flush=True)

DATASETS = {32: (12, 3), 64: (20, 4)}  # size -> (phantom subjects, classes)
ROWS = (("swd", "SWD x1e3 (mean over splits)"), ("swd_sd", "  its SD over splits"),
        ("swd_vs_floor", "  gap to floor / combined SD"), ("fcn_dice_mean", "FCN score: Dice mean"),
        ("blur", "blur: variance of Laplacian"), ("nn_distance", "NN distance to training"))


def as_sample(sampler):
    return lambda n, seed: Samples(*sampler.sample(n, seed=seed), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, choices=sorted(DATASETS), default=32)
    parser.add_argument("--train", type=int, default=6, help="training subjects")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--n", type=int, default=256, help="samples per figure")
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="synthmix-quality-") as tmp:
        root = args.keep or Path(tmp)
        subjects, classes = DATASETS[args.size]
        manifest = write_phantom_dataset(root / "phantom", subjects=subjects, size=args.size, classes=classes)
        ids = [f"sub-{i:03d}" for i in range(subjects)]
        t = args.train
        split = Split(fold=0, repeat=0, amount=1.0, train=tuple(ids[:t]), val=tuple(ids[t:t + 3]),
                      test=tuple(ids[t + 3:t + 6]), pool=tuple(ids[:t]))
        train, val, _, _ = prepare_split_data(manifest, split, PreprocessConfig(axis=2), root / "cache")
        config = build_generator_config(dict(base_filters=16, latent_dim=64, batch_size=16, steps=args.steps,
                                             checkpoint_every=100, pool_size=64, quality_samples=64))
        t0 = time.perf_counter()
        if not is_complete(root / "generator"):
            train_generator(config, train, LocalContext(checkpoint_root=root / "ckpt"), root / "generator")
        train_s = time.perf_counter() - t0
        artifact = GeneratorArtifact(root / "generator")
        trained, untrained = artifact.load_generator("cpu"), artifact.untrained_sampler("cpu")
        t0 = time.perf_counter()
        report = quality_report(as_sample(trained), train, seed=0, n=args.n, untrained=as_sample(untrained), val=val)
        report_s = time.perf_counter() - t0

        pick = np.random.default_rng(0).choice(len(train), 32, replace=False)
        save_sample_grid(train.images[pick], train.labels[pick], root / "real.png", num_classes=classes)
        for name, sampler in (("trained", trained), ("untrained", untrained)):
            save_sample_grid(*sampler.sample(32, seed=0), root / f"{name}.png", num_classes=classes)

        print(f"{args.size}x{args.size}, {len(train)} training slices of {t} subjects, {len(val)} validation "
              f"slices; generator {args.steps} steps ({train_s:.0f} s), report {report_s:.0f} s; "
              f"SWD set sizes {report['meta']['swd_set_sizes']}")
        print(f"{'figure':32s}{'real':>10s}{'untrained':>11s}{'trained':>10s}")
        for key, label in ROWS:
            cells = [report[c].get(key) if report[c] else None for c in ("real", "untrained", "trained")]
            print(f"{label:32s}" + "".join(f"{v:>10.2f} " if isinstance(v, float) else f"{'-':>10s} " for v in cells))
        print(json.dumps({k: v for k, v in report.items() if k != "definitions"}, indent=1))
        print(f"grids: {root / 'real.png'} {root / 'trained.png'} {root / 'untrained.png'}")


if __name__ == "__main__":
    main()
