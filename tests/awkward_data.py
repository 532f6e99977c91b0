"""An awkward NIfTI dataset, as users bring them: odd non-square in-plane sizes that differ
between subjects, anisotropic voxels (0.9 x 1.2 x 3 mm), an oblique affine stored in LPS
order (so reorientation flips two axes), two modalities, and a ``group`` column with one
patient scanned twice. Not a test module: imported by the tests.

Each volume holds an ellipse (class 1) with a small blob inside (class 2), placed at a fixed
world position so a region of interest fitted on some subjects covers the others.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SPACING = (0.9, 1.2, 3.0)
SLICES = 6
# (subject, group, in-plane size X x Y): p03 is scanned twice, at two sizes.
SUBJECTS = [("sub-01", "p01", (45, 37)), ("sub-02", "p02", (51, 40)), ("sub-03a", "p03", (45, 37)),
            ("sub-03b", "p03", (51, 40)), ("sub-04", "p04", (47, 39)), ("sub-05", "p05", (51, 40)),
            ("sub-06", "p06", (45, 37)), ("sub-07", "p07", (49, 41))]
TWICE = ("sub-03a", "sub-03b")


def oblique_affine(shape: tuple[int, int, int], degrees: float = 8.0) -> np.ndarray:
    """LPS voxel axes rotated about z, voxel centre of the volume at the world origin."""
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    linear = rot @ np.diag([-SPACING[0], -SPACING[1], SPACING[2]])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.asarray(shape) - 1) / 2)
    return affine


def subject_volumes(shape: tuple[int, int, int], affine: np.ndarray, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two modalities and the label map, drawn in world coordinates."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    x, y = world[..., 0] - rng.uniform(-2, 2), world[..., 1] - rng.uniform(-2, 2)
    label = np.zeros(shape, np.uint8)
    label[(x / 10.0) ** 2 + (y / 8.0) ** 2 <= 1] = 1
    label[((x - 2.5) / 3.5) ** 2 + (y / 3.0) ** 2 <= 1] = 2
    label[..., 0] = 0  # an empty slice at one end of every volume
    t1 = np.choose(label, [10.0, 100.0, 40.0]) + rng.normal(0, 6, shape)
    t2 = np.choose(label, [5.0, 50.0, 120.0]) + rng.normal(0, 6, shape)
    return t1.astype(np.float32), t2.astype(np.float32), label


def write_awkward_dataset(out: str | Path) -> Path:
    """Write the dataset under ``out``; returns its manifest.csv."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    rows = []
    for i, (sid, group, (nx, ny)) in enumerate(SUBJECTS):
        shape = (nx, ny, SLICES)
        affine = oblique_affine(shape)
        t1, t2, label = subject_volumes(shape, affine, seed=i)
        for name, data in (("t1", t1), ("t2", t2)):
            nib.save(nib.Nifti1Image(data, affine), out / "images" / f"{sid}_{name}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), out / "labels" / f"{sid}.nii.gz")
        rows.append({"subject_id": sid, "image_t1": f"images/{sid}_t1.nii.gz",
                     "image_t2": f"images/{sid}_t2.nii.gz", "label": f"labels/{sid}.nii.gz", "group": group})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def awkward_study_yaml(manifest: str | Path, *, preprocess: str, pool_size: int = 128, synthetic: str = "[0, 1.0]",
                       segmenter: str = "") -> str:
    """A tiny study over the awkward dataset; ``preprocess`` is the flow mapping's body."""
    return f"""\
name: awkward
seed: 0
dataset:
  manifest: {manifest}
  preprocess: {{{preprocess}}}
split: {{test: 0.25, val: 0.25, repeats: 1}}
factors:
  real_fraction: [1.0]
  synthetic: {synthetic}
  architecture: [unet]
segmenter:
  network: {{levels: 2, base_filters: 4, doubling: true, batch_norm: true}}
  batch_size: 4
  max_steps: 10
  val_every: 5
  checkpoint_every: 5
  {segmenter}
generator:
  name: dcgan_wgangp
  config: {{base_filters: 8, latent_dim: 16, batch_size: 8, steps: 4, checkpoint_every: 2}}
  pool: {{size: {pool_size}}}
  quality: {{samples: 16, reference_steps: 5}}
mixing: {{policy: additive, source: pool}}
resources: {{workers: 1, cpus_per_worker: 1, max_failures: 0}}
"""
