"""Standard (non-GAN) data augmentation applied to minibatches on the tensor's own device.

One random spatial transform per sample (horizontal flip, rotation, translation, elastic
deformation) is applied identically to the image (bilinear) and to its label (nearest neighbour,
so labels stay integer classes), then a random intensity scale and shift to the image only.

One entry is offline instead: ``traditional`` (002) transforms every real training slice once
into a second dataset of the same size before training (``trainers.offline_augmentation``).

Named combinations (``augmentation:`` in a study) are registry entries; each is
``build(**params) -> Augment`` with its own defaults, any Augment field overridable. Defaults
follow 003 Table I, which gives stddevs for 256x256 images: 0.05 intensity shift and scale,
10 px translation, 10 px elastic displacement per control point. Pixel amounts are scaled by
``width / reference_size`` (reference 256), so ``standard`` on a 64x64 phantom moves 2.5 px;
``reference_size=None`` reads them as absolute pixels. 000 gives no rotation range; ``rotate``
draws uniformly in +-15 degrees.

Written with ``torch.nn.functional.grid_sample`` rather than MONAI's dictionary transforms
because those work per sample on the CPU with global random state; here a whole batch is
transformed in one call, on GPU when the batch is there, from an explicit torch.Generator.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from synthmix.registry import Registry
from synthmix.trainers.offline_augmentation import build_traditional


@dataclass(frozen=True)
class Augment:
    """A random augmentation; every amount 0 means that part is off.

    Attributes:
        flip_prob: probability of a horizontal (left-right) flip.
        rotate_deg: rotation angle drawn uniformly in [-rotate_deg, rotate_deg].
        translate_std_px: stddev of the shift along each axis, in pixels at reference_size.
        elastic_std_px: stddev of control-point displacements, in pixels at reference_size.
        elastic_points: control points per image side (cubic interpolation between them).
        intensity_shift_std: stddev of an additive shift around 0 (image intensity units).
        intensity_scale_std: stddev of a multiplicative scale around 1.
        reference_size: image width the pixel amounts are given for; None = absolute pixels.
    """

    flip_prob: float = 0.0
    rotate_deg: float = 0.0
    translate_std_px: float = 0.0
    elastic_std_px: float = 0.0
    elastic_points: int = 8
    intensity_shift_std: float = 0.0
    intensity_scale_std: float = 0.0
    reference_size: int | None = 256

    def __post_init__(self) -> None:
        for f in ("flip_prob", "rotate_deg", "translate_std_px", "elastic_std_px",
                  "intensity_shift_std", "intensity_scale_std"):
            if getattr(self, f) < 0:
                raise ValueError(f"augmentation {f} must be >= 0, got {getattr(self, f)}")
        if self.flip_prob > 1:
            raise ValueError(f"augmentation flip_prob must be <= 1, got {self.flip_prob}")
        if self.elastic_points < 2:
            raise ValueError(f"augmentation elastic_points must be >= 2, got {self.elastic_points}")

    @property
    def spatial(self) -> bool:
        return bool(self.flip_prob or self.rotate_deg or self.translate_std_px or self.elastic_std_px)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment images (B, C, H, W) float and labels (B, H, W) integer alike."""
        if self.spatial:
            grid = self._sampling_grid(images.shape, generator).to(images.device, images.dtype)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                                   align_corners=False)
            moved = F.grid_sample(labels[:, None].to(images.dtype), grid, mode="nearest",
                                  padding_mode="border", align_corners=False)
            labels = moved[:, 0].round().to(labels.dtype)
        if self.intensity_shift_std or self.intensity_scale_std:
            b = images.shape[0]
            scale = 1 + self.intensity_scale_std * _randn(generator, b)
            shift = self.intensity_shift_std * _randn(generator, b)
            images = images * scale.to(images)[:, None, None, None] + shift.to(images)[:, None, None, None]
        return images, labels

    def _sampling_grid(self, shape: torch.Size, g: torch.Generator) -> torch.Tensor:
        """(B, H, W, 2) normalised input coordinates for each output pixel."""
        b, _, h, w = shape
        px = w / self.reference_size if self.reference_size else 1.0  # pixel amounts -> this size
        angle = math.radians(self.rotate_deg) * (2 * _rand(g, b) - 1)
        flip = torch.where(_rand(g, b) < self.flip_prob, -1.0, 1.0)
        shift = self.translate_std_px * px * _randn(g, b, 2)
        # Input position q = R @ diag(flip, 1) @ p + shift, p in centred pixel units, written
        # in grid_sample's normalised coordinates (x in [-1, 1] spans the width, y the height).
        cos, sin = torch.cos(angle), torch.sin(angle)
        half = torch.tensor([w / 2, h / 2])
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = cos * flip
        theta[:, 0, 1] = -sin * half[1] / half[0]
        theta[:, 1, 0] = sin * flip * half[0] / half[1]
        theta[:, 1, 1] = cos
        theta[:, :, 2] = shift / half
        grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
        if self.elastic_std_px:
            k = self.elastic_points
            coarse = self.elastic_std_px * px * _randn(g, b, 2, k, k)
            field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
            grid = grid + (field / half[:, None, None]).permute(0, 2, 3, 1)
        return grid


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g, device=g.device).cpu()


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, device=g.device).cpu()


AugmentFactory = Callable[..., Augment]
AUGMENTATIONS: Registry[AugmentFactory] = Registry("augmentation")

# 003 Table I (bold row): intensity shift 0.05, scale 0.05, translation 10 px, elastic 10 px.
_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "flip": dict(flip_prob=0.5),
    "rotate": dict(rotate_deg=15.0),
    "translate": dict(translate_std_px=10.0),
    "intensity": dict(intensity_shift_std=0.05, intensity_scale_std=0.05),
    "elastic": dict(elastic_std_px=10.0),
    "standard": dict(intensity_shift_std=0.05, intensity_scale_std=0.05,
                     translate_std_px=10.0, elastic_std_px=10.0),
}

AUGMENT_FIELDS = tuple(f.name for f in dataclasses.fields(Augment))


def _preset(defaults: dict[str, Any]) -> AugmentFactory:
    def build(**params: Any) -> Augment:
        unknown = [k for k in params if k not in AUGMENT_FIELDS]
        if unknown:
            raise ValueError(f"unknown augmentation parameter(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(AUGMENT_FIELDS)}")
        return Augment(**{**defaults, **params})
    return build


for _name, _defaults in _PRESETS.items():
    AUGMENTATIONS.add(_name, _preset(_defaults))

# 002's offline mode: every real training slice transformed once into a second dataset of the
# same size (see trainers.offline_augmentation); its per-batch hook does nothing.
AUGMENTATIONS.add("traditional", build_traditional)


def build_augmentation(name: str, params: dict[str, Any] | None = None) -> Augment:
    """The named combination with ``params`` overriding its defaults."""
    return AUGMENTATIONS.get(name)(**(params or {}))
