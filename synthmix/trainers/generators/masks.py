"""Label maps for conditional families (``needs_masks``): where the masks they are given come from.

002 turns every real mask of the training subset into one synthetic image; ``MaskSource``
hands out the subset's masks in a seeded order, each once per pass, and with ``transform``
label-preserving flips, integer shifts and scalings (nearest-neighbour, so labels stay labels)
so new masks appear. Scaling uses scipy.ndimage.zoom, cropped or zero-padded back to size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage

from synthmix.errors import StudyError


@dataclass(frozen=True)
class MaskSpec:
    """``generator.masks``: ``transform`` turns on random flips (``flip``), shifts up to
    ``shift_px`` pixels and scalings by up to +-``scale``."""

    transform: bool = False
    flip: bool = True
    shift_px: int = 4
    scale: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        for name in ("transform", "flip"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.shift_px, bool) or not isinstance(self.shift_px, int) or self.shift_px < 0:
            problems.append(f"shift_px: must be a non-negative integer, got {self.shift_px!r}")
        if not isinstance(self.scale, (int, float)) or not 0 <= self.scale < 1:
            problems.append(f"scale: must be in [0, 1), got {self.scale!r}")
        if problems:
            raise StudyError(problems, source="generator.masks")


def build_mask_spec(d: dict | None) -> MaskSpec:
    d = dict(d or {})
    known = set(MaskSpec.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise StudyError([f"{k}: unknown key; known: {', '.join(sorted(known))}" for k in unknown],
                         source="generator.masks")
    return MaskSpec(**d)


def _scaled(mask: np.ndarray, factor: float) -> np.ndarray:
    h, w = mask.shape
    zoomed = scipy.ndimage.zoom(mask, factor, order=0)
    out = np.zeros_like(mask)
    zh, zw = zoomed.shape
    # centre crop or centre pad back to (h, w)
    sy, sx = max(0, (zh - h) // 2), max(0, (zw - w) // 2)
    dy, dx = max(0, (h - zh) // 2), max(0, (w - zw) // 2)
    ch, cw = min(h, zh), min(w, zw)
    out[dy:dy + ch, dx:dx + cw] = zoomed[sy:sy + ch, sx:sx + cw]
    return out


def transform_mask(mask: np.ndarray, spec: MaskSpec, rng: np.random.Generator) -> np.ndarray:
    """One random label-preserving transform of a (H, W) label map."""
    out = mask
    if spec.flip and rng.random() < 0.5:
        out = out[:, ::-1]
    if spec.scale:
        out = _scaled(out, float(rng.uniform(1 - spec.scale, 1 + spec.scale)))
    if spec.shift_px:
        dy, dx = rng.integers(-spec.shift_px, spec.shift_px + 1, size=2)
        out = scipy.ndimage.shift(out, (dy, dx), order=0, mode="constant", cval=0)
    return np.ascontiguousarray(out, dtype=np.int64)


class MaskSource:
    """``take(n, seed)``: n masks from ``labels`` (N, H, W), each used once per pass in a
    seeded order, transformed when the spec says so."""

    def __init__(self, labels: np.ndarray, spec: MaskSpec = MaskSpec()):
        if len(labels) == 0:
            raise ValueError("no masks to condition on: the training subset has no slices")
        self.labels, self.spec = labels, spec

    def take(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        passes = -(-n // len(self.labels))
        order = np.concatenate([rng.permutation(len(self.labels)) for _ in range(passes)])[:n]
        masks = self.labels[order]
        if self.spec.transform:
            masks = np.stack([transform_mask(m, self.spec, rng) for m in masks])
        return masks
