"""What each generator quality figure says for the quickstart generator, an untrained network
and real data: the figures must tell visibly poor samples from real ones.

Builds the quickstart's data (12 phantom subjects, 32x32, 3 classes, axis 2) and its split
(``split:`` of the preset: 3 test, 3 validation, a training pool of 6), takes one cell's training
subset (repeat 0, real fraction 0.5: 3 subjects), and trains the generator the quickstart had
when these figures were measured (``GENERATOR``: dcgan_wgangp, 300 steps; the preset has since
moved to pix2pix, whose samples follow real masks) on it through the platform's own
``flow.train_generator``. Then ``quality_report`` measures, on equal terms:

- trained: the generator's samples;
- untrained: the same architecture with the weights its seed initialises;
- held-out real: slices of the training pool's other 3 subjects, which the generator never saw
  (neither validation nor test subjects), treated as if a generator had produced them: a perfect
  generator scores what they score;
- real (floor): real-vs-real within the training subset (the floor the SWD is compared with).

The FCN score's real column is the reference segmenter's Dice on the validation slices (for
scale only). Writes real / trained / untrained / held-out grids to look at. Prints, asserts
nothing.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality_figures.py \
        [--fraction 0.5|1.0] [--repeat 0] [--steps N] [--splits 8] [--keep DIR]

With ``--keep DIR`` the data, generator and grids stay in DIR (a generator already trained there
is reused). ``--fraction 1.0`` trains on the whole pool of 6; there is then no held-out pool
subject, and the held-out column is left out.

Measured (2-core machine shared with other jobs, 1 torch thread; ``--keep`` runs):

  --fraction 0.5 (48 training slices, halves of 24):  real | held-out | trained | untrained
      SWD x1e3           57.9 (SD 11.1) | 55.6 | 83.2 | 342.2
      gap to the floor    - | -2.2 +- 4.7 (SE) | +25.4 +- 5.2 | +284.3 +- 7.7
      gap / floor's SD    - | -0.20 | 2.28 | 25.6
      FCN Dice mean       0.70 (validation) | 0.72 | 0.48 | 0.22
      blur                0.75 | 0.50 | 0.29 | 1.94
      NN distance         11.9 (leave-one-subject-out) | 11.2 | 14.4 | 59.9
  --fraction 1.0 (96 slices, halves of 48): SWD floor 36.6 (SD 6.6), trained 65.9 (gap +29.3 +-
      2.7, 4.5 floor SDs), untrained 352.5; FCN 0.68 | 0.43 | 0.21; blur 0.72 | 0.30 | 1.90;
      NN 11.3 | 13.3 | 58.9.
  Before (floor from two subject halves, 1 subject vs 2 with 3 training subjects; synthetic
  sets drawn at random; 4 splits): floor 74.1 (SD 1.6), held-out 51.5, trained 88.8 (SD 17.4): a
  held-out real subject scored 23 below the floor and the trained generator within its noise.
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
from synthmix.datasets.splits import SplitSpec, build_splits
from synthmix.search_spaces.presets import preset_path
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators import GeneratorData
from synthmix.trainers.generators.artifact import GeneratorArtifact, is_complete, save_sample_grid
from synthmix.trainers.generators.flow import GeneratorSpec, train_generator
from synthmix.trainers.quality import quality_report, train_reference_segmenter
from synthmix.trainers.synthetic import Samples

print = functools.partial(print, flush=True)

COLUMNS = ("real", "held_out", "trained", "untrained")
# The quickstart's generator section when the figures in the docstring were measured.
GENERATOR = {"name": "dcgan_wgangp", "config": {"base_filters": 16, "latent_dim": 64, "batch_size": 16, "steps": 300,
                                                "checkpoint_every": 100},
             "quality": {"samples": 256, "reference_steps": 100}}
ROWS = (("swd", "SWD x1e3 (mean over splits)"), ("swd_sd", "  its SD over splits"),
        ("swd_gap", "  paired gap to the floor"), ("swd_gap_sd", "  its SD over splits"),
        ("swd_gap_se", "  its standard error"), ("swd_vs_floor", "  gap / floor's SD"),
        ("fcn_dice_mean", "FCN score: Dice mean"), ("blur", "blur: variance of Laplacian"),
        ("nn_distance", "NN distance to training"))


def real_sampler(data):
    """``(n, seed) -> Samples`` that hands out real slices in a seeded order, as a generator would."""
    def draw(n: int, seed: int) -> Samples:
        rng = np.random.default_rng(seed)
        order = np.concatenate([rng.permutation(len(data)) for _ in range(-(-n // len(data)))])[:n]
        return Samples(data.images[order], data.labels[order], {})
    return draw


def sampler_fn(sampler):
    return lambda n, seed: sampler.sample(n, seed=seed, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, choices=(0.5, 1.0), default=0.5)
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the preset's generator steps")
    parser.add_argument("--splits", type=int, default=None, help="SWD splits (default: quality_report's)")
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    study = yaml.safe_load(preset_path("quickstart").read_text())
    with tempfile.TemporaryDirectory(prefix="synthmix-quality-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        ds = study["dataset"]["phantom"]
        manifest = write_phantom_dataset(root / "phantom", subjects=ds["subjects"], size=ds["size"],
                                         classes=ds["classes"], seed=ds["seed"])
        sp = study["split"]
        plan = build_splits([f"sub-{i:03d}" for i in range(ds["subjects"])],
                            SplitSpec(test=sp["test"], val=sp["val"], repeats=sp["repeats"], seed=study["seed"],
                                      fractions=tuple(study["factors"]["real_fraction"])))
        split = next(s for s in plan.splits if s.repeat == args.repeat and s.amount == args.fraction)
        held_ids = tuple(sorted(set(split.pool) - set(split.train)))
        preprocess = PreprocessConfig(**study["dataset"]["preprocess"])
        train, val, _, _ = prepare_split_data(manifest, split, preprocess, root / "cache")
        held = None
        if held_ids:  # the other pool subjects, normalised with the training subset's statistics
            held_split = type(split)(fold=split.fold, repeat=split.repeat, amount=split.amount, train=split.train,
                                     val=held_ids, test=split.test, pool=split.pool)
            held = prepare_split_data(manifest, held_split, preprocess, root / "cache")[1]
        gen = GENERATOR
        config = dict(gen["config"], **({"steps": args.steps} if args.steps else {}))
        spec = GeneratorSpec(key="quality-figures", name=gen["name"], config=config, seed=study["seed"],
                             quality=gen.get("quality", {}))
        t0 = time.perf_counter()
        if not is_complete(root / "generator"):
            train_generator(spec, GeneratorData(train), LocalContext(checkpoint_root=root / "ckpt"),
                            root / "generator", val=val)
        train_s = time.perf_counter() - t0
        artifact = GeneratorArtifact(root / "generator")
        trained, untrained = artifact.sampler("cpu"), artifact.sampler("cpu", trained=False)

        t0 = time.perf_counter()
        reference = train_reference_segmenter(train, seed=study["seed"],
                                              steps=spec.quality.get("reference_steps", 200))
        extra = {"splits": args.splits} if args.splits else {}
        report = quality_report(sampler_fn(trained), train, seed=study["seed"],
                                n=spec.quality.get("samples", 512), untrained=sampler_fn(untrained), val=val,
                                reference_segmenter=reference,
                                others={"held_out": real_sampler(held)} if held is not None else None, **extra)
        report_s = time.perf_counter() - t0

        pick = np.random.default_rng(0).choice(len(train), 32, replace=len(train) < 32)
        save_sample_grid(train.images[pick], train.labels[pick], root / "real.png", num_classes=train.num_classes,
                         title="real training slices")
        for name, sampler in (("trained", trained), ("untrained", untrained)):
            s = sampler.sample(32, seed=0)
            save_sample_grid(s.images, s.labels, root / f"{name}.png", num_classes=train.num_classes,
                             title=f"{name} generator")
        if held is not None:
            s = real_sampler(held)(32, 0)
            save_sample_grid(s.images, s.labels, root / "held_out.png", num_classes=train.num_classes,
                             title="held-out pool subjects")

        meta = report["meta"]
        print(f"quickstart cell: repeat {args.repeat}, fraction {args.fraction}: {len(train)} training slices of "
              f"{len(split.train)} subjects {list(split.train)}; held-out pool subjects {list(held_ids)} "
              f"({0 if held is None else len(held)} slices); {len(val)} validation slices")
        print(f"generator {gen['name']} {config['steps']} steps ({train_s:.0f} s wall, incl. its own "
              f"quality.json), report {report_s:.0f} s; SWD: {meta['splits']} splits, set sizes "
              f"{meta['swd_set_sizes']}")
        cols = [c for c in COLUMNS if report.get(c)]
        print(f"{'figure':30s}" + "".join(f"{c:>11s}" for c in cols))
        for key, label in ROWS:
            cells = [report[c].get(key) for c in cols]
            print(f"{label:30s}" + "".join(f"{v:>11.2f}" if isinstance(v, (int, float)) else f"{'-':>11s}"
                                           for v in cells))
        print(f"FCN real column: {report['real']['fcn_on']}")
        print(json.dumps({k: v for k, v in report.items() if k != "definitions"}, indent=1, default=float))
        print("grids:", *(str(root / f"{n}.png") for n in ("real", "trained", "untrained", "held_out")
                          if (root / f"{n}.png").exists()))


if __name__ == "__main__":
    main()
