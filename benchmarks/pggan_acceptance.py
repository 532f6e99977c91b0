"""Acceptance run for ``pggan`` (issue 12) against ``dcgan_wgangp`` on the default phantom, on the CPU.

The default phantom (20 subjects, 64x64, 4 classes); 14 subjects are the training subset (3 val,
3 test: the generator sees only the 14, rule 3; the validation slices only give the FCN score's
reference segmenter its own Dice). The data come through the data layer (axial slices, z-score
statistics from the training subjects). ``--family`` trains through the shared flow
(``flow.train_generator``: select, quality figures, artifact) with the family's defaults or
``--set key=value`` overrides (values as YAML), and prints the figures of quality.json (SWD,
FCN score, blur, nearest-neighbour distance; each with ``_untrained`` and ``_real``), the
process CPU time of the training (up to its last checkpoint report) and of the whole flow, and
the wall time. ``--keep DIR`` keeps ``real.png`` next to the artifact's ``samples.png`` and
writes ``result.json``.

``--size 32`` runs on bowles2018-table2's phantom instead (25 subjects, 32x32, 4 classes; 15
training subjects, 5 val).

``--cost`` instead times pggan training steps at every level of a 64x64 model (default config
or ``--set``) and fits the cost model's three constants (seconds per image, per multiply-accumulate, per
activation) that ``pggan.step_seconds`` uses.

    .venv/bin/python benchmarks/pggan_acceptance.py --family pggan [--set k=v ...] [--keep DIR]
    .venv/bin/python benchmarks/pggan_acceptance.py --family dcgan_wgangp --set steps=500
    .venv/bin/python benchmarks/pggan_acceptance.py --cost

Prints, asserts nothing. Measured figures: the report of issue 12 (re-measured whenever a
default changes).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
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
from synthmix.trainers.generators import GeneratorData, pggan
from synthmix.trainers.generators.artifact import save_sample_grid
from synthmix.trainers.generators.flow import GeneratorSpec, train_generator
from synthmix.trainers.generators.wgan import gradient_penalty

print = functools.partial(print, flush=True)  # progress shows up in a log while it runs

SUBJECTS, SIZE, CLASSES, TRAIN, VAL = 20, 64, 4, 14, 3
# --size 32: bowles2018-table2's phantom (25 subjects, 32x32, 4 classes), its 15-subject training pool
SMALL = dict(SUBJECTS=25, SIZE=32, CLASSES=4, TRAIN=15, VAL=5)
FIGURES = ("swd", "swd_sd", "swd_vs_floor", "fcn_dice_mean", "blur", "nn_distance")


class TimedContext(LocalContext):
    """A LocalContext that notes the process CPU time and wall time of every report."""

    def report(self, metrics, checkpoint_dir=None):
        super().report(metrics, checkpoint_dir)
        self.history[-1].update(cpu_s=time.process_time(), wall_s=time.perf_counter())


def phantom_split(root: Path):
    manifest = write_phantom_dataset(root / "phantom", subjects=SUBJECTS, size=SIZE, classes=CLASSES)
    ids = [f"sub-{i:03d}" for i in range(SUBJECTS)]
    split = Split(fold=0, repeat=0, amount=1.0, train=tuple(ids[:TRAIN]), val=tuple(ids[TRAIN:TRAIN + VAL]),
                  test=tuple(ids[TRAIN + VAL:]), pool=tuple(ids[:TRAIN]))
    train, val, _, _ = prepare_split_data(manifest, split, PreprocessConfig(axis=2), root / "cache")
    return train, val


def run_family(args, overrides: dict, root: Path) -> dict:
    train, val = phantom_split(root)
    print(f"data: {len(train)} training slices of {len(train.subjects)} subjects, shape {train.images.shape[1:]}, "
          f"{train.num_classes} classes")
    pick = np.random.default_rng(0).choice(len(train), 32, replace=False)
    save_sample_grid(train.images[pick], train.labels[pick], root / "real.png", num_classes=train.num_classes,
                     ncols=8, title="real training slices")
    spec = GeneratorSpec(key="acceptance", name=args.family, config=overrides, seed=args.seed,
                         select={"by": args.select, "every": args.select_every} if args.select != "last" else {},
                         quality={"samples": args.samples})
    print(f"spec: {spec}")
    context = TimedContext(checkpoint_root=root / "ckpt")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    artifact = train_generator(spec, GeneratorData(train), context, root / "generator", val=val)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    last = context.history[-1]
    train_cpu, train_wall = last["cpu_s"] - cpu0, last["wall_s"] - wall0
    for h in context.history:
        phase = f"  level {h['level']} alpha {h['alpha']:.2f}" if "level" in h else ""
        print(f"step {h['step']:5d}  critic {h['critic_loss']:8.3f}  generator {h['generator_loss']:8.3f}  "
              f"W {h['wasserstein']:7.3f}  cpu {h['cpu_s'] - cpu0:7.1f} s{phase}")
    q = artifact.quality
    figures = {f"{k}{suffix}": q.get(f"{k}{suffix}") for k in FIGURES for suffix in ("", "_untrained", "_real")}
    result = {"family": args.family, "config": artifact.spec["config"], "selection": artifact.spec["selection"],
              "train_cpu_s": train_cpu, "train_wall_s": train_wall, "flow_cpu_s": cpu, "flow_wall_s": wall,
              "figures": figures}
    print(json.dumps(result, indent=1, default=str))
    print(f"RESULT {args.family}: SWD {q['swd']:.1f} (untrained {q['swd_untrained']:.1f}, real floor "
          f"{q.get('swd_real')}) FCN Dice {q['fcn_dice_mean']:.3f} (untrained {q['fcn_dice_mean_untrained']:.3f}, "
          f"real {q.get('fcn_dice_mean_real')}) training CPU {train_cpu:.0f} s (wall {train_wall:.0f} s); "
          f"flow CPU {cpu:.0f} s, wall {wall:.0f} s")
    print(f"samples: {artifact.path / 'samples.png'}  real: {root / 'real.png'}")
    return result


def fit_cost(overrides: dict, repeats: int = 4) -> None:
    """Times training steps per level at 64x64 and fits per-image seconds = a + b x MACs."""
    config = pggan.build_config(overrides)
    channels = 1 + CLASSES
    g, c = pggan._networks(config, _encoding(), SIZE, 0)
    og = torch.optim.Adam(g.parameters(), lr=config.lr, betas=tuple(map(float, config.betas)))
    oc = torch.optim.Adam(c.parameters(), lr=config.lr, betas=tuple(map(float, config.betas)))
    b = config.batch_size
    rows = []
    for level in range(pggan.levels(SIZE) + 1):
        r = 4 * 2 ** level

        def step():
            for _ in range(config.n_critic):
                real = torch.randn(b, channels, r, r)
                with torch.no_grad():
                    fake = g(torch.randn(b, config.latent_dim), level, 0.5)
                s_real, s_fake, penalty = gradient_penalty(lambda x: c(x, level, 0.5), real, fake, torch.rand(b, 1, 1, 1))
                loss = s_fake.mean() - s_real.mean() + 10 * penalty + 0.001 * s_real.pow(2).mean()
                oc.zero_grad()
                loss.backward()
                oc.step()
            loss = -c(g(torch.randn(b, config.latent_dim), level, 0.5), level, 0.5).mean()
            og.zero_grad()
            loss.backward()
            og.step()

        step()
        t = time.process_time()
        for _ in range(repeats):
            step()
        seconds = (time.process_time() - t) / repeats
        per_image = seconds / (b * (config.n_critic + 0.5))
        rows.append((pggan._macs(config, channels, SIZE, level), pggan._activations(config, SIZE, level), per_image))
        print(f"level {level} ({r}x{r}): {seconds:.3f} s per step, model {pggan.step_seconds(config, SIZE, level):.3f}")
    macs, activations, per = np.array(rows).T
    (a, b, c), *_ = np.linalg.lstsq(np.c_[np.ones_like(macs), macs, activations], per, rcond=None)
    print(f"fit (this config alone; pggan's constants fit several): per image = {a:.2e} s + {b:.2e} s x MACs "
          f"+ {c:.2e} s x activations")


def _encoding():
    from synthmix.trainers.generators.encoding import IntensityMap, JointEncoding

    return JointEncoding(1, CLASSES, IntensityMap([0.0], [1.0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="pggan")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a family option (value parsed as YAML); repeatable")
    parser.add_argument("--select", default="last", choices=["last", "swd", "fcn_score"])
    parser.add_argument("--select-every", type=int, default=100)
    parser.add_argument("--samples", type=int, default=512, help="generator.quality.samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="keep the artifact, real.png and result.json here")
    parser.add_argument("--cost", action="store_true", help="time pggan steps per level and fit the cost model")
    parser.add_argument("--size", type=int, choices=[32, 64], default=64,
                        help="64: the default phantom; 32: bowles2018-table2's phantom")
    args = parser.parse_args()
    if args.size == 32:
        globals().update(SMALL)
    torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.cost:
        fit_cost(overrides)
        return
    with tempfile.TemporaryDirectory(prefix="synthmix-pggan-accept-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        if args.keep:
            shutil.rmtree(root / "generator", ignore_errors=True)
            shutil.rmtree(root / "ckpt", ignore_errors=True)
        result = run_family(args, overrides, root)
        if args.keep:
            (root / "result.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
