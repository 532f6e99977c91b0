"""A trained generator on disk: the folder a generator run leaves, and how to use it.

Files of a complete artifact:

- ``generator.pt``: family name, weights, config, image shape, num_classes, intensity
  normalisation, final step (a dict; the family's ``load`` rebuilds the network from it);
- ``pool.npz``: a SyntheticPool of ``pool_size`` samples (``SyntheticPool.load`` reads it);
- ``quality.json``: SWD and nearest-neighbour distances, trained and untrained (quality.py);
- ``samples.png``: a grid of samples, label colour-coded over the image;
- ``training_subjects.json``: the sorted subject ids the generator was trained on (rule 3).

The folder is written under a temporary name and renamed when finished, so a folder that
holds all five files is a finished artifact.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from synthmix.datasets.arrays import SyntheticPool
from synthmix.errors import SynthmixError

GENERATOR_FILE = "generator.pt"
POOL_FILE = "pool.npz"
QUALITY_FILE = "quality.json"
SAMPLES_FILE = "samples.png"
SUBJECTS_FILE = "training_subjects.json"
ARTIFACT_FILES = (GENERATOR_FILE, POOL_FILE, QUALITY_FILE, SAMPLES_FILE, SUBJECTS_FILE)


def missing_files(path: str | Path) -> list[str]:
    path = Path(path)
    return [name for name in ARTIFACT_FILES if not (path / name).is_file()]


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a finished generator artifact."""
    return Path(path).is_dir() and not missing_files(path)


class GeneratorArtifact:
    """Read access to a generator artifact folder.

    Args:
        path: the artifact folder.
        check: raise a SynthmixError naming the folder and its missing files unless complete
            (the training flow itself opens its half-written folder with check=False).
    """

    def __init__(self, path: str | Path, *, check: bool = True):
        self.path = Path(path)
        if check and not is_complete(self.path):
            if not self.path.is_dir():
                raise SynthmixError(f"{self.path}: no such generator artifact folder")
            raise SynthmixError(f"{self.path} is not a complete generator artifact: missing "
                                f"{', '.join(missing_files(self.path))}")

    def __repr__(self) -> str:
        return f"GeneratorArtifact({str(self.path)!r})"

    @cached_property
    def state(self) -> dict:
        """The contents of generator.pt (weights on CPU)."""
        return torch.load(self.path / GENERATOR_FILE, map_location="cpu", weights_only=False)

    def _family(self):
        from synthmix.trainers.generators import GENERATORS  # the registry imports this module

        return GENERATORS.get(self.state["family"])

    def load_generator(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The trained network, in eval mode on ``device``, with ``sample(n, *, seed, device)``."""
        return self._family().load(self.state, device, trained=True)

    def untrained_sampler(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The same architecture with its initial (seeded, untrained) weights: the quality reference."""
        return self._family().load(self.state, device, trained=False)

    def sample(self, n: int, *, seed: int, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """n pairs: images (n, C, H, W) float32 in the training data's intensity space, labels
        (n, H, W) int64 in [0, num_classes)."""
        return self.load_generator(device).sample(n, seed=seed, device=device)

    def pool(self) -> SyntheticPool:
        return SyntheticPool.load(self.path / POOL_FILE)

    @property
    def num_classes(self) -> int:
        return int(self.state["num_classes"])

    @cached_property
    def quality(self) -> dict:
        return json.loads((self.path / QUALITY_FILE).read_text())

    @cached_property
    def training_subjects(self) -> list[str]:
        return json.loads((self.path / SUBJECTS_FILE).read_text())


def save_sample_grid(images: np.ndarray, labels: np.ndarray, path: str | Path, *, num_classes: int,
                     ncols: int = 8) -> Path:
    """PNG of image+label pairs: per pair the bare image (first channel, grey) and the image
    with the label as a semi-transparent colour overlay plus outlines; a legend names the
    classes' colours. Grey levels share one range across the grid so samples compare."""
    import matplotlib
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    from matplotlib.patches import Patch

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    colours = matplotlib.colormaps["tab10"].colors
    cmap = ListedColormap([(0, 0, 0, 0)] + [colours[(k - 1) % 10] for k in range(1, num_classes)])
    lo, hi = np.percentile(images[:, 0], [0.5, 99.5])
    fig = Figure(figsize=(2 * ncols * 1.2, nrows * 1.25 + 0.5))
    axes = fig.subplots(nrows, 2 * ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        bare, over = axes[i // ncols, 2 * (i % ncols)], axes[i // ncols, 2 * (i % ncols) + 1]
        bare.imshow(images[i, 0], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        over.imshow(images[i, 0], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        over.imshow(labels[i], cmap=cmap, vmin=-0.5, vmax=num_classes - 0.5, alpha=0.45, interpolation="nearest")
        if labels[i].max() > 0:
            over.contour(labels[i], levels=np.arange(0.5, num_classes - 0.5), colors="white", linewidths=0.3)
    handles = [Patch(color=colours[(k - 1) % 10], label=f"class {k}") for k in range(1, num_classes)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
    fig.suptitle("samples: image | image with label overlay", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.35 / fig.get_figheight(),
                        bottom=0.35 / fig.get_figheight(), wspace=0.04, hspace=0.04)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def write_samples(artifact_dir: str | Path, out: str | Path, *, n: int, seed: int, ncols: int = 8,
                  device: str | torch.device = "cpu") -> Path:
    """Sample n pairs from an artifact into ``out``: a .png grid or a .npz SyntheticPool."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise SynthmixError(f"{out}: output must end in .png (sample grid) or .npz (SyntheticPool)")
    artifact = GeneratorArtifact(artifact_dir)
    images, labels = artifact.sample(n, seed=seed, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        return save_sample_grid(images, labels, out, num_classes=artifact.num_classes, ncols=ncols)
    meta = {"generator": str(artifact.path), "seed": seed, "step": artifact.state.get("step"),
            "family": artifact.state["family"], "num_classes": artifact.num_classes}
    SyntheticPool(images, labels, meta=meta).save(out)
    return out
