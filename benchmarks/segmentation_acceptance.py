"""Acceptance run for the segmentation flow (issue 3): the default UNet on the default phantom.

Writes the default phantom (20 subjects, 64x64, 4 classes), splits subjects by hand (14 train /
3 val / 3 test), builds SliceSets through the data layer (axial slices, z-score statistics from
the training subjects only), trains ``unet`` with the default SegmentationConfig on the CPU and
prints mean test Dice and wall time. The issue's target is mean test Dice >= 0.85; this script
prints, it asserts nothing.

    .venv/bin/python benchmarks/segmentation_acceptance.py [--steps N] [--threads T]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from synthmix.datasets.loader import prepare_split_data
from synthmix.datasets.phantom import write_phantom_dataset
from synthmix.datasets.preprocess import PreprocessConfig
from synthmix.datasets.splits import Split
from synthmix.trainers.context import LocalContext
from synthmix.trainers.segmentation import SegmentationConfig, SegmentationData, train_segmentation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="override max_steps")
    # One thread by default: on a shared 2-core machine two spinning OpenMP threads per process
    # made training several times slower than one.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--architecture", default=None, help="override the network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="synthmix-seg-accept-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        manifest = write_phantom_dataset(root / "phantom")
        ids = [f"sub-{i:03d}" for i in range(20)]
        split = Split(fold=0, repeat=0, amount=1.0, train=tuple(ids[:14]), val=tuple(ids[14:17]),
                      test=tuple(ids[17:]), pool=tuple(ids[:14]))
        train, val, test, _ = prepare_split_data(manifest, split, PreprocessConfig(axis=2),
                                                 root / "cache")
        t_data = time.perf_counter() - t0
        print(f"data: {len(train)} train / {len(val)} val / {len(test)} test slices, "
              f"shape {train.images.shape[1:]}, {train.num_classes} classes ({t_data:.1f} s)")

        config = SegmentationConfig()
        if args.steps is not None:
            config = dataclasses.replace(config, max_steps=args.steps)
        if args.architecture is not None:
            config = dataclasses.replace(config, architecture=args.architecture, network={})
        print(f"config: {config}")
        t0 = time.perf_counter()
        result = train_segmentation(config, SegmentationData(train=train, val=val, test=test),
                                    LocalContext(checkpoint_root=root / "ckpt"))
        wall = time.perf_counter() - t0

    m = result.metrics
    k = train.num_classes
    print("validation:", ", ".join(f"{h['step']}:{h['val_dice']:.3f}" for h in result.val_history))
    print(f"best step {result.best_step} of {result.steps_done}; timings "
          + ", ".join(f"{n} {v:.1f} s" for n, v in result.timings.items()))
    for name in ("dice", "iou", "precision", "recall", "hd", "hd95"):
        per_class = " ".join(f"{m[f'{name}_{c}']:.3f}" for c in range(1, k))
        print(f"test {name:9s} mean {m[f'{name}_mean']:.3f}  per class {per_class}")
    print(f"RESULT mean test Dice {m['dice_mean']:.4f} (target >= 0.85), training + evaluation "
          f"wall time {wall:.1f} s on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
