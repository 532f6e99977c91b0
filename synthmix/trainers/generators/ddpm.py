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
    ``attention`` per level (self-attention with ``head_channels`` per head; needs
    ``channels``), ``res_blocks`` per level. Left unset, the network is sized to the slice
    (``network``): levels of 16, 32, 64, 64 channels until the picture is 8 pixels across,
    self-attention at that lowest level only. ``schedule`` cosine (Nichol & Dhariwal) or
    linear (Ho et al.) over ``train_timesteps``; ``prediction`` epsilon or v (Salimans & Ho); ``sampling_steps`` DDIM
    steps per sample (each one UNet pass). ``steps`` optimiser steps of global ``batch_size``;
    ``ema_decay`` with the usual warm-up, min(decay, (1 + step) / (10 + step)).
    """

    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    channels: tuple[int, ...] | None = None
    attention: tuple[bool, ...] | None = None
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
        if self.channels is None:
            return [] if self.attention is None else [
                f"attention: {list(self.attention)} needs channels (one attention entry per level of channels); "
                "left unset, both are sized to the slice"]
        problems = []
        if not 1 <= len(self.channels) <= MAX_LEVELS:
            problems.append(f"channels: 1 to {MAX_LEVELS} levels, got {list(self.channels)}")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.channels):
            problems.append(f"channels: must be positive integers, got {list(self.channels)}")
        elif isinstance(self.norm_groups, int) and self.norm_groups > 0 and any(c % self.norm_groups for c in self.channels):
            problems.append(f"channels: each must be a multiple of norm_groups={self.norm_groups}, got {list(self.channels)}")
        attention = self.attention if self.attention is not None else _last_level_only(len(self.channels))
        if len(attention) != len(self.channels) or not all(isinstance(a, bool) for a in attention):
            problems.append(f"attention: one true/false per level of channels ({len(self.channels)}), "
                            f"got {list(attention)}")
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
    for name in ("channels", "attention"):  # None (an artifact's unset network) stays unset
        if values.get(name) is not None:
            values[name] = tuple(values[name]) if isinstance(values[name], (list, tuple)) else (values[name],)
    return DDPMConfig(**values)


def fit_shape(h: int, w: int) -> tuple[int, int]:
    """Each side padded up to a multiple of 8: the most any supported UNet (4 levels) halves."""
    return -(-h // MULTIPLE) * MULTIPLE, -(-w // MULTIPLE) * MULTIPLE


# The network a slice size gets when channels are unset: at 32x32 three levels (16, 32, 64) with
# attention at 8x8; at 64x64 a fourth level (64) takes attention down to 8x8 too, which trained
# faster per step than attention over 16x16 tokens and gave phantom-like 64x64 pairs
# (benchmarks/generator_acceptance.py, issue 14's report).
AUTO_CHANNELS = (16, 32, 64, 64)
AUTO_LOWEST = 8


def _last_level_only(levels: int) -> tuple[bool, ...]:
    return (False,) * (levels - 1) + (True,)


def network(config: DDPMConfig, shape: tuple[int, int]) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """(channels, attention) of the UNet for slices of ``shape``: the config's, or (unset)
    ``AUTO_CHANNELS`` levels until the shorter padded side is ``AUTO_LOWEST`` pixels (at most
    4 levels), with self-attention at the lowest level only."""
    channels = config.channels
    if channels is None:
        halvings = int(math.log2(max(min(fit_shape(*shape)) // AUTO_LOWEST, 1)))
        channels = AUTO_CHANNELS[:min(MAX_LEVELS, 1 + halvings)]
    attention = config.attention if config.attention is not None else _last_level_only(len(channels))
    return tuple(channels), tuple(attention)


# ---- cost model (one CPU core) ---------------------------------------------------------------------

# Seconds per sample, one torch thread, of a training step (forward + backward + Adam) and of one
# sampling pass (forward, no grad), per unit of the UNet's work (``_work``): its convolutions,
# its activations (group norm, SiLU: memory-bound) and its self-attention scores. Fitted by
# benchmarks/ddpm_cost.py on the shared 2-core development VM over 7 networks at 16x16 to 64x64
# (each within 7% for training, 14% for sampling above 16x16).
TRAIN_SECONDS = {"layer": 3.79e-4, "conv": 3.06e-9, "activation": 3.06e-8, "attention": 1.81e-9}
SAMPLE_SECONDS = {"layer": 5.46e-6, "conv": 5.8e-10, "activation": 3.07e-8, "attention": 5.35e-10}
# The flow's own sampling after training: quality figures for the trained and the untrained
# network (generator.quality.samples each, default 512) and the 32-sample grid.
FLOW_SAMPLES = 2 * 512 + 32


def _work(config: DDPMConfig, shape: tuple[int, int]) -> dict[str, float]:
    """Per-sample work of one UNet pass over ``shape``, per level: layer ~ res_blocks + 1 (the
    fixed cost of a layer's kernels, which dominates small pictures), conv ~ channels^2 x
    (res_blocks + 1) x pixels (the down and up paths' convolutions), activation ~ channels x
    (res_blocks + 1) x pixels, attention ~ pixels^2 x channels (scores and their weighted sum)."""
    h, w = fit_shape(*shape)
    channels, attention = network(config, shape)
    work = {"layer": 0.0, "conv": 0.0, "activation": 0.0, "attention": 0.0}
    for level, (ch, attends) in enumerate(zip(channels, attention)):
        pixels = h * w / 4 ** level
        work["layer"] += config.res_blocks + 1
        work["conv"] += ch * ch * (config.res_blocks + 1) * pixels
        work["activation"] += ch * (config.res_blocks + 1) * pixels
        work["attention"] += pixels * pixels * ch if attends else 0.0
    return work


def _seconds(per_unit: dict[str, float], work: dict[str, float]) -> float:
    return sum(per_unit[k] * work[k] for k in per_unit)


def sampling_seconds(config: DDPMConfig, shape: tuple[int, int], n: int) -> float:
    """CPU seconds to draw n samples: n x sampling_steps UNet passes of shape[0] x shape[1]."""
    return n * config.sampling_steps * _seconds(SAMPLE_SECONDS, _work(config, shape))


def cost(config: DDPMConfig, shape: tuple[int, int]) -> float:
    """CPU seconds of one generator training: the optimiser steps, then the flow's sampling for
    the quality figures and grid at the default ``generator.quality`` (``FLOW_SAMPLES``)."""
    train = config.steps * config.batch_size * _seconds(TRAIN_SECONDS, _work(config, shape))
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

def build_unet(config: DDPMConfig, channels: int, shape: tuple[int, int], seed: int) -> DiffusionModelUNet:
    """The UNet for pictures of ``shape`` (``network``) with the initial weights ``seed`` gives
    (global RNG left untouched)."""
    levels, attention = network(config, shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DiffusionModelUNet(spatial_dims=2, in_channels=channels, out_channels=channels,
                                  channels=levels, attention_levels=attention,
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
    module = build_unet(config, joint.shape[1], tuple(joint.shape[-2:]), session.seed).to(device)
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
    unet = build_unet(config, channels, tuple(shape), seed)
    if weights is not None:
        unet.load_state_dict(weights)
    return DiffusionSampler(unet, config, encoding, tuple(shape)).to(device).eval()


FAMILY = GeneratorFamily(config=build_config, train=train, load=load, fit_shape=fit_shape, cost=cost,
                         on_the_fly_problem=on_the_fly_problem)
