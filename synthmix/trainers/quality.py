"""Quality figures of a generator: sliced Wasserstein distance and memorisation distance.

- ``sliced_wasserstein_distance``: the multi-scale patch SWD of progressive GANs (Karras et al.
  2018, ``metrics/sliced_wasserstein.py`` of their code), the measure 004 selects checkpoints
  by. Reimplemented here (numpy + scipy) because no maintained library ships it.
- ``nearest_neighbour_distance``: L2 distance from each synthetic image to its closest training
  image (torch.cdist), the memorisation check of 001: a generator that copies its training data
  scores ~0.
- ``generator_quality``: both figures for a trained generator and, as a reference, for the
  untrained generator of the same architecture and seed, plus a real-vs-real baseline.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.ndimage
import torch

from synthmix.datasets.arrays import SliceSet

# The 5x5 binomial kernel of cv2.pyrDown/pyrUp, as in the PGGAN code.
_GAUSSIAN = np.float32([[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6],
                        [4, 16, 24, 16, 4], [1, 4, 6, 4, 1]]) / 256.0


class Sampler(Protocol):
    def sample(self, n: int, *, seed: int, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]: ...


# ---- sliced Wasserstein distance ---------------------------------------------------------------

def _pyr_down(x: np.ndarray) -> np.ndarray:
    return scipy.ndimage.convolve(x, _GAUSSIAN[None, None], mode="mirror")[:, :, ::2, ::2]


def _pyr_up(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    up = np.zeros((n, c, 2 * h, 2 * w), x.dtype)
    up[:, :, ::2, ::2] = x
    return scipy.ndimage.convolve(up, _GAUSSIAN[None, None] * 4.0, mode="mirror")


def laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    """Finest band first; the last level is the low-pass residual (as in PGGAN)."""
    pyramid = [np.float32(x)]
    for _ in range(1, levels):
        pyramid.append(_pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - _pyr_up(pyramid[-1])
    return pyramid


def _descriptors(level: np.ndarray, count: int, patch: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` patches (patch x patch x C, fully inside the image) at random positions, images
    taken in turn; normalised per channel over all patches, then flattened."""
    n, c, h, w = level.shape
    half = patch // 2
    img = np.arange(count) % n
    ys = rng.integers(half, h - half, size=count)
    xs = rng.integers(half, w - half, size=count)
    offsets = np.arange(-half, half + 1)
    rows = (ys[:, None] + offsets)[:, :, None]  # (count, patch, 1)
    cols = (xs[:, None] + offsets)[:, None, :]  # (count, 1, patch)
    desc = level[img[:, None, None], :, rows, cols]  # (count, patch, patch, C)
    desc = desc.transpose(0, 3, 1, 2).astype(np.float64)
    desc -= desc.mean(axis=(0, 2, 3), keepdims=True)
    desc /= desc.std(axis=(0, 2, 3), keepdims=True) + 1e-12
    return desc.reshape(count, -1)


def _sliced_wasserstein(a: np.ndarray, b: np.ndarray, repeats: int, directions: int,
                        rng: np.random.Generator) -> float:
    results = []
    for _ in range(repeats):
        dirs = rng.standard_normal((a.shape[1], directions))
        dirs /= np.sqrt((dirs ** 2).sum(axis=0, keepdims=True))
        proj_a = np.sort(a @ dirs, axis=0)
        proj_b = np.sort(b @ dirs, axis=0)
        results.append(np.abs(proj_a - proj_b).mean())
    return float(np.mean(results))


def swd_per_level(real: np.ndarray, fake: np.ndarray, *, seed: int, patch: int = 7,
                  patches_per_image: int = 128, repeats: int = 4, directions: int = 128,
                  min_resolution: int = 16) -> dict[int, float]:
    """PGGAN's SWD x 1e3 per Laplacian pyramid level, keyed by the level's resolution.

    Levels run from the full resolution down to ``min_resolution`` (16, as PGGAN). Each set
    gives ``patches_per_image * max(len(real), len(fake))`` descriptors per level (the same
    number from both, images taken in turn), each set normalised by its own per-channel mean
    and std as PGGAN does, so a global affine intensity change alone is not measured.
    """
    real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
    if real.ndim != 4 or real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real {real.shape} and fake {fake.shape} must both be (N, C, H, W) of the same C, H, W")
    size = min(real.shape[2:])
    resolutions = []
    while size >= max(min_resolution, patch):
        resolutions.append(size)
        size //= 2
    if not resolutions:
        raise ValueError(f"images of {real.shape[2:]} are smaller than the {min_resolution}-pixel SWD minimum")
    rng = np.random.default_rng(seed)
    count = patches_per_image * max(len(real), len(fake))
    pyr_real = laplacian_pyramid(real, len(resolutions))
    pyr_fake = laplacian_pyramid(fake, len(resolutions))
    out = {}
    for res, lr, lf in zip(resolutions, pyr_real, pyr_fake):
        a = _descriptors(lr, count, patch, rng)
        b = _descriptors(lf, count, patch, rng)
        out[res] = 1e3 * _sliced_wasserstein(a, b, repeats, directions, rng)
    return out


def sliced_wasserstein_distance(real: np.ndarray, fake: np.ndarray, *, seed: int, **kwargs) -> float:
    """Average over pyramid levels of PGGAN's multi-scale patch SWD (x 1e3), as 004 reports.

    real (N, C, H, W), fake (M, C, H, W); see ``swd_per_level`` for the options
    (7x7 patches, 128 per image, 4 repeats of 128 random directions by default).
    """
    return float(np.mean(list(swd_per_level(real, fake, seed=seed, **kwargs).values())))


# ---- nearest-neighbour (memorisation) distance ---------------------------------------------------

def nearest_neighbour_distance(samples: np.ndarray, training: np.ndarray, *, batch_size: int = 256
                               ) -> tuple[float, np.ndarray]:
    """(mean, per-sample) Euclidean distance from each sample image to its nearest training
    image, over all pixels and channels, computed in batches with torch.cdist."""
    a = torch.as_tensor(np.asarray(samples, np.float32)).flatten(1)
    b = torch.as_tensor(np.asarray(training, np.float32)).flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"samples {samples.shape} and training {training.shape} differ in image shape")
    per_sample = torch.empty(len(a), dtype=torch.float64)
    for start in range(0, len(a), batch_size):
        chunk = a[start:start + batch_size].double()
        best = torch.full((len(chunk),), float("inf"), dtype=torch.float64)
        for tstart in range(0, len(b), batch_size):
            dist = torch.cdist(chunk, b[tstart:tstart + batch_size].double())
            best = torch.minimum(best, dist.min(dim=1).values)
        per_sample[start:start + len(chunk)] = best
    values = per_sample.numpy()
    return float(values.mean()), values


def _leave_subject_out_nn(real: SliceSet) -> float | None:
    """Mean NN distance from each subject's slices to the other subjects' slices: what
    "close to the training data" looks like between genuinely different real subjects."""
    subjects = real.subjects
    if len(subjects) < 2:
        return None
    dists = []
    for sid in subjects:
        mine = real.subject_ids == sid
        dists.append(nearest_neighbour_distance(real.images[mine], real.images[~mine])[1])
    return float(np.concatenate(dists).mean())


# ---- joint representation and the full report ---------------------------------------------------

def joint_pictures(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images plus label channels (one-hot, or one channel for K=2), what SWD compares: the
    pair as a segmentation network sees it, not the image alone."""
    if num_classes == 2:
        lab = labels[:, None].astype(np.float32)
    else:
        lab = np.eye(num_classes, dtype=np.float32)[labels].transpose(0, 3, 1, 2)
    return np.concatenate([np.asarray(images, np.float32), lab], axis=1)


def _sample_real(real: SliceSet, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.choice(len(real), size=min(n, len(real)), replace=False)
    return real.images[idx], real.labels[idx]


def sampler_quality(sampler: Sampler, real: SliceSet, *, seed: int, n: int,
                    device: str | torch.device = "cpu") -> dict:
    """SWD (joint image+label) and NN distance (images) of n samples against ``real``."""
    images, labels = sampler.sample(n, seed=seed, device=device)
    real_images, real_labels = _sample_real(real, n, np.random.default_rng(seed))
    swd = swd_per_level(joint_pictures(real_images, real_labels, real.num_classes),
                        joint_pictures(images, labels, real.num_classes), seed=seed)
    return {"swd": float(np.mean(list(swd.values()))), "swd_per_level": {str(k): v for k, v in swd.items()},
            "nn_distance": nearest_neighbour_distance(images, real.images)[0]}


def _real_swd_baseline(real: SliceSet, *, seed: int, n: int) -> float | None:
    """SWD between the slices of two halves of the subjects: the floor a perfect generator
    would reach with sets of this size."""
    subjects = real.subjects
    if len(subjects) < 2:
        return None
    order = np.random.default_rng(seed).permutation(len(subjects))
    half = {subjects[i] for i in order[: len(subjects) // 2]}
    in_half = np.isin(real.subject_ids, list(half))
    rng = np.random.default_rng(seed)
    parts = []
    for mask in (in_half, ~in_half):
        idx = np.flatnonzero(mask)
        idx = rng.choice(idx, size=min(n, len(idx)), replace=False)
        parts.append(joint_pictures(real.images[idx], real.labels[idx], real.num_classes))
    return sliced_wasserstein_distance(parts[0], parts[1], seed=seed)


def generator_quality(artifact_or_sampler, real: SliceSet, *, seed: int, n: int = 256,
                      untrained: Sampler | None = None, held_out: SliceSet | None = None,
                      device: str | torch.device = "cpu") -> dict:
    """Quality figures of a generator against its real training data ``real``.

    ``artifact_or_sampler`` is a GeneratorArtifact (its untrained reference is rebuilt from its
    config and seed) or any object with ``sample(n, *, seed, device)``, in which case
    ``untrained`` must be given. ``held_out`` real data (validation), if given, provides the
    real-to-training NN baseline; otherwise it is the leave-one-subject-out distance within
    ``real``, which keeps validation data away from anything a generator run touches (rule 3).

    Returns swd, swd_untrained, swd_real_baseline (two halves of the subjects), their per-level
    values, nn_distance, nn_distance_untrained, nn_distance_real_baseline and how it was made.
    """
    sampler = artifact_or_sampler
    if hasattr(artifact_or_sampler, "untrained_sampler"):
        untrained = untrained or artifact_or_sampler.untrained_sampler(device)
        sampler = artifact_or_sampler.load_generator(device)
    if untrained is None:
        raise ValueError("generator_quality needs the untrained reference sampler (untrained=...)")
    trained_q = sampler_quality(sampler, real, seed=seed, n=n, device=device)
    untrained_q = sampler_quality(untrained, real, seed=seed, n=n, device=device)
    if held_out is not None:
        nn_real, nn_kind = nearest_neighbour_distance(held_out.images, real.images)[0], "held-out real to training"
    else:
        nn_real, nn_kind = _leave_subject_out_nn(real), "leave-one-subject-out within training"
    return {
        "swd": trained_q["swd"],
        "swd_untrained": untrained_q["swd"],
        "swd_real_baseline": _real_swd_baseline(real, seed=seed, n=n),
        "swd_per_level": trained_q["swd_per_level"],
        "swd_untrained_per_level": untrained_q["swd_per_level"],
        "nn_distance": trained_q["nn_distance"],
        "nn_distance_untrained": untrained_q["nn_distance"],
        "nn_distance_real_baseline": nn_real,
        "nn_distance_real_baseline_kind": nn_kind,
        "n_samples": n,
        "n_real": len(real),
        "seed": seed,
        "swd_definition": "PGGAN multi-scale Laplacian-pyramid 7x7 patch SWD x1e3, averaged over levels, "
                          "on image channels + one-hot label channels",
        "nn_definition": "mean L2 distance from each sample image to its nearest training image",
    }


# ----# ---- TEMPORARY shims for the generator platform until the quality helper's branch lands ----

def swd_against(samples, real: SliceSet, *, seed: int) -> float:
    rng = np.random.default_rng(seed)
    ri, rl = _sample_real(real, len(samples.images), rng)
    return sliced_wasserstein_distance(joint_pictures(ri, rl, real.num_classes),
                                       joint_pictures(samples.images, samples.labels, real.num_classes), seed=seed)


def train_reference_segmenter(real: SliceSet, *, seed: int, steps: int, device="cpu"):
    from synthmix.trainers.networks import NETWORKS

    torch.manual_seed(seed)
    net = NETWORKS.get("unet")(in_channels=real.images.shape[1], num_classes=real.num_classes, levels=3).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(real), 8)
        x = torch.as_tensor(real.images[idx], device=device)
        y = torch.as_tensor(real.labels[idx], device=device)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    return net.eval()


@torch.no_grad()
def fcn_score(model, samples, *, device="cpu") -> dict:
    pred = model(torch.as_tensor(samples.images, device=device)).argmax(1).cpu().numpy()
    k = int(max(pred.max(), samples.labels.max())) + 1
    dice = []
    for c in range(1, k):
        a, b = pred == c, samples.labels == c
        if a.sum() + b.sum():
            dice.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    return {"dice_mean": float(np.mean(dice)) if dice else 0.0}


def quality_report(sample, real: SliceSet, *, seed: int, n: int, untrained=None, val=None,
                   reference_segmenter=None, device="cpu") -> dict:
    class _S:
        def __init__(self, f):
            self.f = f

        def sample(self, n, *, seed, device="cpu"):
            s = self.f(n, seed)
            return s.images, s.labels
    out = generator_quality(_S(sample), real, seed=seed, n=n, untrained=_S(untrained), device=device)
    if reference_segmenter is not None:
        out["fcn_score"] = fcn_score(reference_segmenter, sample(n, seed), device=device)["dice_mean"]
    return out
