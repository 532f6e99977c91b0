"""``dcgan_wgangp``: the joint image+label DCGAN of Neff et al. (003), trained with WGAN-GP.

The generator draws image and label map together as one joint picture in [-1, 1] (tanh; the
layout is the shared ``encoding.JointEncoding``). The critic judges such pairs. This module
holds only what is the family's: its options, networks and training loop; the session, the
artifact, snapshots, quality and pools are shared (see ``generators/__init__``).

Written by hand rather than taken from MONAI: MONAI has no DCGAN generator/critic pair whose
depth follows the resolution, and the network is a few lines. Following 003: DCGAN layout,
He initialisation, ReLU + batch norm in the generator, tanh output. One departure by default:
the generator upsamples by nearest-neighbour resize + 3x3 conv instead of strided transposed
convs (``upsampling="transpose"`` keeps DCGAN's), which removed the checkerboard pattern that
dominated short CPU runs. The critic follows the
WGAN-GP reference code 003 builds on: no batch norm (the gradient penalty is per sample) and
LeakyReLU(0.2).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from synthmix.errors import StudyError
from synthmix.trainers.generators import GeneratorData, GeneratorFamily
from synthmix.trainers.generators.augment import AugmentConfig, Augmenter, build_augment_config
from synthmix.trainers.generators.encoding import JointEncoding, label_channels
from synthmix.trainers.generators.options import option_key_problems
from synthmix.trainers.generators.samplers import NoiseSampler
from synthmix.trainers.generators.session import GeneratorSession
from synthmix.trainers.generators.wgan import gradient_penalty

SIZES = (32, 64, 128, 256)


def check_size(size: int) -> None:
    if size not in SIZES:
        raise ValueError(f"image size {size} is not supported; the DCGAN generator needs one of {SIZES}")


UPSAMPLING = ("resize", "transpose")


def _channels(base_filters: int, size: int, resolution: int) -> int:
    """Filters at a given resolution: base at size/2, doubling per halving, capped at 8x."""
    return base_filters * min(8, size // (2 * resolution))


def _he_init(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation, 003, with the fan-in a layer really has."""
    if isinstance(module, nn.ConvTranspose2d):
        # torch reads a transposed weight (in, out, k, k) as if out were the fan-in; each output
        # pixel of a stride-s transposed conv sums in * k * k / s^2 terms.
        k, s = module.kernel_size[0], module.stride[0]
        fan_in = module.in_channels * k * k / (s * s)
        nn.init.normal_(module.weight, std=(2.0 / fan_in) ** 0.5)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        nn.init.zeros_(module.bias)


def _up_block(cin: int, cout: int, upsampling: str) -> list[nn.Module]:
    """Double the resolution: nearest-neighbour resize + 3x3 conv ("resize", free of the
    checkerboard pattern of strided transposed convolutions, Odena et al. 2016) or DCGAN's 4x4
    stride-2 transposed conv ("transpose")."""
    if upsampling == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1)]
    if upsampling == "transpose":
        return [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)]
    raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}")


class Generator(nn.Module):
    """Latent vector (N, latent_dim) -> joint picture (N, out_channels, size, size) in [-1, 1].

    DCGAN layout: a linear projection to 4x4, one up block (upsampling, batch norm, ReLU) per
    doubling up to size/2, and a last up block straight to the output channels with tanh.
    """

    def __init__(self, *, latent_dim: int, out_channels: int, size: int, base_filters: int,
                 upsampling: str = "resize"):
        super().__init__()
        check_size(size)
        self.latent_dim = latent_dim
        c4 = _channels(base_filters, size, 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, c4 * 16), nn.Unflatten(1, (c4, 4, 4)),
                                     nn.BatchNorm2d(c4), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        resolution = 4
        while resolution < size // 2:
            cin, cout = _channels(base_filters, size, resolution), _channels(base_filters, size, 2 * resolution)
            layers += [*_up_block(cin, cout, upsampling), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            resolution *= 2
        layers += [*_up_block(_channels(base_filters, size, resolution), out_channels, upsampling), nn.Tanh()]
        self.upsample = nn.Sequential(*layers)
        self.apply(_he_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.project(z))


class Critic(nn.Module):
    """Joint picture (N, in_channels, size, size) -> unbounded score (N,)."""

    def __init__(self, *, in_channels: int, size: int, base_filters: int):
        super().__init__()
        check_size(size)
        layers: list[nn.Module] = []
        cin, resolution = in_channels, size
        while resolution > 4:
            cout = _channels(base_filters, size, resolution // 2)
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            cin, resolution = cout, resolution // 2
        layers += [nn.Flatten(), nn.Linear(cin * 16, 1)]
        self.net = nn.Sequential(*layers)
        self.apply(_he_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def build_generator(*, latent_dim: int, image_channels: int, num_classes: int, size: int,
                    base_filters: int, seed: int, upsampling: str = "resize") -> Generator:
    """The generator with the initial weights that ``seed`` gives (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Generator(latent_dim=latent_dim, out_channels=image_channels + label_channels(num_classes),
                         size=size, base_filters=base_filters, upsampling=upsampling)


def build_critic(*, image_channels: int, num_classes: int, size: int, base_filters: int, seed: int) -> Critic:
    """The critic with the initial weights that ``seed`` gives (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # a different stream from the generator's
        return Critic(in_channels=image_channels + label_channels(num_classes), size=size,
                      base_filters=base_filters)




# ---- options -------------------------------------------------------------------------------------

# 003's own WGAN-GP setting, for a GPU and ~10000 generator steps.
PAPER_SETTINGS = dict(lr=1e-4, betas=(0.5, 0.9), n_critic=5, gp_lambda=10.0, steps=10000)


@dataclass(frozen=True)
class DCGANConfig:
    """The family's options, defaulting to a budget a CPU core can afford.

    003 trains with Adam lr 1e-4, betas (0.5, 0.9), 5 critic steps per generator step for
    10000 generator steps (``PAPER_SETTINGS``). On the phantom that learns nothing in the
    100-300 steps a CPU allows, so the defaults keep 003's loss, penalty (lambda 10) and betas
    but take 10x the learning rate and 2 critic steps per generator step, which gave
    head-shaped pairs in 250 steps (benchmarks/generator_acceptance.py). ``steps`` counts
    generator steps; ``batch_size`` is global (split across workers). ``upsampling`` "resize"
    avoids the checkerboard of DCGAN's "transpose"; ``skip_empty`` trains on slices with a
    foreground label only. ``augment``: mask-safe critic augmentation (``augment.py``).
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
    amp: bool = False
    upsampling: str = "resize"
    skip_empty: bool = False
    augment: AugmentConfig | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("latent_dim", "base_filters", "steps", "batch_size", "n_critic", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name}: must be a positive integer, got {value!r}")
        if not self.lr > 0:
            problems.append(f"lr: must be positive, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas: must be two numbers in [0, 1), got {self.betas!r}")
        if self.upsampling not in UPSAMPLING:
            problems.append(f"upsampling: must be one of {', '.join(UPSAMPLING)}, got {self.upsampling!r}")
        if not isinstance(self.skip_empty, bool):
            problems.append(f"skip_empty: must be true or false, got {self.skip_empty!r}")
        if self.gp_lambda < 0:
            problems.append(f"gp_lambda: must be >= 0, got {self.gp_lambda!r}")
        if problems:
            raise StudyError(problems, source="generator config")


def build_config(d: dict) -> DCGANConfig:
    """A DCGANConfig from a (YAML) dict; unknown keys are rejected by name."""
    problems = option_key_problems(DCGANConfig, d, family="dcgan_wgangp")
    if problems:
        raise StudyError(problems, source="generator config")
    values = dict(d)
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    values["augment"] = build_augment_config(values.get("augment"))
    return DCGANConfig(**values)


def fit_shape(h: int, w: int) -> tuple[int, int]:
    """The smallest supported square that holds an h x w slice."""
    for size in SIZES:
        if size >= max(h, w):
            return size, size
    raise ValueError(f"slices of {h}x{w} exceed the largest DCGAN size {SIZES[-1]}; "
                     f"set dataset.preprocess.resize (or crop) to at most {SIZES[-1]}x{SIZES[-1]}")


def cost(config: DCGANConfig, shape: tuple[int, int]) -> float:
    """Seconds on one CPU core: (1 + n_critic) updates per step, each ~2.4 s per million
    batch x pixel samples (measured: 300 steps at 32x32 in 36 s, at 64x64 in 282 s)."""
    return config.steps * (1 + config.n_critic) * config.batch_size * shape[0] * shape[1] / 1e6 * 2.4


# ---- training ------------------------------------------------------------------------------------

def _networks(config: DCGANConfig, encoding: JointEncoding, size: int, seed: int) -> tuple[Generator, Critic]:
    shape = dict(image_channels=encoding.image_channels, num_classes=encoding.num_classes, size=size,
                 base_filters=config.base_filters, seed=seed)
    return (build_generator(latent_dim=config.latent_dim, upsampling=config.upsampling, **shape),
            build_critic(**shape))


def _training_rows(data: GeneratorData, skip_empty: bool):
    real = data.labelled
    if not skip_empty:
        return real.images, real.labels
    keep = real.labels.reshape(len(real), -1).max(axis=1) > 0
    if not keep.any():
        from synthmix.errors import DataError

        raise DataError("generator training data has no slice with a foreground label; "
                        "set generator.config.skip_empty to false")
    return real.images[keep], real.labels[keep]


def train(config: DCGANConfig, data: GeneratorData, encoding: JointEncoding,
          session: GeneratorSession) -> dict:
    """Alternate ``n_critic`` critic steps (Wasserstein loss + gradient penalty) with one
    generator step; every batch is drawn from ``data.labelled`` only (rule 3)."""
    ctx, device = session.context, session.device
    images, labels = _training_rows(data, config.skip_empty)
    joint = encoding.encode(torch.from_numpy(images), torch.from_numpy(labels)).to(device)
    generator_module, critic_module = _networks(config, encoding, images.shape[-1], session.seed)
    generator = ctx.prepare_model(generator_module.to(device))
    critic = ctx.prepare_model(critic_module.to(device))
    adam = dict(lr=config.lr, betas=tuple(config.betas))
    opt_g, opt_c = torch.optim.Adam(generator.parameters(), **adam), torch.optim.Adam(critic.parameters(), **adam)
    session.resume(models={"generator": generator, "critic": critic},
                   optimizers={"generator": opt_g, "critic": opt_c})
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if config.amp and device.type == "cuda" \
        else contextlib.nullcontext  # bfloat16: no loss scaling through the penalty's double backward
    batch = config.batch_size
    augment = Augmenter.for_session(config.augment, encoding, session, batch)
    while session.step < config.steps:
        for _ in range(config.n_critic):
            real = session.batch(joint, batch)
            z, alpha = session.randn(batch, config.latent_dim), session.rand(batch, 1, 1, 1)
            with torch.no_grad(), autocast():
                fake = generator(z).float()
            with autocast():
                s_real, s_fake, penalty = gradient_penalty(critic, augment(real), augment(fake), alpha)
            wasserstein = s_real.mean() - s_fake.mean()
            critic_loss = -wasserstein + config.gp_lambda * penalty
            opt_c.zero_grad(set_to_none=True)
            critic_loss.backward()
            opt_c.step()
            augment.update(s_real, s_fake)
        with autocast():
            generator_loss = -critic(augment(generator(session.randn(batch, config.latent_dim)))).float().mean()
        opt_g.zero_grad(set_to_none=True)
        generator_loss.backward()
        opt_g.step()
        session.end_step({"critic_loss": critic_loss.item(), "generator_loss": generator_loss.item(),
                          "wasserstein": wasserstein.item()}, weights=generator_module.state_dict)
    return generator_module.state_dict()


def load(config: DCGANConfig, encoding: JointEncoding, weights: dict | None, *, seed: int,
         shape: tuple[int, int], device: str | torch.device = "cpu") -> NoiseSampler:
    """The sampler for ``weights`` (None: the initial weights ``seed`` gives)."""
    generator, _ = _networks(config, encoding, shape[0], seed)
    if weights is not None:
        generator.load_state_dict(weights)
    return NoiseSampler(generator, latent_dim=config.latent_dim, encoding=encoding).to(device).eval()


FAMILY = GeneratorFamily(config=build_config, train=train, load=load, fit_shape=fit_shape, cost=cost)
