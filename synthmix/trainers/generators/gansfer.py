"""``gansfer``: GANsfer learning (Bowles et al., 001): a progressive GAN of image+label pairs that
also learns from unlabelled images, in three phases on one session.

- **Phase 1** (``phase1``: every ``pggan`` option): ``pggan.Growing`` on the labelled subset,
  4x4 up to the model size. With ``label_encoding: onehot`` it is exactly a ``pggan`` training
  with the same options and seed (same networks, same streams).
- **Phase 2** (``phase2_steps``): the generator's final ``frozen_layers`` layers (to_rgb and the
  convolutions before it, in the order ``Generator.layers`` gives) are fixed; a new image-only
  critic D_I (a ``pggan.Critic`` on the image channels) learns the study's unlabelled images
  against the generator's image channel, and the generator's other layers learn from D_I alone.
  For the first ``warmup_cycles`` generator steps D_I makes ``warmup_critic_steps`` updates per
  generator update (001: 100 for the first 5 cycles, "to allow D_I to catch up"), then
  ``n_critic``.
- **Between**: the EMA generator at the end of phase 2 is kept (the pool's phase-2 half) and
  draws ``self_teaching`` label maps (decoded, so as sharp as the real ones): "self-teaching".
- **Phase 3** (``phase3_steps``): a second new critic D_S judges label channels only; its real
  pictures are an equal mix (per sample, p = 0.5) of the subset's label maps and the self-teaching
  maps. D_I keeps training. The generator learns from D_I + D_S while its frozen layers are
  unfrozen one at a time, earliest first, every ``unfreeze_every`` steps (default: evenly over the
  phase), up to but not including the final layer, which stays fixed so the image and label
  channels stay coupled.
- **The pool** (``pool``): the sampler draws alternately from the phase-2 and the final (phase-3)
  EMA generator: 001 Table I's best was the two combined. ``pool: [3]`` or ``[2]`` keeps one.
- **Label encoding** (``label_encoding: intensity``, 001 section III-A): instead of one-hot
  channels, each structure's channel carries the image intensity inside the structure minus an
  estimated white-matter level, sign-flipped per structure to stay positive, scaled by its 99th
  percentile, 0 (-1 in the tanh range) outside. The white-matter level is estimated as the
  median intensity of class-0 pixels brighter than the lower quarter of the intensity range
  (tissue, not air). One departure: inside a structure the channel is at least ``floor`` (10% of
  the range) so that a structure as bright as white matter is not lost. Decoding binarises each
  channel at half the floor and takes the strongest; ``bowles_postprocess`` then cleans up
  (set it in ``generator.pool.cleanup``).

The phase (``phase``, the pggan phase keys, ``frozen``) is in ``session.state``; each phase ends
with a forced checkpoint, so a run killed in any phase resumes in that phase at its step. Every
network of every phase is built and checkpointed from the start (a fixed set).

001's defaults for its synthetic data, ``bowles_postprocess`` and the ``nearest_neighbour``
filter at the 75th percentile, are pool settings (``generator.pool``); the presets set them.

Written by hand on ``pggan``'s networks: no library has GANsfer learning.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from synthmix.errors import DataError, StudyError
from synthmix.trainers.generators import GeneratorData, GeneratorFamily, pggan
from synthmix.trainers.generators.encoding import JointEncoding, decode_labels, encode_labels, label_channels
from synthmix.trainers.generators.session import GeneratorSession
from synthmix.trainers.generators.wgan import gradient_penalty
from synthmix.trainers.synthetic import Samples

LABEL_ENCODINGS = ("onehot", "intensity")
POOL_PHASES = ((2, 3), (2,), (3,))


@dataclass(frozen=True)
class GANsferConfig:
    phase1: pggan.PGGANConfig = field(default_factory=pggan.PGGANConfig)
    phase2_steps: int = 200
    phase3_steps: int = 200
    frozen_layers: int = 3
    warmup_cycles: int = 5
    warmup_critic_steps: int = 100
    n_critic: int = 1
    unfreeze_every: int | None = None
    self_teaching: int | None = None
    pool: tuple[int, ...] = (2, 3)
    label_encoding: str = "onehot"
    floor: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        for name in ("phase2_steps", "phase3_steps", "frozen_layers", "n_critic", "warmup_critic_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name}: must be a positive integer, got {value!r}")
        if isinstance(self.warmup_cycles, bool) or not isinstance(self.warmup_cycles, int) or self.warmup_cycles < 0:
            problems.append(f"warmup_cycles: must be a non-negative integer, got {self.warmup_cycles!r}")
        for name in ("unfreeze_every", "self_teaching"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append(f"{name}: must be a positive integer or null (automatic), got {value!r}")
        if tuple(self.pool) not in POOL_PHASES:
            problems.append(f"pool: the phases whose generators the pool draws from, one of "
                            f"{', '.join(str(list(p)) for p in POOL_PHASES)}; got {list(self.pool)!r}")
        if self.label_encoding not in LABEL_ENCODINGS:
            problems.append(f"label_encoding: must be one of {', '.join(LABEL_ENCODINGS)}, got {self.label_encoding!r}")
        if not isinstance(self.floor, (int, float)) or not 0 < self.floor < 1:
            problems.append(f"floor: must be in (0, 1), got {self.floor!r}")
        if problems:
            raise StudyError(problems, source="generator config")

    # what the shared flow reads
    @property
    def steps(self) -> int:
        return self.phase1.steps + self.phase2_steps + self.phase3_steps

    @property
    def checkpoint_every(self) -> int:
        return self.phase1.checkpoint_every

    @property
    def unfreeze_period(self) -> int:
        """Phase-3 steps between two unfreezings (``frozen_layers - 1`` of them)."""
        return self.unfreeze_every or max(1, self.phase3_steps // self.frozen_layers)


def build_config(d: dict) -> GANsferConfig:
    """A GANsferConfig from a (YAML) dict; unknown keys are rejected by name (``phase1``'s
    through ``pggan.build_config``, named ``phase1.KEY``)."""
    d = dict(d)
    known = {f.name for f in dataclasses.fields(GANsferConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise StudyError([f"{k}: unknown gansfer option (known: {', '.join(sorted(known))})" for k in unknown],
                         source="generator config")
    if "phase1" in d:
        if not isinstance(d["phase1"], dict):
            raise StudyError([f"phase1: must be a mapping of pggan options, got {d['phase1']!r}"],
                             source="generator config")
        try:
            d["phase1"] = pggan.build_config(d["phase1"])
        except StudyError as err:
            raise StudyError([f"phase1.{p}" for p in err.problems], source="generator config") from None
    if "pool" in d:
        d["pool"] = tuple(d["pool"]) if isinstance(d["pool"], (list, tuple)) else d["pool"]
    return GANsferConfig(**d)


fit_shape = pggan.fit_shape


def cost(config: GANsferConfig, shape: tuple[int, int]) -> float:
    """Seconds on one CPU core: phase 1 as ``pggan.cost``; a phase-2/3 step as a pggan step at
    the model size (its critics see fewer channels, phase 3 has two), plus phase 2's warm-up."""
    size = fit_shape(*shape)[0]
    full = pggan.step_seconds(dataclasses.replace(config.phase1, n_critic=config.n_critic), size, pggan.levels(size))
    per_critic = pggan.step_seconds(dataclasses.replace(config.phase1, n_critic=1), size, pggan.levels(size)) / 1.5
    warmup = min(config.warmup_cycles, config.phase2_steps) * (config.warmup_critic_steps - config.n_critic) * per_critic
    return pggan.cost(config.phase1, shape) + config.phase2_steps * full + warmup + config.phase3_steps * 1.7 * full


# ---- label encoding --------------------------------------------------------------------------------

class LabelCodec:
    """Label maps <-> the generator's label channels: one-hot (the shared encoding) or 001's
    intensity-carrying channels (module docstring). ``values`` (white-matter level, per-structure
    signs and scales) travel with the weights as ``codec.values``."""

    def __init__(self, kind: str, num_classes: int, values: torch.Tensor | None = None, floor: float = 0.1):
        self.kind, self.num_classes, self.floor = kind, num_classes, float(floor)
        structures = num_classes - 1
        self.values = values if values is not None else torch.cat([torch.zeros(1), torch.ones(2 * structures)])

    @property
    def channels(self) -> int:
        return label_channels(self.num_classes) if self.kind == "onehot" else self.num_classes - 1

    @classmethod
    def fitted(cls, kind: str, num_classes: int, images: torch.Tensor, labels: torch.Tensor,
               floor: float = 0.1) -> "LabelCodec":
        if kind == "onehot":
            return cls(kind, num_classes, floor=floor)
        x = images[:, 0]
        tissue = (labels == 0) & (x > -0.5)
        wm = x[tissue].median() if tissue.any() else x[labels == 0].median()
        signs, scales = [], []
        for c in range(1, num_classes):
            inside = x[labels == c] - wm
            sign = 1.0 if inside.numel() == 0 or inside.mean() >= 0 else -1.0
            scale = torch.quantile((sign * inside).clamp(min=0), 0.99).item() if inside.numel() else 1.0
            signs.append(sign)
            scales.append(scale if scale > 1e-3 else 1.0)
        return cls(kind, num_classes, torch.tensor([float(wm), *signs, *scales]), floor=floor)

    def encode(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Image (tanh range, (N, C, H, W)) + labels (N, H, W) -> label channels in [-1, 1]."""
        if self.kind == "onehot":
            return encode_labels(labels, self.num_classes)
        k = self.num_classes - 1
        wm, signs, scales = self.values[0], self.values[1:1 + k], self.values[1 + k:]
        x = images[:, :1].float()
        signs, scales = signs.view(1, k, 1, 1).to(x), scales.view(1, k, 1, 1).to(x)
        carried = ((x - wm.to(x)) * signs / scales).clamp(0, 1)
        inside = nn.functional.one_hot(labels.long(), self.num_classes).permute(0, 3, 1, 2)[:, 1:].to(x)
        value = inside * (self.floor + (1 - self.floor) * carried)
        return value * 2 - 1

    def scores(self, channels: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) per-class scores whose argmax is the decoded label."""
        if self.kind == "onehot":
            if self.num_classes == 2:
                return torch.cat([torch.zeros_like(channels), channels], 1)
            return channels
        background = torch.full_like(channels[:, :1], -1 + self.floor)  # half the floor, in [-1, 1]
        return torch.cat([background, channels], 1)

    def decode(self, channels: torch.Tensor) -> torch.Tensor:
        if self.kind == "onehot":
            return decode_labels(channels, self.num_classes)
        return self.scores(channels).argmax(1)


# ---- training --------------------------------------------------------------------------------------

class _Store(nn.Module):
    """A tensor that checkpoints with the models (the self-teaching label maps)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("value", torch.zeros(shape))


def _critic(config: pggan.PGGANConfig, channels: int, size: int, seed: int) -> pggan.Critic:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return pggan.Critic(in_channels=channels, size=size, base_filters=config.base_filters,
                            max_filters=config.max_filters, mbstd_group=config.mbstd_group)


class _Training:
    def __init__(self, config: GANsferConfig, data: GeneratorData, encoding: JointEncoding, session: GeneratorSession):
        s, ctx, p1 = session, session.context, config.phase1
        self.config, self.encoding, self.session = config, encoding, s
        real = data.labelled
        if data.unlabelled is None or not len(data.unlabelled):
            raise DataError("gansfer learns from unlabelled images, but none were given")
        self.size = size = real.images.shape[-1]
        pggan.check_budget(p1, size)
        images = encoding.encode_images(torch.from_numpy(real.images))
        labels = torch.from_numpy(real.labels)
        self.codec = LabelCodec.fitted(config.label_encoding, encoding.num_classes, images, labels, config.floor)
        self.label_pictures = self.codec.encode(images, labels).to(s.device)
        joint = torch.cat([images.to(s.device), self.label_pictures], 1)
        self.ic = encoding.image_channels
        generator, critic = pggan._networks(p1, encoding, size, s.seed, channels=joint.shape[1])
        self.growing = pggan.Growing(p1, joint, s, generator, critic)
        self.unlabelled = encoding.encode_images(torch.from_numpy(data.unlabelled)).to(s.device)
        group = pggan._largest_divisor(s.local_batch(p1.batch_size), p1.mbstd_group)
        image_critic, label_critic = _critic(p1, self.ic, size, s.seed + 2), _critic(p1, self.codec.channels, size, s.seed + 3)
        for c in (image_critic, label_critic):
            c.mbstd.group_size = group
        self.image_critic = ctx.prepare_model(image_critic.to(s.device))
        self.label_critic = ctx.prepare_model(label_critic.to(s.device))
        self.phase2 = copy.deepcopy(self.growing.ema.module).requires_grad_(False)
        n_teach = config.self_teaching or len(real)
        self.teaching = _Store((n_teach, self.codec.channels, size, size)).to(s.device)
        adam = pggan.adam_options(p1)
        self.opts = {**self.growing.opts,
                     "generator_late": torch.optim.Adam(self.growing.generator.parameters(), **adam),
                     "image_critic": torch.optim.Adam(self.image_critic.parameters(), **adam),
                     "label_critic": torch.optim.Adam(self.label_critic.parameters(), **adam)}
        models = {**self.growing.models, "image_critic": self.image_critic, "label_critic": self.label_critic,
                  "phase2_generator": self.phase2, "self_teaching": self.teaching}
        s.resume(models=models, optimizers=self.opts)
        self.growing.start()
        s.state.setdefault("phase", 1)
        s.state.setdefault("frozen", 0)

    # ---- phases 2 and 3 ---------------------------------------------------------------------

    def _frozen(self, phase: int, into: int) -> int:
        c = self.config
        if phase == 2:
            return c.frozen_layers
        return c.frozen_layers - min(into // c.unfreeze_period, c.frozen_layers - 1)

    def _critic_step(self, critic, real_rows, fake_channels) -> tuple[torch.Tensor, float]:
        s, p1 = self.session, self.config.phase1
        batch, last = p1.batch_size, self.growing.generator_module.last
        real = real_rows()
        z, mix = s.randn(batch, p1.latent_dim), s.rand(batch, 1, 1, 1)
        with torch.no_grad():
            fake = fake_channels(self.growing.generator(z, last, 1.0, self.growing.noise(last)))
        s_real, s_fake, penalty = gradient_penalty(critic, real, fake, mix)
        wasserstein = s_real.mean() - s_fake.mean()
        return -wasserstein + p1.gp_lambda * penalty + p1.drift * s_real.pow(2).mean(), wasserstein.item()

    def _image_rows(self) -> torch.Tensor:
        return self.session.batch(self.unlabelled, self.config.phase1.batch_size)

    def _label_rows(self) -> torch.Tensor:
        s, batch = self.session, self.config.phase1.batch_size
        labelled, taught = s.batch(self.label_pictures, batch), s.batch(self.teaching.value, batch)
        return torch.where(s.rand(batch, 1, 1, 1) < 0.5, labelled, taught)  # an equal mix, per sample

    def late_step(self, phase: int) -> dict:
        s, config, p1 = self.session, self.config, self.config.phase1
        into = s.step - p1.steps - (config.phase2_steps if phase == 3 else 0)
        frozen = self._frozen(phase, into)
        s.state["frozen"] = frozen
        n = config.warmup_critic_steps if phase == 2 and into < config.warmup_cycles else config.n_critic
        losses = {}
        for _ in range(n):
            loss, w = self._critic_step(self.image_critic, self._image_rows, lambda x: x[:, :self.ic])
            pggan._update(self.opts["image_critic"], loss)
        losses.update(image_critic_loss=loss.item(), image_wasserstein=w)
        if phase == 3:
            for _ in range(config.n_critic):
                loss, w = self._critic_step(self.label_critic, self._label_rows, lambda x: x[:, self.ic:])
                pggan._update(self.opts["label_critic"], loss)
            losses.update(label_critic_loss=loss.item(), label_wasserstein=w)
        g = self.growing
        last = g.generator_module.last
        fake = g.generator(s.randn(p1.batch_size, p1.latent_dim), last, 1.0, g.noise(last))
        generator_loss = -self.image_critic(fake[:, :self.ic]).mean()
        if phase == 3:
            generator_loss = generator_loss - self.label_critic(fake[:, self.ic:]).mean()
        opt = self.opts["generator_late"]
        opt.zero_grad(set_to_none=True)
        generator_loss.backward()
        for layer in g.generator_module.layers()[len(g.generator_module.layers()) - frozen:]:
            for p in layer.parameters():
                p.grad = None  # fixed: Adam skips a parameter without a gradient
        opt.step()
        g.ema.update(g.generator_module, s.step)
        losses["generator_loss"] = generator_loss.item()
        return losses

    def end_phase2(self) -> None:
        """Keep the phase-2 EMA generator and draw the self-teaching label maps from it (every
        rank the same: a seeded CPU stream)."""
        self.phase2.load_state_dict(self.growing.ema.module.state_dict())
        stream = torch.Generator().manual_seed(self.session.seed + 17)
        n, device, last = len(self.teaching.value), self.session.device, self.phase2.last
        parts = []
        with torch.no_grad():
            for start in range(0, n, 64):
                m = min(64, n - start)
                z = torch.randn(m, self.phase2.latent_dim, generator=stream)
                noise = self.phase2.draw_noise(m, last, functools.partial(torch.randn, generator=stream))
                x = self.phase2(z.to(device), last, 1.0, pggan.to_device(noise, device)).clamp(-1, 1)
                labels = self.codec.decode(x[:, self.ic:])
                parts.append(self.codec.encode(x[:, :self.ic], labels))
        self.teaching.value.copy_(torch.cat(parts))

    # ---- the run ----------------------------------------------------------------------------

    def weights(self) -> dict:
        state = self.session.state
        out = {f"current.{k}": v for k, v in self.growing.weights().items()}
        if state["phase"] == 3:
            out.update({f"phase2.{k}": v for k, v in self.phase2.state_dict().items()})
        out["codec.values"] = self.codec.values.clone()
        out["gansfer.phase"] = torch.tensor(int(state["phase"]))
        return out

    def run(self) -> dict:
        s, c = self.session, self.config
        end1, end2 = c.phase1.steps, c.phase1.steps + c.phase2_steps
        while s.step < c.steps:
            phase = s.state["phase"]
            losses = self.growing.step() if phase == 1 else self.late_step(phase)
            boundary = s.step + 1 in (end1, end2)
            if s.step + 1 == end1:
                s.state["phase"] = 2
            elif s.step + 1 == end2:
                self.end_phase2()
                s.state["phase"] = 3
            s.end_step(losses, weights=self.weights, checkpoint=boundary)
        return self.weights()


def train(config: GANsferConfig, data: GeneratorData, encoding: JointEncoding, session: GeneratorSession) -> dict:
    """Phases 1-3 (module docstring): labelled pairs from ``data.labelled`` only, images from
    ``data.unlabelled`` (rule 3)."""
    return _Training(config, data, encoding, session).run()


# ---- sampling --------------------------------------------------------------------------------------

class GANsferSampler(nn.Module):
    """Draws sample i from ``generators[i % len(generators)]`` (the pool's phases, ``phases``
    names them), latents and noise maps from a CPU stream seeded with ``seed``; decodes with the
    family's codec. Extras: per-class label scores, the latent norm, and each sample's phase."""

    def __init__(self, generators: list[pggan.Generator], phases: list[int], *, level: int, alpha: float,
                 codec: LabelCodec, encoding: JointEncoding, batch_size: int = 64):
        super().__init__()
        self.generators, self.phases = nn.ModuleList(generators), phases
        self.level, self.alpha, self.codec, self.encoding, self.batch_size = level, alpha, codec, encoding, batch_size

    @torch.no_grad()
    def sample(self, n: int, *, seed: int, device: str | torch.device = "cpu", masks=None) -> Samples:
        if n <= 0:
            raise ValueError(f"number of samples must be positive, got {n}")
        if masks is not None:
            raise ValueError("the gansfer family is unconditional: it takes no masks")
        first = self.generators[0]
        stream = torch.Generator().manual_seed(int(seed))
        parts = []
        for start in range(0, n, self.batch_size):
            m = min(self.batch_size, n - start)
            z = torch.randn(m, first.latent_dim, generator=stream)
            noise = first.draw_noise(m, self.level, functools.partial(torch.randn, generator=stream))
            which = (torch.arange(start, start + m) % len(self.generators))
            x = None
            for i, g in enumerate(self.generators):
                rows = (which == i).nonzero().squeeze(1)
                if not len(rows):
                    continue
                out = g.eval().to(device)(z[rows].to(device), self.level, self.alpha,
                                          None if noise is None else [n[rows].to(device) for n in noise])
                if x is None:
                    x = torch.empty((m, *out.shape[1:]), dtype=out.dtype, device=out.device)
                x[rows.to(out.device)] = out
            if x.shape[-1] < first.size:
                x = nn.functional.interpolate(x, size=(first.size, first.size), mode="nearest")
            x = x.clamp(-1, 1)
            images, channels = self.encoding.split(x)
            parts.append(Samples(images.cpu().numpy().astype(np.float32),
                                 self.codec.decode(channels).cpu().numpy().astype(np.int64),
                                 {"label_channels": self.codec.scores(channels).float().cpu().numpy(),
                                  "latent_norm": z.norm(dim=1).numpy(),
                                  "phase": np.asarray(self.phases)[which.numpy()]}))
        return Samples.concat(parts)


def load(config: GANsferConfig, encoding: JointEncoding, weights: dict | None, *, seed: int,
         shape: tuple[int, int], device: str | torch.device = "cpu") -> GANsferSampler:
    """The sampler for ``weights`` (None: phase 1's initial generator, one-hot labels)."""
    codec = LabelCodec(config.label_encoding, encoding.num_classes, floor=config.floor)
    if weights is not None:
        codec = LabelCodec(config.label_encoding, encoding.num_classes, weights["codec.values"], floor=config.floor)
    channels = encoding.image_channels + codec.channels

    def network() -> pggan.Generator:
        return pggan._networks(config.phase1, encoding, shape[0], seed, channels=channels)[0]

    if weights is None:
        g = network()
        return GANsferSampler([g], [1], level=g.last, alpha=1.0, codec=codec, encoding=encoding).to(device).eval()
    current = {k[len("current."):]: v for k, v in weights.items() if k.startswith("current.")}
    level, alpha = int(current.pop("phase.level")), float(current.pop("phase.alpha"))
    final = network()
    final.load_state_dict(current)
    generators, phases = [final], [int(weights["gansfer.phase"])]
    phase2 = {k[len("phase2."):]: v for k, v in weights.items() if k.startswith("phase2.")}
    if phase2 and 2 in config.pool:  # the run has ended phase 2
        early = network()
        early.load_state_dict(phase2)
        generators, phases = ([early, final], [2, 3]) if 3 in config.pool else ([early], [2])
    return GANsferSampler(generators, phases, level=level, alpha=alpha, codec=codec,
                          encoding=encoding).to(device).eval()


def steps_of(config: GANsferConfig) -> dict[str, int]:
    """The three phases' steps, which a ``generator.budget`` scales together."""
    return {"phase1.steps": config.phase1.steps, "phase2_steps": config.phase2_steps,
            "phase3_steps": config.phase3_steps}


FAMILY = GeneratorFamily(config=build_config, train=train, load=load, fit_shape=fit_shape, cost=cost,
                         uses_unlabelled=True, steps_of=steps_of,
                         check_steps=lambda config, shape: pggan.check_steps(config.phase1, shape))
