"""Placeholder until the synthetic-data pipeline lands: the Samples type only."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Samples(NamedTuple):
    images: np.ndarray
    labels: np.ndarray
    extras: dict

    def take(self, index) -> "Samples":
        return Samples(self.images[index], self.labels[index], {k: v[index] for k, v in self.extras.items()})

    @staticmethod
    def concat(parts) -> "Samples":
        parts = list(parts)
        keys = set.intersection(*(set(p.extras) for p in parts)) if parts else set()
        return Samples(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                       {k: np.concatenate([p.extras[k] for p in parts]) for k in keys})
