"""Mask-safe discriminator augmentation for the GAN families: ``generator.config.augment``.

DiffAugment (Zhao et al. 2020) augments real and fake pictures alike, with differentiable ops,
just before the critic; ADA (Karras et al. 2020) applies each op with a probability ``p`` that
it tunes from how sure the critic is of the real data. A joint image+label picture adds a trap
(data-efficient-gans #93, stylegan3 PR #186): colour ops must not touch the label channels,
and geometric ops must move image and labels together and leave a *valid* label where they
open a gap. Here:

- geometric ops (integer ``translation`` by up to 1/8 of the side, ``cutout`` of a square
  half the side) act on all channels with the same per-sample parameters. They run in a
  space where the background encodes as 0: the picture minus its background encoding
  (image channels: -1, the intensity map's low end, which is where ``ShapeFit`` pads the
  background; label channels: the encoding of class 0, e.g. (+1, -1, -1) one-hot). Gaps are
  zero there, so after adding the background back a shifted-in border or a cut-out square is
  air labelled background: exact label codes, and an image that agrees with them. (Filling
  with 0 in the [-1, 1] encoding, as DiffAugment does, would write a grey image over an
  invalid label (0, 0, 0).)
- ``colour`` (brightness, saturation, contrast, as DiffAugment) acts on the image channels
  only; the label channels pass through untouched.
- each op is applied per sample with probability ``p``: fixed (``probability``, 1 = DiffAugment)
  or, with ``adaptive``, tuned as ADA does: every ``interval`` critic steps,
  r = E[sign(critic(real))] over the real pictures seen; ``p`` moves up when r > ``target``,
  down otherwise, by (images seen) / ``speed`` (ADA's ada_kimg, 500k images on a GPU, is
  far beyond a CPU budget). A Wasserstein critic has no fixed zero (its loss ignores a
  constant shift), so its families pass the fake scores too and the sign is taken against
  their batch mean: r is then how often a real picture outscores the average fake.

The ops and the ADA rule are written here (a few lines each) rather than taken from kornia
or the reference repositories: neither is a dependency, and neither knows a background
encoding or image-only channels. Random numbers come from the caller (the session's
rank-sliced stream), and ``p`` with its running sums lives in ``session.state``, so augmented
runs are reproducible and resume exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from synthmix.errors import StudyError
from synthmix.trainers.generators.encoding import JointEncoding, encode_labels

POLICY = ("translation", "cutout", "colour")
TRANSLATION_RATIO = 0.125  # largest shift, as a fraction of the side (DiffAugment's)
CUTOUT_RATIO = 0.5  # side of the cut-out square, as a fraction of the side (DiffAugment's)
SOURCE = "generator config.augment"


@dataclass(frozen=True)
class AugmentConfig:
    """``generator.config.augment``: ops (applied in this order), fixed or adaptive probability."""

    policy: tuple[str, ...] = POLICY
    adaptive: bool = False
    target: float = 0.6
    probability: float = 1.0  # the fixed p; an adaptive p starts at 0, as ADA's
    interval: int = 4  # critic steps between adjustments of an adaptive p
    speed: int = 2000  # real images over which an adaptive p may travel from 0 to 1

    def __post_init__(self) -> None:
        problems = [f"policy[{i}]: unknown op {op!r}; known: {', '.join(POLICY)}"
                    for i, op in enumerate(self.policy) if op not in POLICY]
        if len(set(self.policy)) != len(self.policy):
            problems.append(f"policy: lists an op twice: {list(self.policy)}")
        if not isinstance(self.adaptive, bool):
            problems.append(f"adaptive: must be true or false, got {self.adaptive!r}")
        if not (isinstance(self.target, (int, float)) and -1 < self.target < 1):
            problems.append(f"target: must be a number in (-1, 1) (a mean sign of critic scores), got {self.target!r}")
        if not (isinstance(self.probability, (int, float)) and 0 <= self.probability <= 1):
            problems.append(f"probability: must be in [0, 1], got {self.probability!r}")
        for name in ("interval", "speed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name}: must be a positive integer, got {value!r}")
        if problems:
            raise StudyError([f"augment.{p}" for p in problems], source=SOURCE)


def build_augment_config(d: dict | None) -> AugmentConfig | None:
    """An AugmentConfig from YAML (a family's config builder calls it for its ``augment`` key);
    None or ``false`` means no augmentation. Unknown keys are rejected by name."""
    if d is None or d is False:
        return None
    if isinstance(d, AugmentConfig):
        return d
    if not isinstance(d, dict):
        raise StudyError([f"augment: must be a mapping (policy, adaptive, target, ...), got {d!r}"], source=SOURCE)
    known = {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise StudyError([f"augment.{k}: unknown key; known: {', '.join(sorted(known))}" for k in unknown],
                         source=SOURCE)
    values = dict(d)
    if "policy" in values:
        policy = values["policy"]
        values["policy"] = (policy,) if isinstance(policy, str) else tuple(policy)
    return AugmentConfig(**values)


def background_fill(encoding: JointEncoding) -> torch.Tensor:
    """(C,) the joint encoding of a background pixel: -1 per image channel (the low end of the
    intensity map), the code of class 0 per label channel."""
    labels = encode_labels(torch.zeros(1, 1, 1, dtype=torch.long), encoding.num_classes).flatten()
    return torch.cat([torch.full((encoding.image_channels,), -1.0), labels])


Uniform = Callable[..., torch.Tensor]  # uniform(*shape) -> (local batch, *shape) in [0, 1)


class Augmenter:
    """Augment joint pictures (N, C, H, W) before the critic; see the module docstring.

    Args:
        config: the options.
        fill: (C,) background encoding (``background_fill``).
        image_channels: the first channels, the only ones colour ops touch.
        state: where p and the adaptive sums live (the session's ``state``: checkpointed).
        uniform: ``uniform(*shape)`` -> a (local batch, *shape) tensor of uniforms on the
            pictures' device; every call of the augmenter draws the same shapes whatever p is.
    """

    def __init__(self, config: AugmentConfig, *, fill: torch.Tensor, image_channels: int, state: dict,
                 uniform: Uniform):
        self.config, self.image_channels, self.state, self.uniform = config, image_channels, state, uniform
        self.fill = fill.view(1, -1, 1, 1)
        state.setdefault("augment_p", 0.0 if config.adaptive else float(config.probability))
        if config.adaptive:
            state.setdefault("augment_signs", 0.0)
            state.setdefault("augment_seen", 0.0)
            state.setdefault("augment_calls", 0)

    @classmethod
    def for_session(cls, config: AugmentConfig | None, encoding: JointEncoding, session,
                    global_batch: int) -> "Augmenter | NoAugment":
        """The augmenter of a family's training run (``NoAugment`` without ``augment``); build
        it after ``session.resume`` so that it reads the resumed p."""
        if config is None:
            return NoAugment()
        return cls(config, fill=background_fill(encoding).to(session.device), image_channels=encoding.image_channels,
                   state=session.state, uniform=lambda *shape: session.rand(global_batch, *shape))

    @property
    def p(self) -> float:
        return float(self.state["augment_p"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fill = self.fill.to(x.device, x.dtype)
        out = x - fill  # background is 0 here: gaps stay valid labels
        for op in self.config.policy:
            apply = (self.uniform(1)[:, 0] < self.p).to(x.dtype)  # per sample, probability p
            if op == "translation":
                out = _translate(out, self.uniform(2), apply)
            elif op == "cutout":
                out = _cutout(out, self.uniform(2), apply)
            else:
                image = _colour(out[:, :self.image_channels] + fill[:, :self.image_channels], self.uniform(3), apply)
                out = torch.cat([image - fill[:, :self.image_channels], out[:, self.image_channels:]], 1)
        return out + fill

    @torch.no_grad()
    def update(self, real_scores: torch.Tensor, fake_scores: torch.Tensor | None = None) -> None:
        """After a critic step: accumulate sign(critic(real)) (against the fakes' mean score for
        a Wasserstein critic) and, every ``interval`` calls, move an adaptive p (ADA)."""
        if not self.config.adaptive:
            return
        centre = fake_scores.float().mean() if fake_scores is not None else 0.0
        stats = torch.stack([torch.sign(real_scores.float() - centre).sum(),
                             torch.tensor(float(len(real_scores)), device=real_scores.device)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)  # every rank moves p alike
        self.state["augment_signs"] += float(stats[0])
        self.state["augment_seen"] += float(stats[1])
        self.state["augment_calls"] += 1
        if self.state["augment_calls"] % self.config.interval:
            return
        seen = self.state["augment_seen"]
        r = self.state["augment_signs"] / seen
        step = (1.0 if r > self.config.target else -1.0) * seen / self.config.speed
        self.state["augment_p"] = min(1.0, max(0.0, self.p + step))
        self.state["augment_r"] = r
        self.state["augment_signs"], self.state["augment_seen"] = 0.0, 0.0


class NoAugment:
    """What a family calls when ``augment`` is off: pictures pass unchanged, nothing is drawn."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def update(self, real_scores: torch.Tensor, fake_scores: torch.Tensor | None = None) -> None:
        return None


# ---- the ops (pictures with background 0; ``apply`` (N,) in {0, 1}) --------------------------------

def _translate(x: torch.Tensor, u: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Integer shift of up to TRANSLATION_RATIO of each side, zeros shifted in (gather from a
    zero-padded copy: differentiable)."""
    n, _, h, w = x.shape
    py, px = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = ((u[:, 0] * (2 * py + 1)).long().clamp(max=2 * py) - py) * apply.long()
    dx = ((u[:, 1] * (2 * px + 1)).long().clamp(max=2 * px) - px) * apply.long()
    padded = torch.nn.functional.pad(x, (px, px, py, py))
    rows = (torch.arange(h, device=x.device)[None, :, None] + (py - dy)[:, None, None])  # (N, H, 1)
    cols = (torch.arange(w, device=x.device)[None, None, :] + (px - dx)[:, None, None])  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, u: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Zero a square of CUTOUT_RATIO of the side centred anywhere in the picture (clipped)."""
    _, _, h, w = x.shape
    sh, sw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy, cx = (u[:, 0] * h).long(), (u[:, 1] * w).long()
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    inside_y = (ys[None] >= (cy - sh // 2)[:, None]) & (ys[None] < (cy - sh // 2 + sh)[:, None])  # (N, H)
    inside_x = (xs[None] >= (cx - sw // 2)[:, None]) & (xs[None] < (cx - sw // 2 + sw)[:, None])  # (N, W)
    cut = (inside_y[:, :, None] & inside_x[:, None, :]).to(x.dtype) * apply[:, None, None]
    return x * (1 - cut)[:, None]


def _colour(image: torch.Tensor, u: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """DiffAugment's colour ops on image channels in [-1, 1]: brightness + U(-0.5, 0.5),
    saturation x U(0, 2) around the channel mean (a no-op for one channel), contrast
    x U(0.5, 1.5) around the picture mean."""
    a = apply[:, None, None, None]
    image = image + a * (u[:, 0, None, None, None] - 0.5)
    mean = image.mean(dim=1, keepdim=True)
    image = mean + (image - mean) * (1 + a * (u[:, 1, None, None, None] * 2 - 1))
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (image - mean) * (1 + a * (u[:, 2, None, None, None] - 0.5))
