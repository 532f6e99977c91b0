"""Hand-built image+label slices with a known structure, for generator and pipeline tests."""

from __future__ import annotations

import numpy as np

from synthmix.datasets.arrays import SliceSet


def ellipse_slices(subjects: list[str], *, per_subject: int = 4, size: int = 32, num_classes: int = 3,
                   seed: int = 0, offset: float = 0.0) -> SliceSet:
    """Bright ring (class 1) around a brighter core (class 2) on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:size, :size] + 0.5) / size - 0.5
    images, labels, sids, positions = [], [], [], []
    for sid in subjects:
        for p in range(per_subject):
            a, b = rng.uniform(0.25, 0.4, 2)
            r = rng.uniform(0.08, 0.15)
            lab = ((xx / a) ** 2 + (yy / b) ** 2 < 1).astype(np.int64) + ((xx ** 2 + yy ** 2) < r * r)
            lab = np.minimum(lab, num_classes - 1)
            img = np.choose(lab, [-0.8, 0.3, 0.9][:num_classes]) + rng.normal(0, 0.05, lab.shape) + offset
            images.append(img[None].astype(np.float32))
            labels.append(lab)
            sids.append(sid)
            positions.append(p)
    return SliceSet(np.stack(images), np.stack(labels), np.array(sids), np.array(positions),
                    {s: (1.0, 1.0, 1.0) for s in subjects}, num_classes)
