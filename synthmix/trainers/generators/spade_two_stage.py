"""``spade_two_stage``: 004's two-step generator. Stage 1 draws a label map from noise; stage 2,
SPADE (Park et al. 2019), draws the image for it. A synthetic pair is the stage-2 image with the
stage-1 label, so the family is unconditional from the outside (its sampler draws labels itself).

- **Stage 1** (``labels``): ``dcgan_wgangp``'s generator and critic on the label channels alone
  (one per class, or one for a binary label), trained with WGAN-GP on the subset's non-empty
  label maps only (004 discarded empty masks). Every ``select_every`` stage-1 steps rank 0
  scores it by the multi-scale SWD of ``select_samples`` label maps against the real non-empty
  ones and keeps the lowest (004 chose its PGAN snapshot so). The progressive GAN 004 used
  replaces it when ``pggan`` exists.
- **Between the stages**, once, at the end of stage 1: ``calibration_samples`` label maps of the
  chosen snapshot are decoded (argmax), cleaned up (``cleanup``: LABEL_CLEANUPS names), empty
  ones dropped, and the ``filter`` (``zscore_norm``: 004's z-score norm of each map against the
  real maps) scores them and the real maps alike. 004 picked its threshold "maximizing the
  fraction of synthetic images discarded while minimizing the fraction of real images" that
  would be: here the cut on the filter's score that maximises (synthetic share removed - real
  share removed) with at most ``max_real_drop`` of the real maps and ``max_synthetic_drop`` of the
  synthetic ones removed (``choose_threshold``): the filter removes outliers (004's removed
  0.6-1.9%); it does not rescue a failed stage 1.
  The sampler applies the same clean-up, empty-drop and cut to every draw, against up to
  ``reference_masks`` real non-empty maps stored with the weights.
- **Stage 2** (``images``): SPADE on the subset's real (label, image) pairs, as 004 ran it:
  spectral norm, hinge loss, a two-scale discriminator, feature matching with lambda 10, no VGG
  loss, no encoder (the image is a function of the label map).

One generator key, one family: the stage is ``session.state["stage"]``, stage 1 ends on a forced
checkpoint that holds the chosen snapshot and the threshold, so a run killed in stage 2 resumes
stage 2. ``generator.select`` (if not ``last``) scores the whole two-stage sampler; stage 1's own
snapshot is chosen by SWD as above.

What comes from where: the stage-2 networks and loss are in ``spade_networks`` (MONAI's
PatchDiscriminator, a SPADE generator and hinge written after Park et al.: see there); stage 1
reuses ``dcgan``'s networks and ``wgan.gradient_penalty``; filters and clean-ups are the
synthetic-data pipeline's ``SYNTHETIC_FILTERS`` / ``LABEL_CLEANUPS``, by name.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from synthmix.datasets.arrays import SliceSet
from synthmix.errors import DataError, StudyError
from synthmix.trainers.generators import GeneratorData, GeneratorFamily, dcgan
from synthmix.trainers.generators.conditional import build_options, check_options, translate, update
from synthmix.trainers.generators.encoding import JointEncoding, decode_labels, encode_labels, label_channels
from synthmix.trainers.generators.session import GeneratorSession
from synthmix.trainers.generators.spade_networks import SpadeGenerator, TwoScaleDiscriminator, hinge_discriminator
from synthmix.trainers.generators.wgan import gradient_penalty
from synthmix.trainers.synthetic import LABEL_CLEANUPS, SYNTHETIC_FILTERS, Reference, Samples

# ---- the between-stage steps: names in the synthetic-data pipeline's registries -----------------

LabelScore = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]
"""(labels (n, H, W), real labels (N, H, W), num_classes, seed) -> (n,) scores, higher = more real."""

LABEL_ONLY_CLEANUPS = ("fill_holes", "remove_small", "opening")


def _label_slices(labels: np.ndarray, num_classes: int) -> SliceSet:
    """Real label maps as a SliceSet for the pipeline's Reference; images are not stored with
    the weights, so label-only steps are all that may run between the stages."""
    n = len(labels)
    images = np.broadcast_to(np.zeros((1, 1, *labels.shape[1:]), np.float32), (n, 1, *labels.shape[1:]))
    return SliceSet(images, labels.astype(np.int64), np.array(["reference"] * n), np.arange(n),
                    {"reference": (1.0, 1.0, 1.0)}, num_classes)


def resolve_filter(name: str) -> LabelScore | None:
    """The synthetic filter called ``name`` as a LabelScore (None for "none"); StudyError if unknown."""
    if name == "none":
        return None
    if name not in SYNTHETIC_FILTERS:
        raise StudyError([f"filter: {name!r} is not a synthetic filter (known: {', '.join(SYNTHETIC_FILTERS.names())}"
                          ", or none)"], source="generator config")
    entry = SYNTHETIC_FILTERS.get(name)

    def score(labels: np.ndarray, real: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
        blank = np.zeros((len(labels), 1, *labels.shape[1:]), np.float32)
        result = entry.fn(Samples(blank, labels, {}), Reference(_label_slices(real, num_classes)), seed=seed)
        return np.asarray(result.score, np.float64)
    return score


def resolve_cleanups(names: tuple[str, ...]) -> list[Callable]:
    problems = [f"cleanup: {n!r} needs more than label maps; between the stages only {', '.join(LABEL_ONLY_CLEANUPS)}"
                for n in names if n not in LABEL_ONLY_CLEANUPS]
    if problems:
        raise StudyError(problems, source="generator config")
    return [LABEL_CLEANUPS.get(n) for n in names]


def choose_threshold(real: np.ndarray, synthetic: np.ndarray, max_real_drop: float,
                     max_synthetic_drop: float = 1.0) -> tuple[float, float, float]:
    """004's trade-off as a rule: the cut c (keep score >= c) maximising (share of synthetic
    removed - share of real removed) with at most ``max_real_drop`` of the real and
    ``max_synthetic_drop`` of the synthetic removed; ties
    take the lowest cut, and -inf (remove nothing) when nothing gains. Returns (cut, real share
    removed, synthetic share removed)."""
    cuts = np.concatenate([[-np.inf], np.unique(np.concatenate([real, synthetic]))])
    real_removed = np.searchsorted(np.sort(real), cuts, side="left") / max(1, len(real))
    synthetic_removed = np.searchsorted(np.sort(synthetic), cuts, side="left") / max(1, len(synthetic))
    allowed = (real_removed <= max_real_drop) & (synthetic_removed <= max_synthetic_drop)
    gain = np.where(allowed, synthetic_removed - real_removed, -np.inf)
    best = int(np.argmax(gain))
    return float(cuts[best]), float(real_removed[best]), float(synthetic_removed[best])


# ---- options -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageStageConfig:
    """Stage 2 (SPADE). SPADE's defaults are 64 generator and discriminator filters, 128 hidden
    SPADE channels, TTUR (generator lr 1e-4, discriminator 4e-4, Adam betas (0, 0.9)) and
    feature matching lambda 10; the filters default 4x narrower here for a CPU budget."""

    steps: int = 400
    batch_size: int = 8
    base_filters: int = 16
    disc_filters: int = 16
    hidden: int = 32
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.9)
    fm_lambda: float = 10.0

    def __post_init__(self) -> None:
        check_options(self, positive_ints=("steps", "batch_size", "base_filters", "disc_filters", "hidden"),
                      positive=("lr_g", "lr_d"), non_negative=("fm_lambda",), betas=("betas",),
                      source="generator config.images")


# Stage-1 options that the two-stage family sets itself.
_STAGE1_FIXED = {"skip_empty": "stage 1 trains on non-empty label maps only (004)",
                 "checkpoint_every": "set checkpoint_every at the top level", "amp": "not supported here"}


@dataclass(frozen=True)
class SpadeTwoStageConfig:
    """``labels``: stage 1's ``dcgan_wgangp`` options (steps, latent_dim, base_filters, lr, ...);
    ``images``: stage 2's (``ImageStageConfig``); the rest is stage-1 selection and the
    between-stage steps (see the module docstring). ``steps`` is both stages together."""

    labels: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    select_every: int = 50
    select_samples: int = 128
    cleanup: tuple[str, ...] = ()
    filter: str = "zscore_norm"
    max_real_drop: float = 0.02
    max_synthetic_drop: float = 0.5
    calibration_samples: int = 512
    reference_masks: int = 1024
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        problems = [f"labels.{k}: {why}" for k, why in _STAGE1_FIXED.items() if k in self.labels]
        problems += [f"{k}: must be in [0, 1), got {getattr(self, k)!r}" for k in ("max_real_drop", "max_synthetic_drop")
                     if not isinstance(getattr(self, k), (int, float)) or not 0 <= getattr(self, k) < 1]
        if not isinstance(self.filter, str):
            problems.append(f"filter: must be a filter name or none, got {self.filter!r}")
        check_options(self, positive_ints=("select_every", "select_samples", "calibration_samples",
                                           "reference_masks", "checkpoint_every"), problems=problems)
        self.label_stage, self.image_stage  # noqa: B018 - validates both stages' options now
        resolve_filter(self.filter)
        resolve_cleanups(tuple(self.cleanup))

    @property
    def label_stage(self) -> dcgan.DCGANConfig:
        return dcgan.build_config({**self.labels, "skip_empty": True})

    @property
    def image_stage(self) -> ImageStageConfig:
        return build_options(ImageStageConfig, self.images, family="spade_two_stage images",
                             source="generator config.images")

    @property
    def steps(self) -> int:
        return self.label_stage.steps + self.image_stage.steps


def build_config(d: dict) -> SpadeTwoStageConfig:
    return build_options(SpadeTwoStageConfig, d, family="spade_two_stage")


fit_shape = dcgan.fit_shape  # stage 1 is the DCGAN; SPADE takes the same power-of-two squares


def cost(config: SpadeTwoStageConfig, shape: tuple[int, int]) -> float:
    """Seconds on one CPU core: stage 1 as ``dcgan_wgangp`` plus stage 2 at ~24 s per million
    batch x pixel samples with 16 filters (measured: 0.79 s CPU per step of 8 at 64x64), growing
    with the square of the filters."""
    images = config.image_stage
    stage2 = images.steps * images.batch_size * shape[0] * shape[1] / 1e6 * 24.0 * (images.base_filters / 16) ** 2
    return dcgan.cost(config.label_stage, shape) + stage2


# ---- networks ------------------------------------------------------------------------------------

def _networks(config: SpadeTwoStageConfig, encoding: JointEncoding, size: int, seed: int) -> dict[str, nn.Module]:
    labels, images, k = config.label_stage, config.image_stage, encoding.num_classes
    shape = dict(image_channels=0, num_classes=k, size=size, base_filters=labels.base_filters, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        spade = SpadeGenerator(label_nc=label_channels(k), out_channels=encoding.image_channels, size=size,
                               base_filters=images.base_filters, hidden=images.hidden)
        torch.manual_seed(seed + 3)
        discriminator = TwoScaleDiscriminator(in_channels=encoding.channels, base_filters=images.disc_filters)
    return {"labels": dcgan.build_generator(latent_dim=labels.latent_dim, upsampling=labels.upsampling, **shape),
            "critic": dcgan.build_critic(**shape), "images": spade, "discriminator": discriminator}


def _split(weights: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}


@torch.no_grad()
def draw_labels(network: nn.Module, n: int, latent_dim: int, num_classes: int, noise: torch.Generator,
                 device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n label maps of a stage-1 network in eval mode: (labels, raw channels, latent norms)."""
    was_training = network.training
    network.eval()
    parts = []
    for start in range(0, n, 64):
        z = torch.randn(min(64, n - start), latent_dim, generator=noise)
        channels = network(z.to(device)).float()
        parts.append((decode_labels(channels, num_classes).cpu().numpy(), channels.cpu().numpy(), z.norm(dim=1).numpy()))
    network.train(was_training)
    return tuple(np.concatenate(p) for p in zip(*parts))


def _clean(labels: np.ndarray, channels: np.ndarray, extras: dict, cleanups: list, reference: SliceSet
           ) -> tuple[np.ndarray, dict, int]:
    """Clean-ups then the empty-map drop; returns (labels, extras, empty maps dropped)."""
    if cleanups:
        samples = Samples(np.zeros((len(labels), 1, *labels.shape[1:]), np.float32), labels,
                          {"label_channels": channels, **extras})
        for fn in cleanups:
            samples = fn(samples, Reference(reference))
        labels = samples.labels
        extras = {k: samples.extras[k] for k in extras}
    keep = labels.reshape(len(labels), -1).max(axis=1) > 0
    return labels[keep], {k: v[keep] for k, v in extras.items()}, int((~keep).sum())


class TwoStageSampler(nn.Module):
    """``sample(n, *, seed, device)``: stage-1 label maps, cleaned up, empty ones and those the
    filter cuts dropped (drawing more until n survive), then stage 2's images for them.
    ``last_counts`` records the last call's draws and removals."""

    MAX_DRAWS_PER_SAMPLE = 20

    def __init__(self, labels: nn.Module, images: nn.Module, encoding: JointEncoding, *, latent_dim: int,
                 cleanups: list, score: LabelScore | None, reference: np.ndarray, threshold: float):
        super().__init__()
        self.labels, self.images, self.encoding, self.latent_dim = labels, images, encoding, latent_dim
        self.cleanups, self.score, self.threshold = cleanups, score, threshold
        self.reference = reference
        self.last_counts: dict = {}

    def sample(self, n: int, *, seed: int, device: str | torch.device = "cpu", masks=None) -> Samples:
        if masks is not None:
            raise ValueError("spade_two_stage draws its own label maps (stage 1): it takes no masks")
        if n <= 0:
            raise ValueError(f"number of samples must be positive, got {n}")
        k, noise = self.encoding.num_classes, torch.Generator().manual_seed(int(seed))
        reference = _label_slices(self.reference, k) if self.cleanups else None
        kept, drawn, empty, cut = [], 0, 0, 0
        while sum(len(p[0]) for p in kept) < n and drawn < self.MAX_DRAWS_PER_SAMPLE * n:
            m = max(64, n - sum(len(p[0]) for p in kept))
            labels, channels, norms = draw_labels(self.labels.to(device), m, self.latent_dim, k, noise, device)
            drawn += m
            labels, extras, dropped = _clean(labels, channels, {"latent_norm": norms}, self.cleanups, reference)
            empty += dropped
            scores = self.score(labels, self.reference, k, int(seed)) if self.score and len(labels) else \
                np.zeros(len(labels))
            keep = scores >= self.threshold
            cut += int((~keep).sum())
            kept.append((labels[keep], extras["latent_norm"][keep], scores[keep]))
        labels, norms, scores = (np.concatenate(p)[:n] for p in zip(*kept))
        self.last_counts = {"drawn": drawn, "empty_removed": empty, "filter_removed": cut, "kept": len(labels)}
        if len(labels) < n:
            raise RuntimeError(f"spade_two_stage: of {drawn} stage-1 label maps only {len(labels)} survived "
                               f"(empty after clean-up: {empty}, cut by the filter: {cut}); {n} were asked for")
        self.images.eval()
        images = translate(self.images, labels, self.encoding, seed=seed, device=device)
        return Samples(images, labels.astype(np.int64), {"latent_norm": norms, "filter_score": scores})


# ---- training ------------------------------------------------------------------------------------

def _non_empty(real: SliceSet) -> np.ndarray:
    keep = real.labels.reshape(len(real), -1).max(axis=1) > 0
    if not keep.any():
        raise DataError("spade_two_stage: the training subset has no slice with a foreground label "
                        "(stage 1 learns non-empty label maps only)")
    return real.labels[keep]


def _reference(maps: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` of the real non-empty maps (seeded): the filter's reference."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(maps))[:count])
    return maps[idx].astype(np.uint8)


class _Training:
    """One run of both stages on one session (the loop state that the steps share)."""

    def __init__(self, config: SpadeTwoStageConfig, data: GeneratorData, encoding: JointEncoding,
                 session: GeneratorSession):
        self.config, self.encoding, self.session = config, encoding, session
        self.lab, self.img = config.label_stage, config.image_stage
        device, ctx, k = session.device, session.context, encoding.num_classes
        real = data.labelled
        self.maps = _non_empty(real)
        self.reference = _reference(self.maps, config.reference_masks, session.seed)
        self.label_channels = encode_labels(torch.from_numpy(self.maps), k).to(device)
        self.masks = encode_labels(torch.from_numpy(real.labels), k).to(device)
        self.images = encoding.encode_images(torch.from_numpy(real.images)).to(device)
        self.modules = _networks(config, encoding, real.images.shape[-1], session.seed)
        self.best = copy.deepcopy(self.modules["labels"])
        self.nets = {name: ctx.prepare_model(m.to(device)) for name, m in self.modules.items()}
        adam1 = dict(lr=self.lab.lr, betas=tuple(self.lab.betas))
        betas2 = tuple(self.img.betas)
        self.opts = {"labels": torch.optim.Adam(self.nets["labels"].parameters(), **adam1),
                     "critic": torch.optim.Adam(self.nets["critic"].parameters(), **adam1),
                     "images": torch.optim.Adam(self.nets["images"].parameters(), lr=self.img.lr_g, betas=betas2),
                     "discriminator": torch.optim.Adam(self.nets["discriminator"].parameters(), lr=self.img.lr_d,
                                                       betas=betas2)}
        session.resume(models={**self.nets, "labels_best": self.best.to(device)}, optimizers=self.opts)
        session.state.setdefault("stage", 1)

    # stage 1 ----------------------------------------------------------------------------------

    def label_step(self) -> dict:
        s, g, c = self.session, self.nets["labels"], self.nets["critic"]
        batch, latent = self.lab.batch_size, self.lab.latent_dim
        for _ in range(self.lab.n_critic):
            real = s.batch(self.label_channels, batch)
            z, alpha = s.randn(batch, latent), s.rand(batch, 1, 1, 1)
            with torch.no_grad():
                fake = g(z)
            s_real, s_fake, penalty = gradient_penalty(c, real, fake, alpha)
            wasserstein = s_real.mean() - s_fake.mean()
            critic_loss = -wasserstein + self.lab.gp_lambda * penalty
            update(self.opts["critic"], critic_loss)
        generator_loss = -c(g(s.randn(batch, latent))).mean()
        update(self.opts["labels"], generator_loss)
        return {"critic_loss": critic_loss.item(), "label_generator_loss": generator_loss.item(),
                "wasserstein": wasserstein.item()}

    def label_swd(self, network: nn.Module) -> float:
        """SWD x1e3 of ``select_samples`` label maps against as many real non-empty ones."""
        from synthmix.trainers import quality

        n, k, seed = self.config.select_samples, self.encoding.num_classes, self.session.seed
        fake, _, _ = draw_labels(network, n, self.lab.latent_dim, k, torch.Generator().manual_seed(seed + 11),
                                  self.session.device)
        real = self.maps[np.random.default_rng(seed + 11).choice(len(self.maps), size=min(n, len(self.maps)),
                                                                 replace=False)]
        blank = lambda x: np.zeros((len(x), 0, *x.shape[1:]), np.float32)  # noqa: E731 - label channels only
        return quality.sliced_wasserstein_distance(quality.joint_pictures(blank(real), real, k),
                                                   quality.joint_pictures(blank(fake), fake, k), seed=seed)

    def snapshot(self) -> None:
        """Rank 0: score stage 1 now and keep it if its SWD is the lowest so far."""
        state, current = self.session.state, self.modules["labels"]
        swd = self.label_swd(current)
        state["labels_last_swd"] = swd
        if "labels_best_swd" not in state or swd < state["labels_best_swd"]:
            self.best.load_state_dict(current.state_dict())
            state.update(labels_best_swd=swd, labels_best_step=self.session.step + 1)

    def between(self) -> None:
        """Rank 0, once: calibrate the filter's cut on the chosen stage-1 snapshot."""
        config, state, k = self.config, self.session.state, self.encoding.num_classes
        score, cleanups = resolve_filter(config.filter), resolve_cleanups(tuple(config.cleanup))
        labels, channels, norms = draw_labels(self.best, config.calibration_samples, self.lab.latent_dim, k,
                                               torch.Generator().manual_seed(self.session.seed + 13), self.session.device)
        labels, _, empty = _clean(labels, channels, {"latent_norm": norms}, cleanups, _label_slices(self.reference, k))
        state.update(calibration_drawn=config.calibration_samples, calibration_empty_removed=empty)
        if score is None or not len(labels):
            state.update(threshold=-math.inf, calibration_real_removed=0.0, calibration_filter_removed=0.0)
            return
        cut, real_share, synthetic_share = choose_threshold(score(self.reference, self.reference, k, self.session.seed),
                                                            score(labels, self.reference, k, self.session.seed),
                                                            config.max_real_drop, config.max_synthetic_drop)
        state.update(threshold=cut, calibration_real_removed=real_share, calibration_filter_removed=synthetic_share)

    # stage 2 ----------------------------------------------------------------------------------

    def image_step(self) -> dict:
        s, g, d = self.session, self.nets["images"], self.nets["discriminator"]
        rows = torch.from_numpy(s.rows(len(self.images), self.img.batch_size)).to(s.device)
        seg, image = self.masks[rows], self.images[rows]
        fake = g(seg)
        real_pair, fake_pair = torch.cat([seg, image], 1), torch.cat([seg, fake], 1)
        scales = d(torch.cat([real_pair, fake_pair.detach()]))
        d_loss = sum(hinge_discriminator(*out[-1].split(len(seg))) for out in scales) / len(scales)
        update(self.opts["discriminator"], d_loss)
        scales = d(torch.cat([real_pair, fake_pair]))
        g_adv = sum(-out[-1].split(len(seg))[1].mean() for out in scales) / len(scales)
        fm = sum(F.l1_loss(f.split(len(seg))[1], f.split(len(seg))[0].detach())
                 for out in scales for f in out[:-1]) / len(scales)
        g_loss = g_adv + self.img.fm_lambda * fm
        update(self.opts["images"], g_loss)
        return {"discriminator_loss": d_loss.item(), "image_generator_adversarial": g_adv.item(),
                "feature_matching": fm.item()}

    # both -------------------------------------------------------------------------------------

    def weights(self) -> dict:
        state = self.session.state
        return {**{f"labels.{k}": v for k, v in self.best.state_dict().items()},
                **{f"images.{k}": v for k, v in self.modules["images"].state_dict().items()},
                "between.reference": torch.from_numpy(self.reference),
                "between.threshold": torch.tensor(float(state.get("threshold", -math.inf)), dtype=torch.float64)}

    def run(self) -> dict:
        s, stage1 = self.session, self.lab.steps
        while s.step < self.config.steps:
            if s.state["stage"] == 1:
                losses, end = self.label_step(), s.step + 1 == stage1
                if s.rank == 0 and ((s.step + 1) % self.config.select_every == 0 or end):
                    self.snapshot()
                if end:
                    if s.rank == 0:
                        self.between()
                    s.state["stage"] = 2
            else:
                losses, end = self.image_step(), False
            s.end_step(losses, weights=self.weights, checkpoint=end)
        return self.weights()


def train(config: SpadeTwoStageConfig, data: GeneratorData, encoding: JointEncoding, session: GeneratorSession) -> dict:
    """Stage 1, the between-stage calibration, stage 2 (module docstring); all from
    ``data.labelled`` only (rule 3)."""
    return _Training(config, data, encoding, session).run()


def load(config: SpadeTwoStageConfig, encoding: JointEncoding, weights: dict | None, *, seed: int,
         shape: tuple[int, int], device: str | torch.device = "cpu") -> TwoStageSampler:
    """The sampler for ``weights``; None: both stages untrained, with no filter (an untrained
    stage 1 would have every map cut)."""
    nets = _networks(config, encoding, shape[0], seed)
    reference, threshold, score = np.zeros((0, *shape), np.uint8), -math.inf, None
    if weights is not None:
        nets["labels"].load_state_dict(_split(weights, "labels"))
        nets["images"].load_state_dict(_split(weights, "images"))
        reference = weights["between.reference"].numpy()
        threshold = float(weights["between.threshold"])
        score = resolve_filter(config.filter)
    return TwoStageSampler(nets["labels"].to(device), nets["images"].to(device), encoding,
                           latent_dim=config.label_stage.latent_dim, cleanups=resolve_cleanups(tuple(config.cleanup)),
                           score=score, reference=reference, threshold=threshold)


def steps_of(config: SpadeTwoStageConfig) -> dict[str, int]:
    """Both stages' steps, which a ``generator.budget`` scales together."""
    return {"labels.steps": config.label_stage.steps, "images.steps": config.image_stage.steps}


FAMILY = GeneratorFamily(config=build_config, train=train, load=load, fit_shape=fit_shape, cost=cost,
                         steps_of=steps_of)
