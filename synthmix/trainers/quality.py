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

from typing import Any, Callable, NamedTuple, Protocol

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
        a, b = _descriptors(lr, count, patch, rng), _descriptors(lf, count, patch, rng)
        out[res] = 1e3 * _sliced_wasserstein(a, b, repeats, directions, rng)
    return out


def sliced_wasserstein_distance(real: np.ndarray, fake: np.ndarray, *, seed: int, **kwargs) -> float:
    """Average over pyramid levels of PGGAN's multi-scale patch SWD (x 1e3), as 004 reports.

    real (N, C, H, W), fake (M, C, H, W); see ``swd_per_level`` for the options
    (7x7 patches, 128 per image, 4 repeats of 128 random directions by default).
    """
    return float(np.mean(list(swd_per_level(real, fake, seed=seed, **kwargs).values())))


# ---- nearest-neighbour (memorisation) distance ---------------------------------------------------

def nearest_neighbours(samples: np.ndarray, training: np.ndarray, *, batch_size: int = 256
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index): per sample image, the Euclidean distance to its nearest training
    image over all pixels and channels, and that image's index; in batches with torch.cdist."""
    a = torch.as_tensor(np.asarray(samples, np.float32)).flatten(1)
    b = torch.as_tensor(np.asarray(training, np.float32)).flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"samples {samples.shape} and training {training.shape} differ in image shape")
    best = torch.full((len(a),), float("inf"), dtype=torch.float64)
    index = torch.zeros(len(a), dtype=torch.int64)
    for start in range(0, len(a), batch_size):
        chunk = a[start:start + batch_size].double()
        for tstart in range(0, len(b), batch_size):
            dist, arg = torch.cdist(chunk, b[tstart:tstart + batch_size].double()).min(dim=1)
            better = dist < best[start:start + len(chunk)]
            best[start:start + len(chunk)] = torch.where(better, dist, best[start:start + len(chunk)])
            index[start:start + len(chunk)] = torch.where(better, arg + tstart, index[start:start + len(chunk)])
    return best.numpy(), index.numpy()


def nearest_neighbour_distance(samples: np.ndarray, training: np.ndarray, *, batch_size: int = 256
                               ) -> tuple[float, np.ndarray]:
    """(mean, per-sample) Euclidean distance from each sample image to its nearest training image."""
    values, _ = nearest_neighbours(samples, training, batch_size=batch_size)
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


# ---- blurriness ---------------------------------------------------------------------------------

# The 3x3 Laplacian of cv2.Laplacian (ksize=1), the usual "variance of Laplacian" focus measure.
_LAPLACIAN = np.float32([[0, 1, 0], [1, -4, 1], [0, 1, 0]])


def laplacian_variance(images: np.ndarray) -> np.ndarray:
    """(n,) sharpness of each image (n, C, H, W): the variance of its Laplacian (002, after
    Pech-Pacheco et al.), averaged over channels; lower is blurrier."""
    lap = scipy.ndimage.correlate(np.asarray(images, np.float32), _LAPLACIAN[None, None], mode="reflect")
    return lap.reshape(*lap.shape[:2], -1).var(axis=2).mean(axis=1).astype(np.float64)


# ---- SWD against matched real halves ------------------------------------------------------------

def real_halves(real: SliceSet, *, seed: int, splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``splits`` random (A, B) boolean masks over the slices: disjoint halves by subject (the
    floor then compares different subjects, as a generator's new samples are), or by slice
    when there is a single subject."""
    subjects = np.array(real.subjects)
    halves = []
    for s in range(splits):
        rng = np.random.default_rng([seed, s])
        if len(subjects) >= 2:
            a = np.isin(real.subject_ids, rng.permutation(subjects)[: len(subjects) // 2])
        else:
            a = np.zeros(len(real), bool)
            a[rng.permutation(len(real))[: len(real) // 2]] = True
        halves.append((a, ~a))
    return halves


def _summary(per_split: list[dict[int, float]]) -> dict:
    values = np.array([np.mean(list(d.values())) for d in per_split])
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "per_split": values.round(3).tolist(),
            "per_level": {str(k): float(np.mean([d[k] for d in per_split])) for k in per_split[0]}}


def matched_swd(real: SliceSet, sets: dict[str, tuple[np.ndarray, np.ndarray]], *, seed: int,
                splits: int = 4) -> dict:
    """SWD of each synthetic set and of real data (the floor), on equal terms.

    Per split (``real_halves``), real half B is the reference; the floor is SWD(B, A) and each
    synthetic figure SWD(B, |A| synthetic pairs), the next |A| of its set (cycled when short),
    so every figure and the floor compare sets of the same sizes against the same reference.
    Returns {"real": summary, name: summary, "sizes": [[|A|, |B|], ...]}, each summary the mean
    and SD over splits of the level-averaged SWD x 1e3, its per-split and per-level values.
    """
    k = real.num_classes
    results: dict[str, list] = {"real": [], **{name: [] for name in sets}}
    used = dict.fromkeys(sets, 0)
    sizes = []
    for s, (a, b) in enumerate(real_halves(real, seed=seed, splits=splits)):
        reference = joint_pictures(real.images[b], real.labels[b], k)
        m = int(a.sum())
        sizes.append([m, int(b.sum())])
        level_seed = seed * 1000 + s
        results["real"].append(swd_per_level(reference, joint_pictures(real.images[a], real.labels[a], k),
                                             seed=level_seed))
        for name, (images, labels) in sets.items():
            idx = np.arange(used[name], used[name] + m) % len(images)
            used[name] += m
            results[name].append(swd_per_level(reference, joint_pictures(images[idx], labels[idx], k),
                                               seed=level_seed))
    return {**{name: _summary(v) for name, v in results.items()}, "sizes": sizes}


def swd_samples_needed(real: SliceSet, *, seed: int, splits: int = 4) -> int:
    """How many synthetic pairs ``matched_swd`` uses per set without repeating one."""
    return int(sum(a.sum() for a, _ in real_halves(real, seed=seed, splits=splits)))


# ---- FCN score (002) ----------------------------------------------------------------------------

def train_reference_segmenter(real: SliceSet, *, seed: int, steps: int = 200,
                              device: str | torch.device = "cpu", batch_size: int = 16) -> torch.nn.Module:
    """A small UNet (3 levels, 8-16-32 filters, batch norm; Dice + CE, Adam 1e-3) trained for
    ``steps`` on the real training slices only: the reference segmenter of 002's FCN score.

    A short loop of its own rather than ``train_segmentation``: that flow selects weights on
    validation subjects and evaluates test subjects, which a generator's quality measures must
    not touch (rule 3); this one trains a fixed budget on the training subset and nothing else.
    """
    from synthmix.trainers.losses import build_loss
    from synthmix.trainers.networks import build_network

    device = torch.device(device)
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network("unet", in_channels=real.images.shape[1], num_classes=real.num_classes,
                            options=dict(levels=3, base_filters=8, doubling=True, batch_norm=True)).to(device)
    loss_fn = build_loss("dice_ce", num_classes=real.num_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(steps):
        idx = rng.integers(0, len(real), size=batch_size)
        x = torch.as_tensor(real.images[idx], dtype=torch.float32, device=device)
        y = torch.as_tensor(real.labels[idx], dtype=torch.int64, device=device)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def fcn_score(model: torch.nn.Module, samples, *, batch_size: int = 64) -> dict:
    """002's FCN score: the reference segmenter's Dice against the pairs' own labels (is the
    label right for the image?), pooled over all pairs; ``dice_mean`` over the foreground
    classes and ``dice_<c>`` per class. ``samples`` has ``images`` and ``labels`` (Samples or
    a SliceSet: the same call gives the segmenter's Dice on real slices, for scale)."""
    from synthmix.trainers.metrics import segmentation_metrics

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, k = [], None
    for start in range(0, len(samples.images), batch_size):
        logits = model(torch.as_tensor(samples.images[start:start + batch_size], dtype=torch.float32, device=device))
        k = logits.shape[1]
        preds.append(logits.argmax(dim=1).cpu().numpy())
    model.train(was_training)
    metrics = segmentation_metrics(np.concatenate(preds), np.asarray(samples.labels), num_classes=k,
                                   spacing=(1.0, 1.0, 1.0), distances=False)
    return {key: float(v) for key, v in metrics.items() if key.startswith("dice_")}


# ---- every figure at once --------------------------------------------------------------------------

DEFINITIONS = {
    "swd": "PGGAN multi-scale Laplacian-pyramid SWD x1e3 (7x7 descriptors, 128 per image, 4 x 128 projections, "
           "levels down to 16 px, per-set descriptor normalisation), image + label channels, averaged over "
           "levels; mean (sd) over random splits of the real training subjects into halves A, B: synthetic "
           "|A| pairs vs B; real: A vs B (the floor at the same set sizes)",
    "swd_vs_floor": "(swd - real swd) / sqrt(swd_sd^2 + real swd_sd^2): the gap to the floor in units of "
                    "their spread over splits (about 2 or more: told apart from real data)",
    "fcn_dice_mean": "Dice of a reference UNet trained on the real training subset, predicting the pairs' "
                     "images, against their labels, pooled over pairs; real: on the validation slices if "
                     "given, else on the training slices (in-sample)",
    "blur": "mean variance of the Laplacian of the images (lower = blurrier)",
    "nn_distance": "mean L2 distance from each image to its nearest real training image; real: leave-one-"
                   "subject-out within the training subset",
}


def _figures(images: np.ndarray, labels: np.ndarray, swd: dict, floor: dict, real: SliceSet,
             segmenter: torch.nn.Module, n: int) -> dict:
    fcn = fcn_score(segmenter, _Pairs(images[:n], labels[:n]))
    return {"swd": swd["mean"], "swd_sd": swd["sd"], "swd_per_split": swd["per_split"],
            "swd_per_level": swd["per_level"],
            "swd_vs_floor": _gap(swd, floor),
            "fcn_dice_mean": fcn["dice_mean"], "fcn_dice": {k: v for k, v in fcn.items() if k != "dice_mean"},
            "blur": float(laplacian_variance(images[:n]).mean()),
            "nn_distance": nearest_neighbour_distance(images[:n], real.images)[0]}


def _gap(swd: dict, floor: dict) -> float | None:
    """(swd - floor) in units of their combined spread over splits."""
    spread = float(np.hypot(swd["sd"], floor["sd"]))
    return (swd["mean"] - floor["mean"]) / spread if spread > 0 else None


class _Pairs(NamedTuple):
    images: np.ndarray
    labels: np.ndarray


def quality_report(sample: Callable[[int, int], Any], real: SliceSet, *, seed: int, n: int,
                   untrained: Callable[[int, int], Any] | None = None, val: SliceSet | None = None,
                   reference_segmenter: torch.nn.Module | None = None, device: str | torch.device = "cpu",
                   splits: int = 4) -> dict:
    """Every quality figure for ``sample`` (``sample(n, seed) -> Samples``), for the untrained
    sampler if given, and for real data (the floors), JSON-able: {"trained", "untrained",
    "real": {swd, swd_sd, fcn_dice_mean, fcn_dice, blur, nn_distance, ...}, "meta",
    "definitions"}. ``real`` is the cell's training subset; ``val`` (real validation slices)
    only gives the reference segmenter's own Dice, for scale. Pass ``reference_segmenter`` to
    reuse one across snapshots (``train_reference_segmenter``)."""
    drawn = max(n, swd_samples_needed(real, seed=seed, splits=splits))
    draws = {"trained": sample(drawn, seed)}
    if untrained is not None:
        draws["untrained"] = untrained(drawn, seed)
    swd = matched_swd(real, {k: (v.images, v.labels) for k, v in draws.items()}, seed=seed, splits=splits)
    segmenter = reference_segmenter or train_reference_segmenter(real, seed=seed, device=device)
    report = {name: _figures(d.images, d.labels, swd[name], swd["real"], real, segmenter, n)
              for name, d in draws.items()}
    report.setdefault("untrained", None)
    fcn_real = fcn_score(segmenter, val if val is not None else real)
    report["real"] = {"swd": swd["real"]["mean"], "swd_sd": swd["real"]["sd"],
                      "swd_per_split": swd["real"]["per_split"], "swd_per_level": swd["real"]["per_level"],
                      "fcn_dice_mean": fcn_real["dice_mean"],
                      "fcn_dice": {k: v for k, v in fcn_real.items() if k != "dice_mean"},
                      "fcn_on": "validation slices" if val is not None else "training slices (in-sample)",
                      "blur": float(laplacian_variance(real.images).mean()),
                      "nn_distance": _leave_subject_out_nn(real)}
    report["meta"] = {"seed": seed, "n_samples": n, "n_drawn": drawn, "n_real": len(real), "splits": splits,
                      "swd_set_sizes": swd["sizes"]}
    report["definitions"] = DEFINITIONS
    return report


def swd_against(samples, real: SliceSet, *, seed: int) -> float:
    """One SWD of ``samples`` against as many real training pairs: the cheap score ``select``
    ranks snapshots by (the full figure with its floor is ``quality_report``'s)."""
    rng = np.random.default_rng(seed)
    images, labels = _sample_real(real, len(samples.images), rng)
    return sliced_wasserstein_distance(joint_pictures(images, labels, real.num_classes),
                                       joint_pictures(samples.images[:len(images)], samples.labels[:len(images)],
                                                      real.num_classes), seed=seed)
