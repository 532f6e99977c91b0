"""The arrays a trainer receives: 2D slices of real subjects, and pools of synthetic pairs.

These two types are the contract between the data layer and the trainers. Everything before
them (NIfTI decoding, reorientation, slicing, caching, normalisation) is the data layer's;
everything after them is the trainers'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class SliceSet:
    """2D slices of some subjects, normalised and ready for a network.

    Attributes:
        images: (N, C, H, W) float32, modalities as channels, normalised.
        labels: (N, H, W) int64 class indices in [0, num_classes).
        subject_ids: (N,) str, the subject each slice comes from.
        positions: (N,) int, the slice's index along the slicing axis of its volume.
        spacing: subject id -> voxel spacing in mm as (slice axis, rows, cols).
        num_classes: number of classes, background (0) included.
    """

    images: np.ndarray
    labels: np.ndarray
    subject_ids: np.ndarray
    positions: np.ndarray
    spacing: dict[str, tuple[float, float, float]]
    num_classes: int

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {self.images.shape}")
        if self.labels.shape != (n, *self.images.shape[2:]):
            raise ValueError(f"labels {self.labels.shape} do not match images {self.images.shape}")
        if len(self.subject_ids) != n or len(self.positions) != n:
            raise ValueError("subject_ids and positions need one entry per slice")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def subjects(self) -> list[str]:
        """Subject ids in order of first appearance."""
        return list(dict.fromkeys(self.subject_ids.tolist()))

    def volumes(self) -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple[float, float, float]]]:
        """Yield (subject id, image (D, C, H, W), label (D, H, W), spacing) per subject,
        slices in volume order: what 3D metrics are computed on."""
        for sid in self.subjects:
            idx = np.flatnonzero(self.subject_ids == sid)
            idx = idx[np.argsort(self.positions[idx], kind="stable")]
            yield sid, self.images[idx], self.labels[idx], self.spacing[sid]


@dataclass(frozen=True)
class SyntheticPool:
    """Image+label pairs sampled from a generator, in the same layout as SliceSet.

    Attributes:
        images: (N, C, H, W) float32, in the generator's (normalised) intensity space.
        labels: (N, H, W) int64 class indices.
        meta: free-form provenance (generator key, checkpoint step, filter applied).
    """

    images: np.ndarray
    labels: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: str | Path) -> None:
        """Write as .npz (images, labels, meta as JSON); atomic."""
        import json
        import os

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        np.savez_compressed(tmp, images=self.images, labels=self.labels,
                            meta=np.array(json.dumps(self.meta)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "SyntheticPool":
        import json

        with np.load(path, allow_pickle=False) as z:
            return cls(images=z["images"], labels=z["labels"].astype(np.int64),
                       meta=json.loads(str(z["meta"])))
