"""Acceptance run for the generator (issue 3): the default joint WGAN-GP DCGAN on the phantom.

Writes the default phantom (20 subjects, 64x64, 4 classes), takes 14 subjects as the training
subset (3 val / 3 test, untouched by the generator: rule 3), builds the training SliceSet
through the data layer (axial slices, z-score statistics from the training subjects), trains
the default GeneratorConfig on the CPU, and prints the quality figures (SWD trained vs
untrained vs real-vs-real, nearest-neighbour distances) and wall time. It also writes a grid of
real training slices beside the artifact's samples.png for a by-eye comparison. Prints, asserts
nothing.

    .venv/bin/python benchmarks/generator_acceptance.py [--steps N] [--threads T] [--keep DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
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
from synthmix.trainers.generators.artifact import save_sample_grid
from synthmix.trainers.generators.training import GeneratorConfig, train_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="override steps (generator iterations)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a 2-core machine shared with other jobs)")
    parser.add_argument("--keep", type=Path, default=None, help="copy the artifact and real grid here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="synthmix-gen-accept-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        manifest = write_phantom_dataset(root / "phantom")
        ids = [f"sub-{i:03d}" for i in range(20)]
        split = Split(fold=0, repeat=0, amount=1.0, train=tuple(ids[:14]), val=tuple(ids[14:17]),
                      test=tuple(ids[17:]), pool=tuple(ids[:14]))
        train, val, _, _ = prepare_split_data(manifest, split, PreprocessConfig(axis=2), root / "cache")
        print(f"data: {len(train)} training slices of {len(train.subjects)} subjects, shape "
              f"{train.images.shape[1:]}, {train.num_classes} classes, intensities "
              f"[{train.images.min():.2f}, {train.images.max():.2f}]")
        pick = np.random.default_rng(0).choice(len(train), 32, replace=False)
        save_sample_grid(train.images[pick], train.labels[pick], root / "real.png",
                         num_classes=train.num_classes, ncols=8)

        config = GeneratorConfig()
        if args.steps is not None:
            config = dataclasses.replace(config, steps=args.steps)
        print(f"config: {config}")
        context = LocalContext(checkpoint_root=root / "ckpt")
        t0 = time.perf_counter()
        artifact = train_generator(config, train, context, root / "generator")
        wall = time.perf_counter() - t0

        for h in context.history:
            print(f"step {h['step']:5d}  critic {h['critic_loss']:8.3f}  generator {h['generator_loss']:8.3f}  "
                  f"W estimate {h['wasserstein']:7.3f}")
        q = artifact.quality
        print(json.dumps({k: v for k, v in q.items() if not k.endswith("definition")}, indent=1))
        print(f"RESULT SWD x1e3 trained {q['swd']:.1f} vs untrained {q['swd_untrained']:.1f} "
              f"(real-vs-real floor {q['swd_real_baseline']:.1f}); NN distance trained "
              f"{q['nn_distance']:.2f} vs untrained {q['nn_distance_untrained']:.2f} (real leave-one-subject-out "
              f"{q['nn_distance_real_baseline']:.2f}); wall time {wall:.1f} s on {torch.get_num_threads()} threads")
        print(f"samples: {artifact.path / 'samples.png'}  real: {root / 'real.png'}")


if __name__ == "__main__":
    main()
