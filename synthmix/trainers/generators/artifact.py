"""A trained generator on disk: the folder a generator run leaves, and how to use it.

Files of a complete artifact (tensors + JSON only: nothing in it is unpickled):

- ``generator.json``: family, its config, seed, the joint encoding (image channels, classes,
  intensity normalisation), the shape fit (data slice size, model size), final step, and the
  snapshot selection (every snapshot's score, the one kept);
- ``weights.pt``: the sampling weights, a dict of tensors (``checkpoint.load_tensors``);
- ``quality.json``: the quality figures (quality.py), trained vs untrained vs real;
- ``samples.png`` and ``real.png``: a grid of samples and one of real training slices;
- ``training_subjects.json``: the sorted subject ids the generator was trained on (rule 3);
- ``masks.npz`` (conditional families only, ``needs_masks``): the training subset's label maps
  (``labels``, (N, H, W) uint8 or int16), the masks ``sample`` conditions on when it is given
  none (``synthmix sample``), read with ``allow_pickle=False``.

Pools drawn from a generator are artifacts of their own (``pools.py``), so a new pool never
retrains its generator. The folder is written under a temporary name and renamed when
finished, so a folder that holds all files is a finished artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from synthmix.datasets.arrays import SyntheticPool
from synthmix.errors import SynthmixError
from synthmix.trainers.checkpoint import load_tensors
from synthmix.trainers.generators.encoding import JointEncoding, ShapeFit
from synthmix.trainers.synthetic import Samples

SPEC_FILE = "generator.json"
WEIGHTS_FILE = "weights.pt"
QUALITY_FILE = "quality.json"
SAMPLES_FILE = "samples.png"
REAL_FILE = "real.png"
SUBJECTS_FILE = "training_subjects.json"
MASKS_FILE = "masks.npz"
ARTIFACT_FILES = (SPEC_FILE, WEIGHTS_FILE, QUALITY_FILE, SAMPLES_FILE, REAL_FILE, SUBJECTS_FILE)


def missing_files(path: str | Path, files: tuple[str, ...] = ARTIFACT_FILES) -> list[str]:
    path = Path(path)
    return [name for name in files if not (path / name).is_file()]


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a finished generator artifact."""
    return Path(path).is_dir() and not missing_files(path)


def save_masks(labels: np.ndarray, path: str | Path) -> None:
    """A conditional generator's training label maps, compactly (classes fit a uint8 mostly)."""
    labels = np.asarray(labels)
    np.savez_compressed(path, labels=labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.int16))


def load_masks(path: str | Path, *, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """(N, H, W) int64 label maps from an .npz with a ``labels`` array (``masks.npz`` of an
    artifact, a SyntheticPool, or any such file), checked against the generator's slice shape
    and classes; anything else is an error naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "labels" not in z.files:
                raise SynthmixError(f"{path}: no 'labels' array (has {', '.join(z.files) or 'nothing'}); "
                                    "masks must be an .npz with labels (N, H, W)")
            labels = z["labels"]
    except (OSError, ValueError, EOFError) as err:
        raise SynthmixError(f"{path}: not an .npz file of label maps ({err})") from None
    if labels.ndim != 3 or tuple(labels.shape[1:]) != tuple(shape) or len(labels) == 0:
        raise SynthmixError(f"{path}: labels have shape {labels.shape}; this generator needs (N, {shape[0]}, "
                            f"{shape[1]}) with N >= 1")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
        raise SynthmixError(f"{path}: labels must be integers in [0, {num_classes}), got {labels.dtype} in "
                            f"[{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


def read_json(path: Path) -> dict:
    """A JSON file synthmix wrote; anything else is an error naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SynthmixError(f"{path}: not a JSON file synthmix wrote ({err})") from None


class ShapedSampler:
    """A family's sampler seen at the data's slice size: masks in the data's shape are padded
    to the model's, samples (and their per-pixel extras) are cropped back."""

    def __init__(self, sampler, fit: ShapeFit):
        self.sampler, self.fit = sampler, fit

    def sample(self, n: int, *, seed: int, device: str | torch.device = "cpu",
               masks: np.ndarray | None = None) -> Samples:
        if masks is not None:
            masks = self.fit.pad(np.zeros((len(masks), 1, *masks.shape[1:]), np.float32), masks)[1]
        s = self.sampler.sample(n, seed=seed, device=device, masks=masks)
        extras = {k: self.fit.crop(v) if v.ndim >= 3 else v for k, v in s.extras.items()}
        return Samples(np.ascontiguousarray(self.fit.crop(s.images)),
                       np.ascontiguousarray(self.fit.crop(s.labels)), extras)


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
    def spec(self) -> dict:
        """The contents of generator.json."""
        return read_json(self.path / SPEC_FILE)

    @property
    def family_name(self) -> str:
        return self.spec["family"]

    @property
    def encoding(self) -> JointEncoding:
        return JointEncoding.from_dict(self.spec["encoding"])

    @property
    def fit(self) -> ShapeFit:
        return ShapeFit.from_dict(self.spec["shape"])

    @property
    def num_classes(self) -> int:
        return self.encoding.num_classes

    def weights(self) -> dict:
        weights = load_tensors(self.path / WEIGHTS_FILE)
        if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise SynthmixError(f"{self.path / WEIGHTS_FILE}: expected a dict of tensors")
        return weights

    def sampler(self, device: str | torch.device = "cpu", *, trained: bool = True) -> ShapedSampler:
        """The trained sampler (``trained=False``: the same architecture with the initial
        weights its seed gives, the quality reference), at the data's slice size."""
        from synthmix.trainers.generators import GENERATORS  # the registry imports this module

        family = GENERATORS.get(self.family_name)
        config = family.config(self.spec["config"])
        network = family.load(config, self.encoding, self.weights() if trained else None,
                              seed=int(self.spec["seed"]), shape=tuple(self.fit.model), device=device)
        return ShapedSampler(network, self.fit)

    def sample(self, n: int, *, seed: int, device: str | torch.device = "cpu",
               masks: np.ndarray | None = None) -> Samples:
        return self.sampler(device).sample(n, seed=seed, device=device, masks=masks)

    @cached_property
    def quality(self) -> dict:
        return read_json(self.path / QUALITY_FILE)

    @cached_property
    def training_subjects(self) -> list[str]:
        return read_json(self.path / SUBJECTS_FILE)

    @property
    def needs_masks(self) -> bool:
        from synthmix.trainers.generators import GENERATORS

        return GENERATORS.get(self.family_name).needs_masks

    def masks_for(self, n: int, *, seed: int, masks: str | Path | None = None) -> np.ndarray | None:
        """n label maps for a conditional family (None for the others): from the ``masks`` .npz
        if given, else from the artifact's ``masks.npz`` (its training subset's label maps),
        handed out as the training flow does (``MaskSource``: each once per pass, transformed
        if the generator's ``masks`` options say so)."""
        from synthmix.trainers.generators.masks import MaskSource, build_mask_spec

        if not self.needs_masks:
            if masks is not None:
                raise SynthmixError(f"{self.path}: {self.family_name} samples from noise and takes no masks; "
                                    "drop --masks")
            return None
        source = Path(masks) if masks is not None else self.path / MASKS_FILE
        if masks is None and not source.is_file():
            raise SynthmixError(f"{self.path}: {self.family_name} is a conditional family and needs label maps, "
                                f"but the artifact has no {MASKS_FILE} (it predates them); pass --masks FILE.npz "
                                "with a 'labels' array (N, H, W) of the training subset's masks")
        labels = load_masks(source, shape=tuple(self.fit.data), num_classes=self.num_classes)
        return MaskSource(labels, build_mask_spec(self.spec.get("masks"))).take(n, seed)


def write_artifact_folder(out_dir: Path, write: Callable[[Path], None], *,
                          finished: Callable[[Path], bool] = is_complete) -> None:
    """Call ``write(tmp)`` on a temporary sibling folder, then rename it into place, so a
    folder at ``out_dir`` is always finished. A finished or empty folder already there (an
    earlier attempt) is replaced; anything else is refused."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write(tmp)
        if out_dir.exists():
            if not (out_dir.is_dir() and (finished(out_dir) or not any(out_dir.iterdir()))):
                raise SynthmixError(f"{out_dir} exists and is not an artifact; refusing to overwrite it")
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_sample_grid(images: np.ndarray, labels: np.ndarray, path: str | Path, *, num_classes: int,
                     ncols: int = 8, title: str = "samples", channel_names: list[str] | None = None) -> Path:
    """PNG of image+label pairs: per pair every modality (channel) bare, in grey, then the first
    with the label as a semi-transparent colour overlay plus outlines; a legend names the
    classes' colours. Grey levels share one range per channel across the grid so samples
    compare. ``channel_names`` (default "channel 0", ...) title the panels of the first row."""
    import matplotlib
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    from matplotlib.patches import Patch

    n, channels = len(images), images.shape[1]
    names = list(channel_names or ([] if channels == 1 else [f"channel {c}" for c in range(channels)]))
    ncols = max(1, min(ncols, n))
    nrows, per = -(-n // ncols), channels + 1  # panels per pair
    colours = matplotlib.colormaps["tab10"].colors
    cmap = ListedColormap([(0, 0, 0, 0)] + [colours[(k - 1) % 10] for k in range(1, num_classes)])
    ranges = [np.percentile(images[:, c], [0.5, 99.5]) for c in range(channels)]
    aspect = images.shape[2] / images.shape[3]  # rows / cols: non-square slices keep their shape
    fig = Figure(figsize=(per * ncols * 1.2, nrows * 1.25 * aspect + 0.5 + 0.2 * bool(names)))
    axes = fig.subplots(nrows, per * ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        row, first = i // ncols, per * (i % ncols)
        for c in range(channels):
            axes[row, first + c].imshow(images[i, c], cmap="gray", vmin=ranges[c][0], vmax=ranges[c][1],
                                        interpolation="nearest")
            if row == 0 and names:
                axes[row, first + c].set_title(names[c] if c < len(names) else f"channel {c}", fontsize=6)
        over = axes[row, first + channels]
        over.imshow(images[i, 0], cmap="gray", vmin=ranges[0][0], vmax=ranges[0][1], interpolation="nearest")
        over.imshow(labels[i], cmap=cmap, vmin=-0.5, vmax=num_classes - 0.5, alpha=0.45, interpolation="nearest")
        if labels[i].max() > 0:
            over.contour(labels[i], levels=np.arange(0.5, num_classes - 0.5), colors="white", linewidths=0.3)
        if row == 0 and names:
            over.set_title("label", fontsize=6)
    handles = [Patch(color=colours[(k - 1) % 10], label=f"class {k}") for k in range(1, num_classes)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
    what = "each modality" if channels > 1 else "image"
    fig.suptitle(f"{title}: {what} | image with label overlay", fontsize=9)
    top = (0.35 + 0.2 * bool(names)) / fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - top, bottom=0.35 / fig.get_figheight(),
                        wspace=0.04, hspace=0.04 + 0.15 * bool(names))
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def write_samples(artifact_dir: str | Path, out: str | Path, *, n: int, seed: int, ncols: int = 8,
                  device: str | torch.device = "cpu", masks: str | Path | None = None) -> Path:
    """Sample n pairs from an artifact into ``out``: a .png grid or a .npz SyntheticPool. A
    conditional family is given n masks (``GeneratorArtifact.masks_for``): its training
    subset's label maps recorded in the artifact, or those of the ``masks`` .npz."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise SynthmixError(f"{out}: output must end in .png (sample grid) or .npz (SyntheticPool)")
    artifact = GeneratorArtifact(artifact_dir)
    samples = artifact.sample(n, seed=seed, device=device, masks=artifact.masks_for(n, seed=seed, masks=masks))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        return save_sample_grid(samples.images, samples.labels, out, num_classes=artifact.num_classes, ncols=ncols)
    meta = {"generator": str(artifact.path), "seed": seed, "step": artifact.spec.get("step"),
            "family": artifact.family_name, "num_classes": artifact.num_classes}
    SyntheticPool(samples.images, samples.labels, meta=meta).save(out)
    return out
