"""``pix2pix``: the lesion-conditional GAN (LcGAN) of 002, image-to-image translation (Isola et
al. 2017) from a label map to its image.

The generator sees a real mask of the cell's training subset (label channels in [-1, 1], one
per class, or one for a binary label) and draws the image; the discriminator judges (mask,
image) pairs patch by patch. Loss: the conditional GAN loss plus L1 to the real image with
lambda 100; Adam 2e-4, beta1 0.5. Sampling is ``needs_masks``: shared code hands the sampler
the subset's masks, each once per pass (``masks.MaskSource``), so each real mask gives one
synthetic image, doubling the data as in 002. A sample's label is its mask.

What comes from MONAI and what is written here:

- discriminator: MONAI's ``PatchDiscriminator`` set up as pix2pix's 70x70 PatchGAN (64
  filters doubling over three stride-2 4x4 convolutions, a stride-1 one, a stride-1 4x4
  output conv: a 70-pixel receptive field);
- adversarial loss: MONAI's ``PatchAdversarialLoss("bce")`` (sigmoid + binary cross-entropy:
  pix2pix's "vanilla" GAN loss);
- U-Net generator, written here: MONAI's ``UNet`` is a residual-unit U-Net of 3x3 convolutions
  without decoder dropout; pix2pix's halves the slice with 4x4 stride-2 convolutions down to
  1x1 (LeakyReLU 0.2 encoder, ReLU decoder, skips by concatenation, tanh output) and has
  dropout 0.5 in the three decoder blocks next to the bottleneck, its only noise, which stays
  on when sampling (``conditional.dropout_on``);
- normalisation: instance norm in both networks, which is what pix2pix's batch norm computes at
  002's batch size of 1 (per-sample statistics); larger CPU batches keep that behaviour, and the
  discriminator can take real and fake pairs in one forward (one forward per backward under DDP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch import nn

from synthmix.trainers.generators import GeneratorData, GeneratorFamily
from synthmix.trainers.generators.conditional import (MaskSampler, build_options, check_options,
                                                      square_power_of_two, update)
from synthmix.trainers.generators.encoding import JointEncoding, encode_labels, label_channels
from synthmix.trainers.generators.session import GeneratorSession

MIN_SIZE = 32  # the 70x70 PatchGAN needs >= 32 px for a non-empty output map
DROPOUT_BLOCKS = 3


def _init(module: nn.Module) -> None:
    """pix2pix's initialisation: conv weights N(0, 0.02), norm scales N(1, 0.02), zero biases."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.InstanceNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class _Level(nn.Module):
    """One U-Net level: down (LeakyReLU, 4x4 stride-2 conv, norm), the inner levels, up (ReLU,
    4x4 stride-2 transposed conv, norm, dropout), then the skip: cat(input, output)."""

    def __init__(self, outer: int, inner: int, *, sub: nn.Module | None, dropout: float, norm_down: bool):
        super().__init__()
        down: list[nn.Module] = [nn.LeakyReLU(0.2), nn.Conv2d(outer, inner, 4, 2, 1)]
        if norm_down:
            down.append(nn.InstanceNorm2d(inner, affine=True))
        up_in = inner if sub is None else 2 * inner
        up: list[nn.Module] = [nn.ReLU(), nn.ConvTranspose2d(up_in, outer, 4, 2, 1), nn.InstanceNorm2d(outer, affine=True)]
        if dropout:
            up.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*down, *([sub] if sub is not None else []), *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.net(x)], 1)


class UNetGenerator(nn.Module):
    """pix2pix's U-Net: (N, in_channels, S, S) label channels -> (N, out_channels, S, S) in
    [-1, 1], S a power of two; ``log2(S)`` levels (at most 8, as pix2pix's 256-px net) down to
    the bottleneck, filters ``base_filters * 2^level`` capped at 8x."""

    def __init__(self, *, in_channels: int, out_channels: int, size: int, base_filters: int, dropout: float):
        super().__init__()
        depth = min(8, int(math.log2(size)))
        width = [base_filters * min(8, 2 ** level) for level in range(depth)]
        sub: nn.Module | None = None
        for level in range(depth - 1, 0, -1):  # innermost first; level 0 is the outer conv pair
            innermost = level == depth - 1
            drop = dropout if depth - 1 - DROPOUT_BLOCKS <= level < depth - 1 else 0.0
            sub = _Level(width[level - 1], width[level], sub=sub, dropout=drop, norm_down=not innermost)
        self.down = nn.Conv2d(in_channels, width[0], 4, 2, 1)
        self.inner = sub if sub is not None else nn.Identity()
        inner_out = 2 * width[0] if sub is not None else width[0]
        self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(inner_out, out_channels, 4, 2, 1), nn.Tanh())
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.inner(self.down(x)))


def patch_discriminator(*, in_channels: int, base_filters: int) -> PatchDiscriminator:
    """pix2pix's 70x70 PatchGAN on MONAI's PatchDiscriminator (logits, no activation)."""
    return PatchDiscriminator(spatial_dims=2, channels=base_filters, in_channels=in_channels, out_channels=1,
                              num_layers_d=3, kernel_size=4, norm=("INSTANCE", {"affine": True}), bias=True,
                              padding=1, last_conv_kernel_size=4)


# ---- options -------------------------------------------------------------------------------------

# 002 / pix2pix: 64 filters in both networks, batch size 1, trained for 10-200 epochs.
PAPER_SETTINGS = dict(base_filters=64, disc_filters=64, batch_size=1, lr=2e-4, betas=(0.5, 0.999))


@dataclass(frozen=True)
class Pix2PixConfig:
    """The family's options. 002's loss (L1 lambda 100 + GAN) and Adam betas (0.5, 0.999 as
    pix2pix) by default; for a CPU budget the networks are 4x narrower than 002's 64 filters,
    the batch 8 slices rather than 1, and the learning rate 1e-3 rather than 2e-4
    (``PAPER_SETTINGS`` restores all four). On the 64x64 phantom 400 steps at 2e-4 left the
    images dim and blurred (FCN score 0.09); 1e-3 gave 0.65 against 0.69 on real validation
    slices, as did 800 steps at 5e-4 (benchmarks/conditional_acceptance.py). ``steps`` counts
    generator updates (one discriminator update each); ``batch_size`` is global (split across
    workers)."""

    steps: int = 400
    batch_size: int = 8
    base_filters: int = 16
    disc_filters: int = 16
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    l1_lambda: float = 100.0
    dropout: float = 0.5
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        problems = [] if 0 <= self.dropout < 1 else [f"dropout: must be in [0, 1), got {self.dropout!r}"]
        check_options(self, positive_ints=("steps", "batch_size", "base_filters", "disc_filters", "checkpoint_every"),
                      positive=("lr",), non_negative=("l1_lambda",), betas=("betas",), problems=problems)


def build_config(d: dict) -> Pix2PixConfig:
    return build_options(Pix2PixConfig, d, family="pix2pix")


def fit_shape(h: int, w: int) -> tuple[int, int]:
    """The U-Net halves a square power of two down to 1x1: the smallest one >= 32 holding h x w."""
    return square_power_of_two(h, w, minimum=MIN_SIZE, family="pix2pix")


def cost(config: Pix2PixConfig, shape: tuple[int, int]) -> float:
    """Seconds on one CPU core: ~8 s per million batch x pixel samples at 16 filters (measured:
    0.25 s CPU per step of 8 at 64x64), growing with the square of the filters."""
    return config.steps * config.batch_size * shape[0] * shape[1] / 1e6 * 8.0 * (config.base_filters / 16) ** 2


# ---- training ------------------------------------------------------------------------------------

def _networks(config: Pix2PixConfig, encoding: JointEncoding, size: int, seed: int
              ) -> tuple[UNetGenerator, PatchDiscriminator]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = UNetGenerator(in_channels=label_channels(encoding.num_classes), out_channels=encoding.image_channels,
                                  size=size, base_filters=config.base_filters, dropout=config.dropout)
        torch.manual_seed(seed + 1)
        discriminator = patch_discriminator(in_channels=encoding.channels, base_filters=config.disc_filters)
    return generator, discriminator


def train(config: Pix2PixConfig, data: GeneratorData, encoding: JointEncoding, session: GeneratorSession) -> dict:
    """One discriminator update on (mask, real) vs (mask, generated) pairs, then one generator
    update (GAN + L1); each batch is drawn from ``data.labelled`` only (rule 3)."""
    ctx, device = session.context, session.device
    real = data.labelled
    masks = encode_labels(torch.from_numpy(real.labels), encoding.num_classes).to(device)
    images = encoding.encode_images(torch.from_numpy(real.images)).to(device)
    generator_module, discriminator_module = _networks(config, encoding, images.shape[-1], session.seed)
    generator = ctx.prepare_model(generator_module.to(device))
    discriminator = ctx.prepare_model(discriminator_module.to(device))
    adam = dict(lr=config.lr, betas=tuple(config.betas))
    opt_g = torch.optim.Adam(generator.parameters(), **adam)
    opt_d = torch.optim.Adam(discriminator.parameters(), **adam)
    torch.manual_seed(session.seed + 7919 * session.rank)  # dropout's stream; a resume restores it
    session.resume(models={"generator": generator, "discriminator": discriminator},
                   optimizers={"generator": opt_g, "discriminator": opt_d})
    adversarial = PatchAdversarialLoss(criterion="bce")
    while session.step < config.steps:
        rows = torch.from_numpy(session.rows(len(images), config.batch_size)).to(device)
        mask, image = masks[rows], images[rows]
        fake = generator(mask)
        scores = discriminator(torch.cat([torch.cat([mask, image], 1), torch.cat([mask, fake.detach()], 1)]))[-1]
        d_real, d_fake = scores.split(len(mask))
        d_loss = 0.5 * (adversarial(d_real, target_is_real=True, for_discriminator=True)
                        + adversarial(d_fake, target_is_real=False, for_discriminator=True))
        update(opt_d, d_loss)
        g_adv = adversarial(discriminator(torch.cat([mask, fake], 1))[-1], target_is_real=True, for_discriminator=False)
        l1 = (fake - image).abs().mean()
        g_loss = g_adv + config.l1_lambda * l1
        update(opt_g, g_loss)
        session.end_step({"discriminator_loss": d_loss.item(), "generator_adversarial": g_adv.item(),
                          "l1": l1.item()}, weights=generator_module.state_dict)
    return generator_module.state_dict()


def load(config: Pix2PixConfig, encoding: JointEncoding, weights: dict | None, *, seed: int,
         shape: tuple[int, int], device: str | torch.device = "cpu") -> MaskSampler:
    """The sampler for ``weights`` (None: the initial weights ``seed`` gives)."""
    generator, _ = _networks(config, encoding, shape[0], seed)
    if weights is not None:
        generator.load_state_dict(weights)
    return MaskSampler(generator.to(device), encoding, "pix2pix")


FAMILY = GeneratorFamily(config=build_config, train=train, load=load, fit_shape=fit_shape, needs_masks=True,
                         cost=cost)
