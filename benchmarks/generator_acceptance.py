"""Acceptance run for the generator (issue 3): the default joint WGAN-GP DCGAN on the phantom.

``--size 64`` (default): the default phantom (20 subjects, 64x64, 4 classes), 14 subjects as the
training subset (3 val / 3 test, untouched by the generator: rule 3). ``--size 32``: the
quickstart's phantom (12 subjects, 32x32, 3 classes), 6 subjects as the training subset (its
training pool). The training SliceSet comes through the data layer (axial slices, z-score
statistics from the training subjects); the default GeneratorConfig (or ``--set key=value``
overrides, values as YAML) trains on the CPU, and the script prints the quality figures (SWD
trained vs untrained vs real-vs-real, nearest-neighbour distances) and wall time. It also writes
a grid of real training slices beside the artifact's samples.png for a by-eye comparison.
Prints, asserts nothing.

    .venv/bin/python benchmarks/generator_acceptance.py [--size 32|64] [--steps N] [--set k=v ...]
        [--threads T] [--keep DIR]

Measured on the shared 2-core machine with 1 torch thread, defaults lr 1e-3, n_critic 2, resize
upsampling; wall times are noisy (load average 7-21 during the 64x64 run, 2-5 during the 32x32
runs, two of which ran side by side):
  --size 64 (300 steps, 448 slices):  SWD x1e3 trained 71.5 vs untrained 392.4 (real floor 19.9),
      NN 36.1 vs untrained 196.5 (real leave-one-subject-out 22.3), 282 s; before (lr 1e-4,
      n_critic 5, transposed convs, min/max intensity map): 403.0 vs 423.8, identical noise, 572 s.
  --size 32 (300 steps, 96 slices):   SWD 69.1 vs 356.2 (floor 34.1), NN 14.9 vs 37.1 (11.9), 36 s.
  --size 32 --steps 800 --set latent_dim=64 --set pool_size=256 --set quality_samples=64
      --set checkpoint_every=200:     SWD 44.6 vs 369.7 (floor 34.1), NN 12.4 vs 56.8 (11.9), 153 s.
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
import yaml

from synthmix.datasets.loader import prepare_split_data
from synthmix.datasets.phantom import write_phantom_dataset
from synthmix.datasets.preprocess import PreprocessConfig
from synthmix.datasets.splits import Split
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators.artifact import save_sample_grid
from synthmix.trainers.generators.training import build_generator_config, train_generator

print = functools.partial(print, flush=True)  # progress shows up in a log while it runs

# size -> (phantom subjects, classes, training subjects)
DATASETS = {64: (20, 4, 14), 32: (12, 3, 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, choices=sorted(DATASETS), default=64,
                        help="64: the default phantom; 32: the quickstart's phantom")
    parser.add_argument("--steps", type=int, default=None, help="override steps (generator iterations)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a GeneratorConfig field (value parsed as YAML); repeatable")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a 2-core machine shared with other jobs)")
    parser.add_argument("--keep", type=Path, default=None, help="copy the artifact and real grid here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.steps is not None:
        overrides["steps"] = args.steps
    config = build_generator_config(overrides)

    with tempfile.TemporaryDirectory(prefix="synthmix-gen-accept-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        subjects, classes, n_train = DATASETS[args.size]
        manifest = write_phantom_dataset(root / "phantom", subjects=subjects, size=args.size, classes=classes)
        ids = [f"sub-{i:03d}" for i in range(subjects)]
        n_val = (subjects - n_train) // 2
        split = Split(fold=0, repeat=0, amount=1.0, train=tuple(ids[:n_train]),
                      val=tuple(ids[n_train:n_train + n_val]), test=tuple(ids[n_train + n_val:]),
                      pool=tuple(ids[:n_train]))
        train, val, _, _ = prepare_split_data(manifest, split, PreprocessConfig(axis=2), root / "cache")
        print(f"data: {len(train)} training slices of {len(train.subjects)} subjects, shape "
              f"{train.images.shape[1:]}, {train.num_classes} classes, intensities "
              f"[{train.images.min():.2f}, {train.images.max():.2f}]")
        pick = np.random.default_rng(0).choice(len(train), 32, replace=False)
        save_sample_grid(train.images[pick], train.labels[pick], root / "real.png",
                         num_classes=train.num_classes, ncols=8)

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
