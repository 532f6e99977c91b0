"""Channel encoding shared by every generator family: image + label map <-> one joint tensor.

A joint picture holds the image channels first, mapped per channel to [-1, 1], then the label
channels: one per class (one-hot scaled to [-1, 1]) for more than two classes, or a single
channel in [-1, 1] for a binary label, which decoding thresholds at 0 as 003 does.

Also here: ``IntensityMap`` (the data's normalised intensities <-> [-1, 1]) and ``ShapeFit``
(pad a slice to the size a family's architecture needs, crop samples back), so that no family
writes either again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def label_channels(num_classes: int) -> int:
    """One channel per class for K > 2, a single channel for a binary label."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return 1 if num_classes == 2 else num_classes


def encode_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) int -> (N, L, H, W) float in [-1, 1]."""
    if num_classes == 2:
        return labels.unsqueeze(1).float() * 2 - 1
    onehot = nn.functional.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()
    return onehot * 2 - 1


def decode_labels(channels: torch.Tensor, num_classes: int, threshold: float = 0.0) -> torch.Tensor:
    """(N, L, H, W) float -> (N, H, W) int64: threshold (binary) or argmax over classes."""
    if num_classes == 2:
        return (channels[:, 0] > threshold).long()
    return channels.argmax(dim=1)


class IntensityMap:
    """Per-channel affine map between the data's normalised space and the tanh range [-1, 1].

    A tanh output cannot reach z-scored values beyond +-1, so generators work on the training
    images rescaled channel-wise from [low, high] to [-1, 1] and clipped there; samples are
    mapped back, so callers see the same intensity space as the SliceSet they gave. ``fit``
    takes low/high as robust percentiles (0.5, 99.5) rather than min/max: a few very bright
    voxels would otherwise squeeze all tissue into a small part of the range.
    """

    PERCENTILES = (0.5, 99.5)

    def __init__(self, low: list[float], high: list[float]):
        self.low = [float(v) for v in low]
        self.high = [float(h) if h > lo else float(lo) + 1.0 for lo, h in zip(self.low, high)]

    @classmethod
    def fit(cls, images: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> "IntensityMap":
        low, high = np.percentile(images, percentiles, axis=(0, 2, 3))
        return cls(np.atleast_1d(low).tolist(), np.atleast_1d(high).tolist())

    @classmethod
    def from_dict(cls, d: dict) -> "IntensityMap":
        return cls(d["low"], d["high"])

    def _affine(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = torch.tensor(self.low, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        high = torch.tensor(self.high, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return low, high

    def to_tanh(self, images: torch.Tensor) -> torch.Tensor:
        low, high = self._affine(images)
        return ((images - low) / (high - low) * 2 - 1).clamp(-1, 1)

    def from_tanh(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self._affine(x)
        return (x + 1) / 2 * (high - low) + low

    def to_dict(self) -> dict:
        return {"kind": "per-channel percentiles of the training images mapped to [-1, 1], clipped",
                "low": self.low, "high": self.high}


@dataclass(frozen=True)
class JointEncoding:
    """How one family's joint pictures are laid out: image channels, classes, intensity map."""

    image_channels: int
    num_classes: int
    intensity: IntensityMap

    @property
    def label_channels(self) -> int:
        return label_channels(self.num_classes)

    @property
    def channels(self) -> int:
        return self.image_channels + self.label_channels

    def encode(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Image (N, C, H, W) + label (N, H, W) -> joint picture (N, C + L, H, W) in [-1, 1]."""
        return torch.cat([self.intensity.to_tanh(images.float()), encode_labels(labels, self.num_classes)], 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.intensity.to_tanh(images.float())

    def split(self, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A joint picture -> (images in the data's intensity space, raw label channels)."""
        return self.intensity.from_tanh(joint[:, : self.image_channels].float()), joint[:, self.image_channels:]

    def decode_labels(self, label_channels: torch.Tensor) -> torch.Tensor:
        return decode_labels(label_channels, self.num_classes)

    def to_dict(self) -> dict:
        return {"image_channels": self.image_channels, "num_classes": self.num_classes,
                "normalisation": self.intensity.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "JointEncoding":
        return cls(int(d["image_channels"]), int(d["num_classes"]), IntensityMap.from_dict(d["normalisation"]))


@dataclass(frozen=True)
class ShapeFit:
    """Pad real slices (H, W) centred to the (H', W') a family's architecture needs, and crop
    its samples back, so a pool always matches the real slices. Padded image pixels take the
    per-channel background level (the 0.5th percentile), padded label pixels class 0."""

    data: tuple[int, int]
    model: tuple[int, int]

    @property
    def offsets(self) -> tuple[int, int]:
        return (self.model[0] - self.data[0]) // 2, (self.model[1] - self.data[1]) // 2

    def pad(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.data == self.model:
            return images, labels
        (dy, dx), (h, w) = self.offsets, self.data
        background = np.percentile(images, 0.5, axis=(0, 2, 3)).astype(np.float32)
        out = np.empty((len(images), images.shape[1], *self.model), np.float32)
        out[:] = background[None, :, None, None]
        out[:, :, dy:dy + h, dx:dx + w] = images
        lab = np.zeros((len(labels), *self.model), np.int64)
        lab[:, dy:dy + h, dx:dx + w] = labels
        return out, lab

    def crop(self, array: np.ndarray) -> np.ndarray:
        """Crop the last two axes of ``array`` back to the data's shape."""
        if self.data == self.model:
            return array
        (dy, dx), (h, w) = self.offsets, self.data
        return array[..., dy:dy + h, dx:dx + w]

    def to_dict(self) -> dict:
        return {"data": list(self.data), "model": list(self.model)}

    @classmethod
    def from_dict(cls, d: dict) -> "ShapeFit":
        return cls(tuple(d["data"]), tuple(d["model"]))
