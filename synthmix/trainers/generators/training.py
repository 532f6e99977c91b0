"""Training the joint image+label DCGAN with WGAN-GP (003), from a SliceSet to an artifact.

``train_generator`` reads top to bottom: set up (seeded), resume from the context's latest
checkpoint, alternate ``n_critic`` critic steps (Wasserstein loss + gradient penalty) with one
generator step, report and checkpoint every ``checkpoint_every`` generator steps, then (rank 0)
write the artifact (weights, sample pool, quality figures, sample grid, training subjects).

Randomness: network initialisation comes from ``seed``; batch indices from one numpy Generator
and latent vectors / interpolation weights from one CPU torch.Generator, both seeded from
``seed`` and identical on every rank, each rank taking its own slice of every global draw. So
rank 0's checkpoint restores every rank's streams, and a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthmix.datasets.arrays import SliceSet, SyntheticPool
from synthmix.errors import DataError, StudyError, SynthmixError, TrainingDiverged
from synthmix.trainers.checkpoint import load_checkpoint, save_checkpoint
from synthmix.trainers.context import TrainContext
from synthmix.trainers.generators import dcgan
from synthmix.trainers.generators.artifact import (
    GENERATOR_FILE, POOL_FILE, QUALITY_FILE, SAMPLES_FILE, SUBJECTS_FILE, GeneratorArtifact, save_sample_grid)
from synthmix.trainers.quality import generator_quality

FAMILY = "dcgan_wgangp"


# 003's own WGAN-GP setting, for a GPU and ~10000 generator steps; ``build_generator_config``
# users can ask for it with these fields.
PAPER_SETTINGS = dict(lr=1e-4, betas=(0.5, 0.9), n_critic=5, gp_lambda=10.0, steps=10000)


@dataclass(frozen=True)
class GeneratorConfig:
    """The joint WGAN-GP DCGAN's options, defaulting to a budget a CPU core can afford.

    003 trains with Adam lr 1e-4, betas (0.5, 0.9), 5 critic steps per generator step for
    10000 generator steps (``PAPER_SETTINGS``). On the phantom that learns nothing in the
    100-300 steps a CPU allows (samples stay noise, SWD within ~5% of the untrained one),
    so the defaults keep 003's loss, penalty (lambda 10) and betas but take 10x the learning
    rate and 2 critic steps per generator step, which gave head-shaped pairs (skull ring, brain
    label inside) in 250 steps; benchmarks/generator_acceptance.py has the measurements.
    ``steps`` counts generator steps, ``batch_size`` is per worker. ``upsampling`` "resize"
    (nearest + 3x3 conv) avoids the checkerboard of DCGAN's "transpose"; ``skip_empty`` trains
    on slices with a foreground label only (off: the generator learns the subset as given).
    """

    latent_dim: int = 128
    base_filters: int = 16
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    n_critic: int = 2
    gp_lambda: float = 10.0
    checkpoint_every: int = 100
    pool_size: int = 512
    quality_samples: int = 256
    seed: int = 0
    amp: bool = False
    upsampling: str = "resize"
    skip_empty: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("latent_dim", "base_filters", "steps", "batch_size", "n_critic", "checkpoint_every",
                     "pool_size", "quality_samples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name}: must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            problems.append(f"lr: must be positive, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas: must be two numbers in [0, 1), got {self.betas!r}")
        if self.upsampling not in dcgan.UPSAMPLING:
            problems.append(f"upsampling: must be one of {', '.join(dcgan.UPSAMPLING)}, got {self.upsampling!r}")
        if not isinstance(self.skip_empty, bool):
            problems.append(f"skip_empty: must be true or false, got {self.skip_empty!r}")
        if self.gp_lambda < 0:
            problems.append(f"gp_lambda: must be >= 0, got {self.gp_lambda!r}")
        if problems:
            raise StudyError(problems, source="generator config")


def build_generator_config(d: dict) -> GeneratorConfig:
    """A GeneratorConfig from a (YAML) dict; unknown keys are rejected by name."""
    known = {f.name for f in dataclasses.fields(GeneratorConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise StudyError([f"{k}: unknown generator option (known: {', '.join(sorted(known))})" for k in unknown],
                         source="generator config")
    values = dict(d)
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    return GeneratorConfig(**values)


def check_data(data: SliceSet) -> None:
    """Fail before any training time is spent on data this generator cannot learn from."""
    if len(data) == 0:
        raise DataError("generator training data is empty: the cell's training subset has no slices")
    h, w = data.images.shape[2:]
    if h != w or h not in dcgan.SIZES:
        raise DataError(f"generator training slices are {h}x{w}; the DCGAN generator needs square "
                        f"slices of {', '.join(map(str, dcgan.SIZES))} pixels")
    if data.num_classes < 2:
        raise DataError(f"generator training data has num_classes={data.num_classes}; need at least 2")
    if data.labels.min() < 0 or data.labels.max() >= data.num_classes:
        raise DataError(f"generator training labels lie in [{data.labels.min()}, {data.labels.max()}], "
                        f"outside [0, {data.num_classes})")
    if not np.isfinite(data.images).all():
        raise DataError("generator training images contain NaN or infinite values")


def training_rows(data: SliceSet, *, skip_empty: bool) -> tuple[np.ndarray, np.ndarray]:
    """The (images, labels) the generator learns from: all slices, or with ``skip_empty`` only
    those whose label has a foreground pixel (the generator then draws no all-background pairs)."""
    if not skip_empty:
        return data.images, data.labels
    keep = data.labels.reshape(len(data), -1).max(axis=1) > 0
    if not keep.any():
        raise DataError("generator training data has no slice with a foreground label; "
                        "set the generator's skip_empty to false")
    return data.images[keep], data.labels[keep]


# ---- one training step each ----------------------------------------------------------------------

def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(critic(real), critic(fake), mean (||grad critic(x_hat)||_2 - 1)^2) with x_hat on the
    line between real and fake (Gulrajani et al.). One critic forward over the concatenated
    batch: the critic has no batch norm, so this equals three separate calls, and a DDP-wrapped
    critic sees exactly one forward per backward."""
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = critic(torch.cat([real, fake, x_hat]))
    s_real, s_fake, s_hat = scores.float().split(len(real))
    (grad,) = torch.autograd.grad(s_hat.sum(), x_hat, create_graph=True)
    penalty = ((grad.float().flatten(1).norm(2, dim=1) - 1) ** 2).mean()
    return s_real, s_fake, penalty


def draw_real_batch(joint: torch.Tensor, rng: np.random.Generator, batch_size: int, rank: int,
                    world_size: int) -> torch.Tensor:
    """This rank's share of one global draw of batch indices (same draw on every rank)."""
    idx = rng.integers(0, len(joint), size=batch_size * world_size)[rank * batch_size:(rank + 1) * batch_size]
    return joint[torch.from_numpy(idx).to(joint.device)]


def _noise(noise: torch.Generator, shape: tuple[int, ...], rank: int, world_size: int,
           device: torch.device, uniform: bool = False) -> torch.Tensor:
    full = (shape[0] * world_size, *shape[1:])
    x = torch.rand(full, generator=noise) if uniform else torch.randn(full, generator=noise)
    return x[rank * shape[0]:(rank + 1) * shape[0]].to(device)


class _Run:
    """The mutable pieces of a training run, gathered so the step functions stay short."""

    def __init__(self, config: GeneratorConfig, data: SliceSet, context: TrainContext):
        self.config, self.context, self.device = config, context, context.device
        self.rank, self.world = context.world_rank, context.world_size
        self.image_channels, self.size = data.images.shape[1], data.images.shape[2]
        images, labels = training_rows(data, skip_empty=config.skip_empty)
        self.intensity = dcgan.IntensityMap.fit(images)
        # The training subset, encoded once: every real batch is drawn from these rows only.
        self.joint = dcgan.encode_pairs(torch.from_numpy(images), torch.from_numpy(labels),
                                        data.num_classes, self.intensity).to(self.device)
        shape = dict(latent_dim=config.latent_dim, image_channels=self.image_channels,
                     num_classes=data.num_classes, size=self.size, base_filters=config.base_filters)
        self.generator_module = dcgan.build_generator(seed=config.seed, upsampling=config.upsampling, **shape)
        critic = dcgan.build_critic(seed=config.seed, **{k: v for k, v in shape.items() if k != "latent_dim"})
        self.generator = context.prepare_model(self.generator_module.to(self.device))
        self.critic = context.prepare_model(critic.to(self.device))
        adam = dict(lr=config.lr, betas=tuple(config.betas))
        self.opt_g = torch.optim.Adam(self.generator.parameters(), **adam)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), **adam)
        self.rng = np.random.default_rng(config.seed)
        self.noise = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.use_amp = config.amp and self.device.type == "cuda"

    def autocast(self):
        # bfloat16 needs no loss scaling, which the double backward of the penalty would complicate.
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def latent(self) -> torch.Tensor:
        return _noise(self.noise, (self.config.batch_size, self.config.latent_dim), self.rank, self.world, self.device)

    def critic_step(self) -> tuple[float, float]:
        real = draw_real_batch(self.joint, self.rng, self.config.batch_size, self.rank, self.world)
        z = self.latent()
        alpha = _noise(self.noise, (len(real), 1, 1, 1), self.rank, self.world, self.device, uniform=True)
        with torch.no_grad(), self.autocast():
            fake = self.generator(z).float()
        with self.autocast():
            s_real, s_fake, penalty = gradient_penalty(self.critic, real, fake, alpha)
        wasserstein = s_real.mean() - s_fake.mean()
        loss = -wasserstein + self.config.gp_lambda * penalty
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_c.step()
        return loss.item(), wasserstein.item()

    def generator_step(self) -> float:
        z = self.latent()
        with self.autocast():
            loss = -self.critic(self.generator(z)).float().mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return loss.item()

    def checkpoint_objects(self) -> dict:
        return dict(models={"generator": self.generator, "critic": self.critic},
                    optimizers={"generator": self.opt_g, "critic": self.opt_c}, rng=self.rng)

    def resume(self) -> None:
        latest = self.context.latest_checkpoint()
        if latest is not None:
            self.step, extra = load_checkpoint(latest, **self.checkpoint_objects())
            self.noise.set_state(extra["noise_rng"])

    def report(self, metrics: dict) -> None:
        """Every rank reports; rank 0 also hands over a checkpoint."""
        if self.rank != 0:
            self.context.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="synthmix-gen-ckpt-") as tmp:
            save_checkpoint(tmp, step=self.step, extra={"noise_rng": self.noise.get_state()},
                            **self.checkpoint_objects())
            self.context.report(metrics, checkpoint_dir=Path(tmp))


def _check_finite(step: int, **losses: float) -> None:
    bad = {k: v for k, v in losses.items() if not np.isfinite(v)}
    if bad:
        raise TrainingDiverged(f"generator training diverged at step {step}: "
                               + ", ".join(f"{k}={v}" for k, v in bad.items()))


# ---- the flow --------------------------------------------------------------------------------

def train_generator(config: GeneratorConfig, data: SliceSet, context: TrainContext,
                    out_dir: Path) -> GeneratorArtifact:
    """Train on ``data`` (the cell's labelled training subset, nothing else: rule 3) and write
    the artifact to ``out_dir`` on rank 0. Returns the artifact; only rank 0's is known to be
    complete (other ranks return without waiting for it)."""
    check_data(data)
    run = _Run(config, data, context)
    run.resume()
    sums = np.zeros(3)
    while run.step < config.steps:
        for _ in range(config.n_critic):
            critic_loss, wasserstein = run.critic_step()
        generator_loss = run.generator_step()
        run.step += 1
        _check_finite(run.step, critic_loss=critic_loss, generator_loss=generator_loss)
        sums += (critic_loss, generator_loss, wasserstein)
        if run.step % config.checkpoint_every == 0 or run.step == config.steps:
            n = (run.step - 1) % config.checkpoint_every + 1
            run.report({"step": run.step, "critic_loss": sums[0] / n, "generator_loss": sums[1] / n,
                        "wasserstein": sums[2] / n})
            sums[:] = 0
    if run.rank == 0:
        _write_artifact(run, data, Path(out_dir))
        return GeneratorArtifact(out_dir)
    return GeneratorArtifact(out_dir, check=False)  # rank 0's folder, possibly on another node


def _generator_state(run: _Run, data: SliceSet) -> dict:
    return {
        "family": FAMILY,
        "weights": {k: v.detach().cpu() for k, v in run.generator_module.state_dict().items()},
        "config": dataclasses.asdict(run.config),
        "image_shape": [run.image_channels, run.size, run.size],
        "num_classes": data.num_classes,
        "normalisation": {**run.intensity.to_dict(),
                          "note": "samples are returned in the intensity space of the training SliceSet "
                                  "(already normalised by the data layer)"},
        "step": run.step,
    }


def _write_artifact(run: _Run, data: SliceSet, out_dir: Path) -> None:
    """Write every file into a temporary sibling folder, then rename it into place, so a folder
    at ``out_dir`` is always a finished artifact."""
    config = run.config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        state = _generator_state(run, data)
        torch.save(state, tmp / GENERATOR_FILE)
        artifact = GeneratorArtifact(tmp, check=False)
        sampler = artifact.load_generator(run.device)
        images, labels = sampler.sample(config.pool_size, seed=config.seed + 1, device=run.device)
        SyntheticPool(images, labels, meta={"family": FAMILY, "step": run.step, "seed": config.seed + 1,
                                            "num_classes": data.num_classes,
                                            "training_subjects": len(data.subjects)}).save(tmp / POOL_FILE)
        quality = generator_quality(sampler, data, seed=config.seed, n=config.quality_samples,
                                    untrained=artifact.untrained_sampler(run.device), device=run.device)
        (tmp / QUALITY_FILE).write_text(json.dumps(quality, indent=2))
        save_sample_grid(images[:32], labels[:32], tmp / SAMPLES_FILE, num_classes=data.num_classes, ncols=8)
        (tmp / SUBJECTS_FILE).write_text(json.dumps(sorted(data.subjects), indent=2))
        _move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    from synthmix.trainers.generators.artifact import is_complete

    if out_dir.exists():
        if out_dir.is_dir() and (is_complete(out_dir) or not any(out_dir.iterdir())):
            # A finished artifact of an earlier attempt (or an empty placeholder) is replaced.
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        else:
            raise SynthmixError(f"{out_dir} exists and is not a generator artifact; refusing to overwrite it")
    tmp.rename(out_dir)
