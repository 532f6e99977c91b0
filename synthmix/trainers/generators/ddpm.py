"""``ddpm``: a denoising diffusion model of the joint image+label picture.

The picture is the image channels (the shared intensity map, [-1, 1]) followed by label
channels in [-1, 1]: ``onehot`` (the shared ``JointEncoding`` layout: one channel per class,
one channel for a binary label) or ``bits`` (analog bits, Chen et al. 2022: ceil(log2 K)
channels, class k written as its binary digits mapped to -1/+1), for many classes. Both are a
codebook of +-1 codes, and a sample decodes to the class whose code correlates best with its
label channels (argmax; for one-hot the argmax of the channels, for one channel the sign);
the pool's shared clean-ups then take over. ``extras["label_channels"]`` holds the raw
channels for ``onehot`` and the per-class correlations (one channel per class, in [-1, 1])
for ``bits``, so the shared ``argmax``/``threshold`` clean-ups read either.

MONAI supplies the network (``DiffusionModelUNet``), the noise schedules and the training
forward (``DDPMScheduler``, ``DiffusionInferer``) and the sampler (``DDIMScheduler``, eta 0:
deterministic given the seeded starting noise, ``sampling_steps`` UNet passes per sample).
Written here: the options, the loop, and the EMA of the weights (by hand rather than
``torch.optim.swa_utils.AveragedModel``: the shared checkpoint unwraps ``.module`` as it does
for DDP and would drop AveragedModel's counter, restarting the average on resume). Sampling
and ``select`` use the EMA weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import DiffusionInferer
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from synthmix.errors import StudyError
from synthmix.trainers.generators import GeneratorData, GeneratorFamily
from synthmix.trainers.generators.encoding import JointEncoding, encode_labels
from synthmix.trainers.generators.session import GeneratorSession
from synthmix.trainers.synthetic import Samples

SCHEDULES = {"cosine": "cosine", "linear": "linear_beta"}  # YAML name -> MONAI NoiseSchedules name
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}
LABEL_ENCODINGS = ("onehot", "bits")
MAX_LEVELS = 4
MULTIPLE = 2 ** (MAX_LEVELS - 1)  # every supported UNet halves the picture at most this often


# ---- label codebook --------------------------------------------------------------------------------

def codebook(num_classes: int, kind: str) -> torch.Tensor:
    """(K, L) +-1 codes: the shared one-hot layout, or analog bits (class k's binary digits)."""
    if kind == "onehot":
        return encode_labels(torch.arange(num_classes).view(num_classes, 1, 1), num_classes)[:, :, 0, 0]
    bits = max(1, math.ceil(math.log2(num_classes)))
    digits = (torch.arange(num_classes)[:, None] >> torch.arange(bits - 1, -1, -1)[None]) & 1
    return digits.float() * 2 - 1


def encode_codes(labels: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(N, H, W) int -> (N, L, H, W)."""
    return codes[labels.long()].permute(0, 3, 1, 2).contiguous()


def class_scores(channels: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(N, L, H, W) -> (N, K, H, W): each class code's mean correlation with the channels."""
    return torch.einsum("nlhw,kl->nkhw", channels, codes.to(channels)) / codes.shape[1]


# ---- options -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DDPMConfig:
    """The family's options, defaulting to a network and budget a CPU core can afford.

    ``channels`` per UNet level (at most 4 levels; each a multiple of ``norm_groups``),
    ``attention`` per level (self-attention with ``head_channels`` per head), ``res_blocks``
    per level. ``schedule`` cosine (Nichol & Dhariwal) or linear (Ho et al.) over
    ``train_timesteps``; ``prediction`` epsilon or v (Salimans & Ho); ``sampling_steps`` DDIM
    steps per sample (each one UNet pass). ``steps`` optimiser steps of global ``batch_size``;
    ``ema_decay`` with the usual warm-up, min(decay, (1 + step) / (10 + step)).
    """

    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    channels: tuple[int, ...] = (16, 32, 64)
    attention: tuple[bool, ...] = (False, False, True)
    res_blocks: int = 1
    norm_groups: int = 8
    head_channels: int = 32
    schedule: str = "cosine"
    prediction: str = "v"
    train_timesteps: int = 1000
    sampling_steps: int = 50
    ema_decay: float = 0.999
    label_encoding: str = "onehot"
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    amp: bool = False

    def __post_init__(self) -> None:
        problems = _positive_ints(self, ("steps", "batch_size", "res_blocks", "norm_groups", "head_channels",
                                         "train_timesteps", "sampling_steps", "checkpoint_every"))
        problems += self._network_problems()
        for name, known in (("schedule", SCHEDULES), ("prediction", PREDICTIONS), ("label_encoding", LABEL_ENCODINGS)):
            if getattr(self, name) not in known:
                problems.append(f"{name}: must be one of {', '.join(known)}, got {getattr(self, name)!r}")
        if isinstance(self.sampling_steps, int) and isinstance(self.train_timesteps, int) \
                and self.sampling_steps > self.train_timesteps:
            problems.append(f"sampling_steps: {self.sampling_steps} exceeds train_timesteps={self.train_timesteps}")
        if not self.lr > 0:
            problems.append(f"lr: must be positive, got {self.lr!r}")
        if not 0 <= self.ema_decay < 1:
            problems.append(f"ema_decay: must be in [0, 1), got {self.ema_decay!r}")
        if not self.grad_clip > 0:
            problems.append(f"grad_clip: must be positive, got {self.grad_clip!r}")
        if not isinstance(self.amp, bool):
            problems.append(f"amp: must be true or false, got {self.amp!r}")
        if problems:
            raise StudyError(problems, source="generator config")

    def _network_problems(self) -> list[str]:
        problems = []
        if not 1 <= len(self.channels) <= MAX_LEVELS:
            problems.append(f"channels: 1 to {MAX_LEVELS} levels, got {list(self.channels)}")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.channels):
            problems.append(f"channels: must be positive integers, got {list(self.channels)}")
        elif isinstance(self.norm_groups, int) and self.norm_groups > 0 and any(c % self.norm_groups for c in self.channels):
            problems.append(f"channels: each must be a multiple of norm_groups={self.norm_groups}, got {list(self.channels)}")
        if len(self.attention) != len(self.channels) or not all(isinstance(a, bool) for a in self.attention):
            problems.append(f"attention: one true/false per level of channels ({len(self.channels)}), "
                            f"got {list(self.attention)}")
        return problems


def _positive_ints(config, names) -> list[str]:
    return [f"{n}: must be a positive integer, got {getattr(config, n)!r}" for n in names
            if isinstance(getattr(config, n), bool) or not isinstance(getattr(config, n), int) or getattr(config, n) < 1]


def build_config(d: dict) -> DDPMConfig:
    """A DDPMConfig from a (YAML) dict; unknown keys are rejected by name."""
    known = {f.name for f in dataclasses.fields(DDPMConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise StudyError([f"{k}: unknown ddpm option (known: {', '.join(sorted(known))})" for k in unknown],
                         source="generator config")
    values = dict(d)
    for name in ("channels", "attention"):
        if name in values:
            values[name] = tuple(values[name]) if isinstance(values[name], (list, tuple)) else (values[name],)
    return DDPMConfig(**values)


def fit_shape(h: int, w: int) -> tuple[int, int]:
    """Each side padded up to a multiple of 8: the most any supported UNet (4 levels) halves."""
    return -(-h // MULTIPLE) * MULTIPLE, -(-w // MULTIPLE) * MULTIPLE


# ---- cost model (one CPU core) ---------------------------------------------------------------------

# Seconds per million (batch x pixel) samples for the default network, one torch thread:
# a training step (forward + backward + Adam) and one sampling pass (forward, no grad).
# Measured by benchmarks/ddpm_cost.py on the shared 2-core development VM.
TRAIN_SECONDS_PER_MPIX = 14.0
SAMPLE_SECONDS_PER_MPIX = 5.0
# The flow's own sampling after training: quality figures for the trained and the untrained
# network (generator.quality.samples each, default 512) and the 32-sample grid.
FLOW_SAMPLES = 2 * 512 + 32


def _width(config: DDPMConfig) -> float:
    """Work per pixel relative to the default network: sum over levels of channels^2 x
    (res_blocks + 1) / 4^level (the convolutions dominate)."""
    def work(c: DDPMConfig) -> float:
        return sum(ch * ch * (c.res_blocks + 1) / 4 ** i for i, ch in enumerate(c.channels))
    return work(config) / work(DDPMConfig())


def sampling_seconds(config: DDPMConfig, shape: tuple[int, int], n: int) -> float:
    """CPU seconds to draw n samples: n x sampling_steps UNet passes of shape[0] x shape[1]."""
    h, w = fit_shape(*shape)
    return n * config.sampling_steps * h * w / 1e6 * SAMPLE_SECONDS_PER_MPIX * _width(config)


def cost(config: DDPMConfig, shape: tuple[int, int]) -> float:
    """CPU seconds of one generator training: the optimiser steps, then the flow's sampling for
    the quality figures and grid at the default ``generator.quality`` (``FLOW_SAMPLES``)."""
    h, w = fit_shape(*shape)
    train = config.steps * config.batch_size * h * w / 1e6 * TRAIN_SECONDS_PER_MPIX * _width(config)
    return train + sampling_seconds(config, shape, FLOW_SAMPLES)


def on_the_fly_problem(config: DDPMConfig, shape: tuple[int, int], draws: int, budget_seconds: float) -> str | None:
    """For ``plan``: why sampling ``draws`` pairs on the fly (mixing.source: on_the_fly) is
    refused, or None. Refused when the sampling alone would cost more than ``budget_seconds``
    (the caller passes the segmentation training's own estimate)."""
    seconds = sampling_seconds(config, shape, draws)
    if seconds <= budget_seconds:
        return None
    fits = int(budget_seconds / max(seconds / config.sampling_steps, 1e-9))
    advice = f"lower sampling_steps to at most {fits}, or " if fits >= 1 else ""
    return (f"sampling {draws} pairs on the fly costs about {seconds / 3600:.1f} CPU-hours per cell "
            f"({draws} x {config.sampling_steps} DDIM steps, one UNet pass each), more than the "
            f"segmentation training it feeds ({budget_seconds / 3600:.2f} CPU-hours); "
            f"{advice}use mixing.source: pool (the pool is sampled once per generator)")


# ---- networks ------------------------------------------------------------------------------------

def build_unet(config: DDPMConfig, channels: int, seed: int) -> DiffusionModelUNet:
    """The UNet with the initial weights ``seed`` gives (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DiffusionModelUNet(spatial_dims=2, in_channels=channels, out_channels=channels,
                                  channels=tuple(config.channels), attention_levels=tuple(config.attention),
                                  num_res_blocks=config.res_blocks, norm_num_groups=config.norm_groups,
                                  num_head_channels=config.head_channels)


def _scheduler_args(config: DDPMConfig) -> dict:
    return dict(num_train_timesteps=config.train_timesteps, schedule=SCHEDULES[config.schedule],
                prediction_type=PREDICTIONS[config.prediction])


class EMA:
    """An exponential moving average of a network's parameters (and buffers), in a frozen copy."""

    def __init__(self, network: nn.Module, decay: float):
        self.module, self.decay = copy.deepcopy(network).eval().requires_grad_(False), decay

    @torch.no_grad()
    def update(self, network: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema, live in zip(self.module.state_dict().values(), network.state_dict().values()):
            if ema.is_floating_point():
                ema.lerp_(live, 1 - decay)
            else:
                ema.copy_(live)


# ---- training --------------------------------------------------------------------------------------

def _joint(config: DDPMConfig, encoding: JointEncoding, data: GeneratorData) -> torch.Tensor:
    images, labels = torch.from_numpy(data.labelled.images), torch.from_numpy(data.labelled.labels)
    codes = codebook(encoding.num_classes, config.label_encoding)
    return torch.cat([encoding.encode_images(images), encode_codes(labels, codes)], 1)


def train(config: DDPMConfig, data: GeneratorData, encoding: JointEncoding, session: GeneratorSession) -> dict:
    """Denoising steps on batches drawn from ``data.labelled`` only (rule 3): noise and
    timesteps from the session's streams; returns the EMA weights."""
    ctx, device = session.context, session.device
    joint = _joint(config, encoding, data).to(device)
    module = build_unet(config, joint.shape[1], session.seed).to(device)
    ema = EMA(module, config.ema_decay)
    unet = ctx.prepare_model(module)
    opt = torch.optim.Adam(unet.parameters(), lr=config.lr)
    session.resume(models={"unet": unet, "ema": ema.module}, optimizers={"unet": opt})
    scheduler = DDPMScheduler(**_scheduler_args(config))
    inferer = DiffusionInferer(scheduler)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if config.amp and device.type == "cuda" \
        else contextlib.nullcontext
    batch, t_max = config.batch_size, config.train_timesteps
    while session.step < config.steps:
        x0 = session.batch(joint, batch)
        noise = session.randn(batch, *joint.shape[1:])
        t = (session.rand(batch) * t_max).long().clamp_(max=t_max - 1)
        with autocast():
            prediction = inferer(inputs=x0, diffusion_model=unet, noise=noise, timesteps=t).float()
        target = noise if config.prediction == "epsilon" else scheduler.get_velocity(x0, noise, t)
        loss = nn.functional.mse_loss(prediction, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        opt.step()
        ema.update(module, session.step)
        session.end_step({"loss": loss.item(), "grad_norm": float(grad_norm)}, weights=ema.module.state_dict)
    return ema.module.state_dict()


# ---- sampling --------------------------------------------------------------------------------------

class DiffusionSampler(nn.Module):
    """The family contract's sampler: DDIM from seeded Gaussian noise, decoded by the codebook."""

    def __init__(self, unet: DiffusionModelUNet, config: DDPMConfig, encoding: JointEncoding,
                 shape: tuple[int, int], batch_size: int = 32):
        super().__init__()
        self.unet, self.config, self.encoding, self.shape, self.batch_size = unet, config, encoding, shape, batch_size
        self.codes = codebook(encoding.num_classes, config.label_encoding)
        self.scheduler = DDIMScheduler(**_scheduler_args(config))
        self.scheduler.set_timesteps(config.sampling_steps)

    @torch.no_grad()
    def sample(self, n: int, *, seed: int, device: str | torch.device = "cpu", masks=None) -> Samples:
        if n <= 0:
            raise ValueError(f"number of samples must be positive, got {n}")
        if masks is not None:
            raise ValueError("the ddpm family is unconditional: it takes no masks")
        self.unet.eval().to(device)
        noise = torch.Generator().manual_seed(int(seed))
        channels = self.encoding.image_channels + self.codes.shape[1]
        inferer = DiffusionInferer(self.scheduler)
        parts = []
        for start in range(0, n, self.batch_size):
            x_t = torch.randn(min(self.batch_size, n - start), channels, *self.shape, generator=noise)
            x0 = inferer.sample(input_noise=x_t.to(device), diffusion_model=self.unet, verbose=False).float()
            parts.append(self._decode(x0.clamp(-1, 1)))
        return Samples.concat(parts)

    def _decode(self, x0: torch.Tensor) -> Samples:
        images, raw = self.encoding.split(x0)
        scores = class_scores(raw, self.codes)
        channels = raw if self.config.label_encoding == "onehot" else scores
        return Samples(images.cpu().numpy().astype(np.float32), scores.argmax(1).cpu().numpy().astype(np.int64),
                       {"label_channels": channels.cpu().numpy().astype(np.float32)})


def load(config: DDPMConfig, encoding: JointEncoding, weights: dict | None, *, seed: int,
         shape: tuple[int, int], device: str | torch.device = "cpu") -> DiffusionSampler:
    """The sampler for ``weights`` (None: the initial weights ``seed`` gives)."""
    channels = encoding.image_channels + codebook(encoding.num_classes, config.label_encoding).shape[1]
    unet = build_unet(config, channels, seed)
    if weights is not None:
        unet.load_state_dict(weights)
    return DiffusionSampler(unet, config, encoding, tuple(shape)).to(device).eval()


FAMILY = GeneratorFamily(config=build_config, train=train, load=load, fit_shape=fit_shape, cost=cost,
                         on_the_fly_problem=on_the_fly_problem)
