"""``pggan``: progressive growing of GANs (Karras et al. 2018) on joint image+label channels, as
Bowles et al. 2018 (000) trained it, and the base network of GANsfer (001).

The generator draws the image channels and the label channels (the shared
``encoding.JointEncoding``) together as one joint picture; the critic judges such pictures.

**Growing.** Both networks are built once at the model size (``fit_shape``: a power of two), with
one block per resolution level: level 0 is 4x4, level ``l`` is ``4 * 2**l``. Training starts at
level 0 and adds a level at a time. Each new level first *fades in*: the generator's output is
``(1 - alpha) * upsample(to_rgb[l-1](h)) + alpha * to_rgb[l](block[l](h))`` and the critic's input
path ``(1 - alpha) * from_rgb[l-1](downsample(x)) + alpha * block[l](from_rgb[l](x))``, with alpha
going linearly from 0 to 1 over ``fade_images`` real images; then the level trains *stable*
(alpha = 1) for ``stable_images``. The real pictures are blended the same way during a fade-in:
the batch, average-pooled to the level's resolution, is lerped with its own 2x-coarser version
upsampled back (PGGAN's ``process_reals``), so the critic never sees real pictures sharper than
the generator can draw. This includes the label channels: at a fade-in the real one-hot label
channels are soft at the coarser level's boundaries, exactly like the generator's. After the last
level's stable phase, the remaining ``steps`` train at the model size. Image counts are real
pictures shown to the critic (``batch_size`` per critic step). Adam's moments are reset when a
level starts (PGGAN's ``reset_opt_for_new_lod``).

**The phase** (``level``, ``alpha``, ``resolution``, ``images`` shown so far) lives in
``session.state``, so a run killed mid fade-in resumes at the same step, level and alpha. The
sampling weights carry the phase (``phase.level``, ``phase.alpha``), so a snapshot scored for
``select`` mid-growth samples at its own resolution, upsampled (nearest) to the model size.

**The network** follows the paper: equalised learning rate (weights drawn N(0, 1), scaled at
run time by He's constant ``gain / sqrt(fan_in)``), pixel-wise feature normalisation after every
generator convolution (and on the latent), LeakyReLU(0.2), nearest-neighbour upsampling and
average-pool downsampling, linear 1x1 ``to_rgb`` / ``from_rgb`` layers, and a minibatch
standard-deviation feature map in the critic's last block. Filters are ``base_filters`` at the
model size, doubling per halving of the resolution up to ``max_filters``. One departure: the
minibatch-stddev groups are contiguous samples (PGGAN's are strided across the batch), so the
real, fake and interpolated parts of the gradient penalty's one critic pass never share a group;
the group size is the largest divisor of the per-worker batch up to ``mbstd_group``.

**000's noise layer** (``noise_layer: true``). 000 changed PGGAN in one place for CT: at the
start of the fourth resolution level (32x32) the generator concatenates one extra feature map of
per-pixel Gaussian noise, N(0, 1), drawn fresh for every sample, to the upsampled 16x16
features; the level's first convolution reads it. A plain PGGAN must make all its fine-scale
texture a deterministic function of the latent vector; the noise map gives it an independent
per-pixel source, which 000 found gives CT images a more realistic noise pattern. It needs a
model size of at least 32. In training the map comes from the session's noise stream, in
sampling from the sampler's seed.

**Per-level noise maps** (``pixel_noise: true``). StyleGAN's noise inputs (Karras et al. 2019,
section 3.2): every generator convolution adds a fresh N(0, 1) map of its resolution, one per
level and sample, times a learned per-channel strength that starts at zero (so a fresh network
is the plain PGGAN). 000's single 32x32 map cannot give a 64x64 model per-pixel texture: the
phantom's Rician background noise is i.i.d. at 64x64, and a generator whose output is a
deterministic function of the latent leaves it flat, which the finest level of the SWD pyramid
measures (issue 12's 64x64 runs, the same settings with and without the maps: SWD at 64 px
47.7 -> 37.8; the DCGAN's 39.5-47.6).

**Upsampling** (``upsampling``): PGGAN's nearest neighbour, or bilinear; the generator's
levels, its fade-in skip path and the real pictures' fade-in blend use the same one.

**Training**: WGAN-GP (lambda ``gp_lambda``, ``wgan.gradient_penalty``) plus PGGAN's drift term
``drift * E[critic(real)^2]`` (epsilon 0.001), ``n_critic`` critic steps per generator step, Adam
with betas (0, 0.99) and eps 1e-8 for both networks. Sampling uses an exponential moving average
of the generator's weights (``ema_decay``, with the warm-up of ``ddpm.EMA``), which ``train``
returns. ``gp_every`` > 1 makes the penalty lazy, as StyleGAN2 does its R1 penalty (Karras et al.
2020, section 3.1): it is computed on every ``gp_every``-th critic step only, weighted
``gp_every`` x so that its average pull is the same. On a CPU the penalty's double backward is
about three quarters of a critic step (``_WITHOUT_PENALTY``), so a lazy penalty buys about 2x
the steps in the same time.

Written by hand: MONAI has no progressive GAN (its ``Generator`` / ``Discriminator`` are fixed
single-resolution stacks with no fade-in, equalised learning rate, pixel norm or minibatch
stddev), and the official implementation (tkarras/progressive_growing_of_gans, TensorFlow 1) is
not a library. Every parameter takes part in every forward pass (unused levels with a zero
weight), so DistributedDataParallel needs no ``find_unused_parameters``; with Adam's beta1 = 0
a zero gradient moves nothing.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from synthmix.errors import StudyError
from synthmix.trainers.generators import GeneratorData, GeneratorFamily
from synthmix.trainers.generators.ddpm import EMA
from synthmix.trainers.generators.encoding import JointEncoding, label_channels
from synthmix.trainers.generators.options import option_key_problems
from synthmix.trainers.generators.session import GeneratorSession
from synthmix.trainers.generators.wgan import gradient_penalty
from synthmix.trainers.synthetic import Samples

SIZES = (8, 16, 32, 64, 128, 256)
NOISE_RESOLUTION = 32  # 000: "a 32x32 layer of Gaussian noise at the start of the fourth (32x32) resolution level"
_SQRT2 = math.sqrt(2.0)


def levels(size: int) -> int:
    """The index of the last level for a model of ``size`` (level 0 is 4x4)."""
    if size not in SIZES:
        raise ValueError(f"image size {size} is not supported; pggan grows from 4x4 to one of {SIZES}")
    return int(math.log2(size)) - 2


def filters(base_filters: int, max_filters: int, size: int, resolution: int) -> int:
    """Feature maps at ``resolution``: ``base_filters`` at the model size, doubling per halving."""
    return min(max_filters, base_filters * (size // resolution))


# ---- layers ----------------------------------------------------------------------------------------

class EqualizedConv2d(nn.Module):
    """A convolution with equalised learning rate: N(0, 1) weights scaled by gain / sqrt(fan_in)
    at every forward, so Adam's step is the same relative size for every layer. ``noise``: the
    layer adds a per-pixel noise map times a learned per-channel strength (zero at start) to its
    output before the bias (StyleGAN's noise inputs)."""

    def __init__(self, cin: int, cout: int, kernel: int, gain: float = _SQRT2, noise: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.noise_strength = nn.Parameter(torch.zeros(1, cout, 1, 1)) if noise else None
        self.scale, self.padding = gain / math.sqrt(cin * kernel * kernel), kernel // 2

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.noise_strength is None:
            return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)
        y = F.conv2d(x, self.weight * self.scale, None, padding=self.padding)
        return y + self.noise_strength * noise.to(y.dtype) + self.bias.view(1, -1, 1, 1)


class EqualizedLinear(nn.Module):
    def __init__(self, fin: int, fout: int, gain: float = _SQRT2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fout, fin))
        self.bias = nn.Parameter(torch.zeros(fout))
        self.scale = gain / math.sqrt(fin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each pixel's feature vector to unit mean square (PGGAN section 4.2)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


class MinibatchStd(nn.Module):
    """Appends one feature map: the standard deviation of each feature and pixel over a group of
    ``group_size`` contiguous samples, averaged over features and pixels (PGGAN section 3)."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = _largest_divisor(n, self.group_size)
        y = x.float().view(n // g, g, c, h, w)
        std = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (n // g,)
        return torch.cat([x, std.repeat_interleave(g).view(n, 1, 1, 1).expand(n, 1, h, w).to(x.dtype)], 1)


def _every_parameter(module: nn.Module) -> torch.Tensor:
    """0 * a sum touching every parameter: DDP then sees each one used in every pass."""
    return 0.0 * sum(p.reshape(-1)[0] for p in module.parameters())


def _lerp(low: torch.Tensor, high: torch.Tensor, alpha: float) -> torch.Tensor:
    return high if alpha >= 1 else low + (high - low) * alpha


UPSAMPLING = ("nearest", "bilinear")


def upsample(x: torch.Tensor, mode: str) -> torch.Tensor:
    """2x upsampling: PGGAN's nearest neighbour, or bilinear (StyleGAN's filtered upsampling
    in its simplest form), which leaves no 2x2 blocks for the next level to smooth away."""
    if mode == "nearest":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


# ---- networks --------------------------------------------------------------------------------------

class Generator(nn.Module):
    """Latent (N, latent_dim) -> joint picture (N, out_channels, r, r) at level ``level``
    (r = 4 * 2**level), faded in with ``alpha``. ``noise``: the maps ``noise_shapes(level)``
    lists, in that order (000's 32x32 map when the noise layer is on and the level reaches
    32x32; one per level with ``pixel_noise``). Linear output (PGGAN): samplers clamp."""

    def __init__(self, *, latent_dim: int, out_channels: int, size: int, base_filters: int, max_filters: int,
                 noise_layer: bool = False, pixel_noise: bool = False, upsampling: str = "nearest"):
        super().__init__()
        self.latent_dim, self.size, self.last = latent_dim, size, levels(size)
        if noise_layer and size < NOISE_RESOLUTION:
            raise ValueError(f"noise_layer needs a model size of at least {NOISE_RESOLUTION}, got {size}")
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}")
        self.noise_level = self.last + 1 if not noise_layer else int(math.log2(NOISE_RESOLUTION)) - 2
        self.pixel_noise, self.upsampling = pixel_noise, upsampling
        ch = [filters(base_filters, max_filters, size, 4 * 2 ** lv) for lv in range(self.last + 1)]
        self.channels = ch
        self.dense = EqualizedLinear(latent_dim, ch[0] * 16, gain=_SQRT2 / 4)  # PGGAN's 4x4 "conv" of the latent
        self.conv0 = EqualizedConv2d(ch[0], ch[0], 3, noise=pixel_noise)
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv2d(ch[lv - 1] + (lv == self.noise_level), ch[lv], 3, noise=pixel_noise),
                           EqualizedConv2d(ch[lv], ch[lv], 3, noise=pixel_noise)]) for lv in range(1, self.last + 1))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(c, out_channels, 1, gain=1.0) for c in ch)

    def uses_noise(self, level: int) -> bool:
        """Whether forward at ``level`` needs noise maps."""
        return bool(self.noise_shapes(level))

    def noise_shapes(self, level: int) -> list[tuple[int, int, int]]:
        """Per-sample shapes of the noise maps forward reads at ``level``, in order."""
        shapes = [(1, NOISE_RESOLUTION, NOISE_RESOLUTION)] if level >= self.noise_level else []
        if self.pixel_noise:
            shapes += [(1, 4 * 2 ** lv, 4 * 2 ** lv) for lv in range(level + 1)]
        return shapes

    def draw_noise(self, n: int, level: int, randn) -> list[torch.Tensor] | None:
        """The noise maps for ``n`` samples at ``level`` from ``randn(*shape)`` (None: none needed)."""
        return [randn(n, *shape) for shape in self.noise_shapes(level)] or None

    def layers(self) -> list[nn.Module]:
        """The layers that draw a model-size picture, input to output: the latent's dense layer,
        the 4x4 convolution, each level's two convolutions, the last level's to_rgb (gansfer
        freezes the final ones)."""
        return [self.dense, self.conv0, *(conv for block in self.blocks for conv in block), self.to_rgb[self.last]]

    def forward(self, z: torch.Tensor, level: int | None = None, alpha: float = 1.0,
                noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        level = self.last if level is None else level
        maps = list(noise or [])
        if len(maps) != len(self.noise_shapes(level)):
            raise ValueError(f"forward at level {level} needs {len(self.noise_shapes(level))} noise map(s) "
                             f"{self.noise_shapes(level)}, got {len(maps)}")
        layer_noise = maps[-(level + 1):] if self.pixel_noise else [None] * (level + 1)
        x = _act(self.dense(pixel_norm(z))).view(len(z), -1, 4, 4)
        x = pixel_norm(_act(self.conv0(pixel_norm(x), layer_noise[0])))
        previous = x
        for lv in range(1, level + 1):
            previous, x = x, upsample(x, self.upsampling)
            if lv == self.noise_level:
                x = torch.cat([x, maps[0].to(x.dtype)], 1)
            for conv in self.blocks[lv - 1]:
                x = pixel_norm(_act(conv(x, layer_noise[lv])))
        out = self.to_rgb[level](x)
        if level > 0 and alpha < 1:
            out = _lerp(upsample(self.to_rgb[level - 1](previous), self.upsampling), out, alpha)
        return out + _every_parameter(self)


class Critic(nn.Module):
    """Joint picture (N, in_channels, r, r) at level ``level`` -> unbounded score (N,)."""

    def __init__(self, *, in_channels: int, size: int, base_filters: int, max_filters: int, mbstd_group: int = 4):
        super().__init__()
        self.size, self.last = size, levels(size)
        ch = [filters(base_filters, max_filters, size, 4 * 2 ** lv) for lv in range(self.last + 1)]
        self.from_rgb = nn.ModuleList(EqualizedConv2d(in_channels, c, 1) for c in ch)
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv2d(ch[lv], ch[lv], 3), EqualizedConv2d(ch[lv], ch[lv - 1], 3)])
            for lv in range(1, self.last + 1))
        self.mbstd = MinibatchStd(mbstd_group)
        self.conv0 = EqualizedConv2d(ch[0] + 1, ch[0], 3)
        self.dense0 = EqualizedLinear(ch[0] * 16, ch[0])
        self.dense1 = EqualizedLinear(ch[0], 1, gain=1.0)

    def _block(self, lv: int, x: torch.Tensor) -> torch.Tensor:
        first, second = self.blocks[lv - 1]
        return F.avg_pool2d(_act(second(_act(first(x)))), 2)

    def forward(self, x: torch.Tensor, level: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        level = self.last if level is None else level
        h = _act(self.from_rgb[level](x))
        if level > 0:
            h = self._block(level, h)
            if alpha < 1:
                h = _lerp(_act(self.from_rgb[level - 1](F.avg_pool2d(x, 2))), h, alpha)
        for lv in range(level - 1, 0, -1):
            h = self._block(lv, h)
        h = _act(self.conv0(self.mbstd(h)))
        return self.dense1(_act(self.dense0(h.flatten(1)))).squeeze(1) + _every_parameter(self)


def real_pictures(joint: torch.Tensor, level: int, alpha: float, upsampling: str = "nearest") -> torch.Tensor:
    """Full-size real pictures at ``level``'s resolution (average pooling), blended during a
    fade-in with the coarser level upsampled back (``upsampling``), as the generator's output is."""
    factor = joint.shape[-1] // (4 * 2 ** level)
    x = F.avg_pool2d(joint, factor) if factor > 1 else joint
    if level > 0 and alpha < 1:
        x = _lerp(upsample(F.avg_pool2d(x, 2), upsampling), x, alpha)
    return x


# ---- options ---------------------------------------------------------------------------------------

# The PGGAN paper's settings (and 000's, which kept PGGAN's defaults): 600k real images per fade-in
# and per stable phase, lr 1e-3, one critic step per generator step, EMA 0.999, 512 filters.
PAPER_SETTINGS = dict(lr=1e-3, betas=(0.0, 0.99), n_critic=1, gp_lambda=10.0, drift=0.001, ema_decay=0.999,
                      fade_images=600_000, stable_images=600_000, latent_dim=512, max_filters=512,
                      base_filters=64, steps=400_000)


@dataclass(frozen=True)
class PGGANConfig:
    """The family's options. The defaults keep the paper's loss, optimiser and network but
    budgets a CPU core can afford (``PAPER_SETTINGS`` holds the paper's).

    ``steps``: generator steps in all; they must reach the model size (the growing needs
    ``levels x (fade_images + stable_images) / (batch_size x n_critic)`` steps), and the rest
    train there. ``fade_images`` / ``stable_images``: real images per fade-in and per stable
    phase of each level (level 0 has only a stable phase). ``batch_size`` is global (split
    across workers). ``ema_decay``: the sampling weights' moving average (the paper's 0.999 is
    for 10^5 steps; a CPU budget of 10^3 needs less). ``gp_every``: the lazy gradient penalty's
    interval in critic steps (1: every step, as WGAN-GP). ``noise_layer``: 000's 32x32 noise
    map; ``pixel_noise``: a noise map per level; ``upsampling``: nearest or bilinear (module
    docstring).
    """

    latent_dim: int = 128
    base_filters: int = 16
    max_filters: int = 128
    steps: int = 600
    batch_size: int = 16
    fade_images: int = 1600
    stable_images: int = 1600
    lr: float = 1e-3
    betas: tuple[float, float] = (0.0, 0.99)
    n_critic: int = 1
    gp_lambda: float = 10.0
    gp_every: int = 1
    drift: float = 0.001
    ema_decay: float = 0.99
    mbstd_group: int = 4
    noise_layer: bool = False
    pixel_noise: bool = False
    upsampling: str = "nearest"
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        problems = []
        for name in ("latent_dim", "base_filters", "max_filters", "steps", "batch_size", "n_critic",
                     "gp_every", "mbstd_group", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name}: must be a positive integer, got {value!r}")
        for name in ("fade_images", "stable_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name}: must be a non-negative integer (real images), got {value!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            problems.append(f"lr: must be positive, got {self.lr!r}")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            problems.append(f"betas: must be two numbers in [0, 1), got {self.betas!r}")
        for name in ("gp_lambda", "drift"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.ema_decay, (int, float)) or not 0 <= self.ema_decay < 1:
            problems.append(f"ema_decay: must be in [0, 1), got {self.ema_decay!r}")
        for name in ("noise_layer", "pixel_noise"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if self.upsampling not in UPSAMPLING:
            problems.append(f"upsampling: must be one of {', '.join(UPSAMPLING)}, got {self.upsampling!r}")
        if problems:
            raise StudyError(problems, source="generator config")

    @property
    def images_per_step(self) -> int:
        return self.batch_size * self.n_critic

    def growing_steps(self, size: int) -> int:
        """Generator steps until the model size trains stable (alpha 1)."""
        return math.ceil(levels(size) * (self.fade_images + self.stable_images) / self.images_per_step)


def build_config(d: dict) -> PGGANConfig:
    """A PGGANConfig from a (YAML) dict; unknown keys are rejected by name."""
    problems = option_key_problems(PGGANConfig, d, family="pggan")
    if problems:
        raise StudyError(problems, source="generator config")
    values = dict(d)
    if "betas" in values:
        if not isinstance(values["betas"], (list, tuple)):
            raise StudyError([f"betas: must be two numbers in [0, 1), got {values['betas']!r}"],
                             source="generator config")
        values["betas"] = tuple(values["betas"])
    return PGGANConfig(**values)


def fit_shape(h: int, w: int) -> tuple[int, int]:
    """The smallest power-of-two square (8 to 256) that holds an h x w slice."""
    for size in SIZES:
        if size >= max(h, w):
            return size, size
    raise ValueError(f"slices of {h}x{w} exceed the largest pggan size {SIZES[-1]}; "
                     f"set dataset.preprocess.resize (or crop) to at most {SIZES[-1]}x{SIZES[-1]}")


# ---- the schedule ----------------------------------------------------------------------------------

def phase(config: PGGANConfig, size: int, images: int) -> tuple[int, float]:
    """(level, alpha) after ``images`` real images: level 0 stable, then per level a fade-in
    (alpha from 0 towards 1) and a stable phase; the last level stays."""
    last, fade, stable = levels(size), config.fade_images, config.stable_images
    if images < stable or last == 0:
        return 0, 1.0
    done = images - stable
    level = 1 + done // (fade + stable) if fade + stable else last
    if level > last:
        return last, 1.0
    into = done - (level - 1) * (fade + stable)
    return int(level), (into / fade if into < fade else 1.0)


def check_budget(config: PGGANConfig, size: int) -> None:
    need = config.growing_steps(size) + 1
    if config.steps < need:
        raise StudyError([f"steps: {config.steps} steps of {config.images_per_step} real images do not reach "
                          f"{size}x{size}: growing through {levels(size)} levels of fade_images "
                          f"{config.fade_images} + stable_images {config.stable_images} needs at least {need} "
                          "steps; raise steps or lower fade_images / stable_images"], source="generator config")


# ---- cost model ------------------------------------------------------------------------------------

# Fitted to step times measured on this project's shared 2-core CPU, 1 torch thread, at every level
# of a 64x64 model for base/max filters 16/128, 8/64 and 8/128 (within 20% of each of the 15
# points; ``benchmarks/pggan_acceptance.py --cost`` re-measures): seconds per real image of a
# training step = _PER_IMAGE + _PER_MAC x the multiply-accumulates of one generator + critic
# forward at that level + _PER_ACTIVATION x their convolutions' output elements (the memory-bound
# part: activations, pixel norm, pooling, which dominates at high resolution with few filters).
_PER_IMAGE, _PER_MAC, _PER_ACTIVATION = 2.2e-3, 1.0e-10, 9.5e-8


def _channels(config: PGGANConfig, size: int) -> list[int]:
    return [filters(config.base_filters, config.max_filters, size, 4 * 2 ** lv) for lv in range(levels(size) + 1)]


def _macs(config: PGGANConfig, channels: int, size: int, level: int) -> float:
    """Multiply-accumulates of one generator and one critic forward at ``level``."""
    ch = _channels(config, size)
    g = config.latent_dim * ch[0] * 16 + ch[0] ** 2 * 9 * 16
    c = (ch[0] + 1) * ch[0] * 9 * 16 + ch[0] * 16 * ch[0]
    for lv in range(1, level + 1):
        pixels = (4 * 2 ** lv) ** 2
        g += (ch[lv - 1] * ch[lv] + ch[lv] ** 2) * 9 * pixels
        c += (ch[lv] ** 2 + ch[lv] * ch[lv - 1]) * 9 * pixels  # both convs run before the pool
    r = 4 * 2 ** level
    return g + c + 2 * ch[level] * channels * r * r


def _activations(config: PGGANConfig, size: int, level: int) -> float:
    """Output elements of the generator's and the critic's convolutions at ``level``."""
    ch = _channels(config, size)
    return sum(4 * ch[lv] * (4 * 2 ** lv) ** 2 for lv in range(level + 1))


# A critic step without the gradient penalty (gp_every > 1) costs this fraction of one with it
# (no double backward, 2 batches not 3): 0.24-0.31 at 8x8 to 64x64, measured as step_seconds' constants.
_WITHOUT_PENALTY = 0.27


def step_seconds(config: PGGANConfig, size: int, level: int, channels: int = 5) -> float:
    """Seconds of one generator step (with its ``n_critic`` critic steps) at ``level``: a critic
    step is ~3 generator forwards + a critic pass over 3 batches with a double backward (on
    every ``gp_every``-th; the others ``_WITHOUT_PENALTY`` of that), a generator step ~one;
    both scale with the forward's work."""
    per_image = _PER_IMAGE + _PER_MAC * _macs(config, channels, size, level) \
        + _PER_ACTIVATION * _activations(config, size, level)
    critic = 1 / config.gp_every + (1 - 1 / config.gp_every) * _WITHOUT_PENALTY
    return per_image * config.batch_size * (config.n_critic * critic + 0.5)


def cost(config: PGGANConfig, shape: tuple[int, int]) -> float:
    """Seconds on one CPU core for slices of ``shape`` (padded to ``fit_shape``): each step costs
    what its level costs (``step_seconds``)."""
    size = fit_shape(*shape)[0]
    total, images, steps = 0.0, 0, 0
    # Walk the schedule a level at a time rather than step by step.
    while steps < config.steps:
        level, _ = phase(config, size, images)
        if level == levels(size):
            total += (config.steps - steps) * step_seconds(config, size, level)
            break
        nxt = steps + 1
        while nxt < config.steps and phase(config, size, nxt * config.images_per_step)[0] == level:
            nxt += 1
        total += (nxt - steps) * step_seconds(config, size, level)
        steps, images = nxt, nxt * config.images_per_step
    return total


# ---- training --------------------------------------------------------------------------------------

def _networks(config: PGGANConfig, encoding: JointEncoding, size: int, seed: int,
              channels: int | None = None) -> tuple[Generator, Critic]:
    """The generator and critic that ``seed`` initialises, for ``channels`` joint channels
    (default: the shared encoding's)."""
    channels = channels or encoding.image_channels + label_channels(encoding.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(latent_dim=config.latent_dim, out_channels=channels, size=size,
                              base_filters=config.base_filters, max_filters=config.max_filters,
                              noise_layer=config.noise_layer, pixel_noise=config.pixel_noise,
                              upsampling=config.upsampling)
        torch.manual_seed(seed + 1)  # a different stream from the generator's
        critic = Critic(in_channels=channels, size=size, base_filters=config.base_filters,
                        max_filters=config.max_filters, mbstd_group=config.mbstd_group)
    return generator, critic


def _sampling_weights(ema: EMA, state: dict) -> dict:
    return {**ema.module.state_dict(), "phase.level": torch.tensor(int(state["level"])),
            "phase.alpha": torch.tensor(float(state["alpha"]), dtype=torch.float64)}


def restart_moments(opts: dict) -> None:
    """A new level starts: fresh Adam moments for both networks (PGGAN's reset_opt_for_new_lod)."""
    for opt in opts.values():
        opt.state.clear()


class Growing:
    """One progressive-growing run on a session: the networks, their Adam optimisers and EMA,
    and one generator step with its critic steps (``step``). ``pggan.train`` runs it to the
    end; ``gansfer`` runs it as its phase 1. ``joint``: the real pictures (N, C, H, W) on the
    device, in the channels the networks draw."""

    def __init__(self, config: PGGANConfig, joint: torch.Tensor, session: GeneratorSession,
                 generator_module: Generator, critic_module: Critic):
        s, ctx = session, session.context
        # channels-last: oneDNN's convolutions run about 1.3x faster on it (a 64x64 step on one core)
        joint = joint.contiguous(memory_format=torch.channels_last)
        generator_module, critic_module = (m.to(memory_format=torch.channels_last) for m in (generator_module, critic_module))
        self.config, self.joint, self.session, self.size = config, joint, session, joint.shape[-1]
        critic_module.mbstd.group_size = _largest_divisor(s.local_batch(config.batch_size), config.mbstd_group)
        self.generator_module = generator_module.to(s.device)
        self.ema = EMA(self.generator_module, config.ema_decay)
        self.generator, self.critic = ctx.prepare_model(self.generator_module), ctx.prepare_model(critic_module.to(s.device))
        self.opts = {"generator": torch.optim.Adam(self.generator.parameters(), **adam_options(config)),
                     "critic": torch.optim.Adam(self.critic.parameters(), **adam_options(config))}

    @property
    def models(self) -> dict:
        return {"generator": self.generator, "critic": self.critic, "ema": self.ema.module}

    def start(self) -> None:
        """The phase of a fresh run (after ``session.resume``, which restores a resumed one)."""
        for key, value in (("images", 0), ("level", 0), ("alpha", 1.0), ("resolution", 4)):
            self.session.state.setdefault(key, value)

    def noise(self, level: int) -> list[torch.Tensor] | None:
        """The generator's noise maps for one global batch at ``level`` (None: it needs none),
        from the session's noise stream."""
        return self.generator_module.draw_noise(self.config.batch_size, level, self.session.randn)

    def step(self) -> dict:
        s, config, generator, critic = self.session, self.config, self.generator, self.critic
        batch, latent = config.batch_size, config.latent_dim
        level, alpha = phase(config, self.size, s.state["images"])
        if level != s.state["level"]:
            restart_moments(self.opts)
        s.state.update(level=level, alpha=alpha, resolution=4 * 2 ** level)
        for _ in range(config.n_critic):
            reals = real_pictures(s.batch(self.joint, batch), level, alpha, config.upsampling)
            z, mix = s.randn(batch, latent), s.rand(batch, 1, 1, 1)
            with torch.no_grad():
                fakes = generator(z, level, alpha, self.noise(level))
            s_real, s_fake, penalty = self._critic_scores(reals, fakes, mix, level, alpha)
            wasserstein = s_real.mean() - s_fake.mean()
            critic_loss = -wasserstein + config.drift * s_real.pow(2).mean()
            if penalty is not None:  # lazy: every gp_every-th critic step, weighted gp_every x
                critic_loss = critic_loss + config.gp_lambda * config.gp_every * penalty
                s.state["penalty"] = penalty.item()  # reported until the next one (a resumed run too)
            _update(self.opts["critic"], critic_loss)
            s.state["images"] += batch
        generator_loss = -critic(generator(s.randn(batch, latent), level, alpha, self.noise(level)), level, alpha).mean()
        _update(self.opts["generator"], generator_loss)
        self.ema.update(self.generator_module, s.step)
        return {"critic_loss": critic_loss.item(), "generator_loss": generator_loss.item(),
                "wasserstein": wasserstein.item(), "penalty": s.state["penalty"]}

    def _critic_scores(self, reals: torch.Tensor, fakes: torch.Tensor, mix: torch.Tensor, level: int,
                       alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(critic(reals), critic(fakes), gradient penalty or None): the penalty on every
        ``gp_every``-th critic step only (counted from the images shown, so a resumed run keeps
        the rhythm), in one critic forward either way."""
        critic = lambda x: self.critic(x, level, alpha)  # noqa: E731
        if (self.session.state["images"] // self.config.batch_size) % self.config.gp_every == 0:
            return gradient_penalty(critic, reals, fakes, mix)
        s_real, s_fake = critic(torch.cat([reals, fakes])).float().split(len(reals))
        return s_real, s_fake, None

    def weights(self) -> dict:
        """The sampling weights: the EMA generator with the phase it draws at."""
        return _sampling_weights(self.ema, self.session.state)


def adam_options(config: PGGANConfig) -> dict:
    return dict(lr=float(config.lr), betas=tuple(float(b) for b in config.betas), eps=1e-8)


def _update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def train(config: PGGANConfig, data: GeneratorData, encoding: JointEncoding, session: GeneratorSession) -> dict:
    """Grow from 4x4 to the model size (module docstring); every real batch is drawn from
    ``data.labelled`` only (rule 3). Returns the EMA generator's weights with the phase."""
    real = data.labelled
    size = real.images.shape[-1]
    check_budget(config, size)
    joint = encoding.encode(torch.from_numpy(real.images), torch.from_numpy(real.labels)).to(session.device)
    growing = Growing(config, joint, session, *_networks(config, encoding, size, session.seed))
    session.resume(models=growing.models, optimizers=growing.opts)
    growing.start()
    while session.step < config.steps:
        session.end_step(growing.step(), weights=growing.weights)
    return growing.weights()


# ---- sampling --------------------------------------------------------------------------------------

class PGGANSampler(nn.Module):
    """The family contract's sampler: latents (and noise maps) from a CPU generator seeded with
    ``seed``, drawn at the weights' phase, upsampled (nearest) to the model size, clamped to
    [-1, 1] and decoded by the shared encoding."""

    def __init__(self, generator: Generator, *, level: int, alpha: float, encoding: JointEncoding,
                 batch_size: int = 64):
        super().__init__()
        self.generator, self.level, self.alpha, self.encoding = generator, level, alpha, encoding
        self.batch_size = batch_size

    @torch.no_grad()
    def sample(self, n: int, *, seed: int, device: str | torch.device = "cpu", masks=None) -> Samples:
        if n <= 0:
            raise ValueError(f"number of samples must be positive, got {n}")
        if masks is not None:
            raise ValueError("the pggan family is unconditional: it takes no masks")
        g = self.generator.eval().to(device)
        stream = torch.Generator().manual_seed(int(seed))
        parts = []
        for start in range(0, n, self.batch_size):
            m = min(self.batch_size, n - start)
            z = torch.randn(m, g.latent_dim, generator=stream)
            noise = g.draw_noise(m, self.level, functools.partial(torch.randn, generator=stream))
            x = g(z.to(device), self.level, self.alpha, to_device(noise, device))
            if x.shape[-1] < g.size:
                x = F.interpolate(x, size=(g.size, g.size), mode="nearest")
            images, channels = self.encoding.split(x.clamp(-1, 1))
            parts.append(Samples(images.cpu().numpy().astype(np.float32),
                                 self.encoding.decode_labels(channels).cpu().numpy().astype(np.int64),
                                 {"label_channels": channels.float().cpu().numpy(),
                                  "latent_norm": z.norm(dim=1).numpy()}))
        return Samples.concat(parts)


def to_device(noise: list[torch.Tensor] | None, device) -> list[torch.Tensor] | None:
    return None if noise is None else [n.to(device) for n in noise]


def load(config: PGGANConfig, encoding: JointEncoding, weights: dict | None, *, seed: int,
         shape: tuple[int, int], device: str | torch.device = "cpu") -> PGGANSampler:
    """The sampler for ``weights`` (None: the initial weights ``seed`` gives, at the model size)."""
    generator, _ = _networks(config, encoding, shape[0], seed)
    level, alpha = generator.last, 1.0
    if weights is not None:
        weights = dict(weights)
        level, alpha = int(weights.pop("phase.level")), float(weights.pop("phase.alpha"))
        generator.load_state_dict(weights)
    return PGGANSampler(generator, level=level, alpha=alpha, encoding=encoding).to(device).eval()


def check_steps(config: PGGANConfig, shape: tuple[int, int]) -> None:
    """StudyError when ``config.steps`` do not grow to the model size of ``shape`` (``check_budget``)."""
    check_budget(config, fit_shape(*shape)[0])


FAMILY = GeneratorFamily(config=build_config, train=train, load=load, fit_shape=fit_shape, cost=cost,
                         check_steps=check_steps)
