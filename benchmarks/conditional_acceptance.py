"""Acceptance runs for the mask-conditional families (issue 13) on the 64x64 phantom, on the CPU.

``--family pix2pix``: the 5-class phantom (lesions included), 20 subjects, 14 of them the
training subset (3 val / 3 test; the generator sees only the 14: rule 3). Trains the default
config through the shared flow, then writes ``grid.png``: per row mask | real image | generated
image for training masks (the ones with most lesion first). Prints the FCN score (the flow's
reference segmenter, trained on the subset, segments the generated images; its Dice against the
masks) beside the same segmenter's Dice on real validation slices (the ceiling) and on the
untrained generator's images (the floor).

``--family spade_two_stage``: the 7-class phantom (004's class structure). Prints stage 1's SWD
against the real label maps (chosen snapshot, and the untrained stage 1), the share the
between-stage filter removed (calibration draw and the sampler's own draws), the threshold,
and stage 2's FCN score on the synthetic pairs and on real validation masks; writes
``grid.png`` (mask | real | stage-2 image for validation masks) beside the artifact's
samples.png (stage-1 label + stage-2 image).

Prints, asserts nothing; wall and CPU time of the training flow (quality figures included).

    .venv/bin/python benchmarks/conditional_acceptance.py --family pix2pix [--set k=v ...] [--keep DIR]
    .venv/bin/python benchmarks/conditional_acceptance.py --family spade_two_stage [--set k=v ...]

Measured on the shared 2-core machine, 1 torch thread: see the report of issue 13 (numbers are
re-measured whenever a default changes).
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
from synthmix.trainers import quality
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators import GeneratorData
from synthmix.trainers.generators.artifact import GeneratorArtifact
from synthmix.trainers.generators.conditional import translate
from synthmix.trainers.generators.flow import GeneratorSpec, train_generator
from synthmix.trainers.synthetic import Samples

print = functools.partial(print, flush=True)

CLASSES = {"pix2pix": 5, "spade_two_stage": 7}
SUBJECTS, TRAIN, VAL = 20, 14, 3


def save_triptych(masks: np.ndarray, real: np.ndarray, fake: np.ndarray, path: Path, *, num_classes: int,
                  title: str) -> None:
    """Rows of mask | real image | generated image, grey levels shared across the grid."""
    from matplotlib.figure import Figure

    n = len(masks)
    fig = Figure(figsize=(6, 2 * n / 1.0 * 0.55 + 0.4))
    axes = fig.subplots(n, 3, squeeze=False)
    lo, hi = np.percentile(real[:, 0], [0.5, 99.5])
    for i in range(n):
        axes[i, 0].imshow(masks[i], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        axes[i, 1].imshow(real[i, 0], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        axes[i, 2].imshow(fake[i, 0], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        for ax in axes[i]:
            ax.axis("off")
    for ax, name in zip(axes[0], ("mask", "real", "generated")):
        ax.set_title(name, fontsize=8)
    fig.suptitle(f"{title} ({num_classes} classes)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _data(root: Path, classes: int):
    manifest = write_phantom_dataset(root / "phantom", subjects=SUBJECTS, size=64, classes=classes)
    ids = [f"sub-{i:03d}" for i in range(SUBJECTS)]
    split = Split(fold=0, repeat=0, amount=1.0, train=tuple(ids[:TRAIN]), val=tuple(ids[TRAIN:TRAIN + VAL]),
                  test=tuple(ids[TRAIN + VAL:]), pool=tuple(ids[:TRAIN]))
    train, val, _, _ = prepare_split_data(manifest, split, PreprocessConfig(axis=2), root / "cache")
    return train, val


def _fcn(reference, sampler, masks: np.ndarray, real_images: np.ndarray | None = None, seed: int = 5) -> float:
    if real_images is not None:
        return quality.fcn_score(reference, Samples(real_images, masks, {}))["dice_mean"]
    return quality.fcn_score(reference, sampler.sample(len(masks), seed=seed, masks=masks))["dice_mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(CLASSES), required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (value parsed as YAML; dotted keys for nested options)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="keep the data, artifact and grids here")
    parser.add_argument("--report-only", action="store_true",
                        help="with --keep: report on the artifact a previous run kept there, without training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config: dict = {}
    for key, value in (item.split("=", 1) for item in args.set):
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)

    with tempfile.TemporaryDirectory(prefix="synthmix-cond-accept-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        train, val = _data(root, CLASSES[args.family])
        print(f"data: {len(train)} training slices of {len(train.subjects)} subjects, {len(val)} val slices, "
              f"{train.num_classes} classes; config overrides {config}")
        if args.report_only:  # the training's own log has the between-stage figures of that run
            report(args.family, GeneratorArtifact(root / "generator"), train, val, root, {})
            return
        spec = GeneratorSpec(key="acceptance", name=args.family, config=config, seed=0)
        context = LocalContext(checkpoint_root=root / "ckpt")
        wall, cpu = time.perf_counter(), time.process_time()
        artifact = train_generator(spec, GeneratorData(train), context, root / "generator", val=val)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        for h in context.history:
            print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in h.items()))
        report(args.family, artifact, train, val, root, context.history[-1])
        print(f"RESULT time: wall {wall:.0f} s, CPU {cpu:.0f} s on {torch.get_num_threads()} thread(s) "
              f"(training + quality figures)")


def report_spade(artifact: GeneratorArtifact, train, val, reference, root: Path, last: dict) -> None:
    from synthmix.trainers.generators import spade_two_stage as st

    k = train.num_classes
    maps = train.labels[train.labels.reshape(len(train), -1).max(axis=1) > 0]
    n = min(256, len(maps))  # the 7-class phantom's 14 subjects have fewer non-empty maps than that
    sampler = artifact.sampler().sampler  # the family's own sampler (the data here needs no padding)
    untrained = artifact.sampler(trained=False).sampler
    rng = np.random.default_rng(0)
    real = maps[rng.choice(len(maps), n, replace=False)]
    held = val.labels[val.labels.reshape(len(val), -1).max(axis=1) > 0]

    def swd(fake: np.ndarray) -> float:
        blank = lambda x: np.zeros((len(x), 0, *x.shape[1:]), np.float32)  # noqa: E731
        return quality.sliced_wasserstein_distance(quality.joint_pictures(blank(real), real, k),
                                                   quality.joint_pictures(blank(fake), fake, k), seed=0)

    def stage1(net) -> np.ndarray:
        return st.draw_labels(net, n, sampler.latent_dim, k, torch.Generator().manual_seed(7), "cpu")[0]

    drawn = sampler.sample(512, seed=9)
    counts = sampler.last_counts
    print(f"RESULT spade_two_stage stage 1 SWD x1e3 against {n} real non-empty training label maps: chosen snapshot "
          f"(step {last.get('labels_best_step')}) {swd(stage1(sampler.labels)):.1f} raw, "
          f"{swd(drawn.labels[:n]):.1f} after clean-up + filter; untrained {swd(stage1(untrained.labels)):.1f}; "
          f"real validation maps {swd(held[rng.choice(len(held), min(n, len(held)), replace=False)]):.1f} (floor)")
    if last:
        print(f"RESULT between stages: threshold {last.get('threshold'):.1f} on the filter score; calibration "
              f"({last.get('calibration_drawn')} maps): empty removed {last.get('calibration_empty_removed')}, "
              f"filter removed {100 * last.get('calibration_filter_removed', 0):.1f}% of synthetic and would remove "
              f"{100 * last.get('calibration_real_removed', 0):.1f}% of the real maps")
    print(f"RESULT a 512-sample draw: {counts} ({100 * counts['filter_removed'] / counts['drawn']:.1f}% cut by the "
          "filter)")
    stage2 = Samples(translate(sampler.images.eval(), val.labels, sampler.encoding, seed=0), val.labels, {})
    print(f"RESULT stage 2 FCN score: synthetic pairs (stage-1 label, stage-2 image) "
          f"{quality.fcn_score(reference, drawn)['dice_mean']:.3f} (flow's quality.json "
          f"{artifact.quality.get('fcn_dice_mean', float('nan')):.3f}); stage 2 on real validation masks "
          f"{quality.fcn_score(reference, stage2)['dice_mean']:.3f}; real validation slices "
          f"{_fcn(reference, None, val.labels, val.images):.3f}")
    order = np.argsort(-((val.labels >= 1) & (val.labels <= 3)).reshape(len(val), -1).sum(1))
    pick = np.concatenate([order[:4], rng.choice(order[4:len(held)], 4, replace=False)])
    save_triptych(val.labels[pick], val.images[pick], stage2.images[pick], root / "grid.png", num_classes=k,
                  title="SPADE stage 2: validation masks")


def report(family: str, artifact: GeneratorArtifact, train, val, root: Path, last: dict) -> None:
    q = artifact.quality
    print(json.dumps({k: v for k, v in q.items() if not k.endswith("definition")}, indent=1, default=float))
    reference = quality.train_reference_segmenter(train, seed=0, steps=200)
    trained, untrained = artifact.sampler(), artifact.sampler(trained=False)
    if family == "pix2pix":
        masks = train.labels
        print(f"RESULT pix2pix FCN score (reference Dice on generated images for the subset's masks): "
              f"{_fcn(reference, trained, masks):.3f}; untrained generator {_fcn(reference, untrained, masks):.3f}; "
              f"real validation slices {_fcn(reference, None, val.labels, val.images):.3f}; "
              f"flow's quality.json fcn_dice_mean {q.get('fcn_dice_mean', float('nan')):.3f}")
        order = np.argsort(-(train.labels == train.num_classes - 1).reshape(len(train), -1).sum(1))
        pick = np.concatenate([order[:5], np.random.default_rng(1).choice(order[5:], 3, replace=False)])
        fake = trained.sample(len(pick), seed=3, masks=train.labels[pick]).images
        save_triptych(train.labels[pick], train.images[pick], fake, root / "grid.png", num_classes=train.num_classes,
                      title="pix2pix: training masks")
    else:
        report_spade(artifact, train, val, reference, root, last)
    print(f"grids: {root / 'grid.png'}  {artifact.path / 'samples.png'}  {artifact.path / 'real.png'}")


if __name__ == "__main__":
    main()
