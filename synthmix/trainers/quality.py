"""Quality figures of a generator: SWD with its real-vs-real floor, FCN score, blur, memorisation.

- ``sliced_wasserstein_distance``: the multi-scale patch SWD of progressive GANs (Karras et al.
  2018, ``metrics/sliced_wasserstein.py`` of their code), the measure 004 selects checkpoints
  by. Reimplemented here (numpy + scipy) because no maintained library ships it.
- ``matched_swd``: that SWD against its floor on equal terms. A few dozen real slices (a
  phantom volume has 16, up to half of them empty end slices) make any SWD noisy, so the floor
  is SWD between two halves of the training subset matched by slice position, and every other
  set is compared with the same reference half at the same set size, over several splits and
  draws: a figure is read as its paired gap to the floor in units of that gap's spread.
- ``fcn_score`` (002): a reference segmenter trained on the real training subset segments the
  synthetic images; Dice against their own labels.
- ``laplacian_variance`` (002): blurriness.
- ``nearest_neighbour_distance``: L2 distance from each synthetic image to its closest training
  image (torch.cdist), the memorisation check of 001: a generator that copies its training data
  scores ~0.
- ``quality_report``: every figure for a trained sampler, the untrained one and real data.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import scipy.ndimage
import torch

from synthmix.datasets.arrays import SliceSet

# The 5x5 binomial kernel of cv2.pyrDown/pyrUp, as in the PGGAN code.
_GAUSSIAN = np.float32([[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6],
                        [4, 16, 24, 16, 4], [1, 4, 6, 4, 1]]) / 256.0


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
        # (directions, descriptors): each projection sorted along a contiguous row, several
        # times faster than sorting the columns of a @ dirs
        proj_a = np.sort(dirs.T @ a.T, axis=1)
        proj_b = np.sort(dirs.T @ b.T, axis=1)
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


# ---- blurriness ---------------------------------------------------------------------------------

# The 3x3 Laplacian of cv2.Laplacian (ksize=1), the usual "variance of Laplacian" focus measure.
_LAPLACIAN = np.float32([[0, 1, 0], [1, -4, 1], [0, 1, 0]])


def laplacian_variance(images: np.ndarray) -> np.ndarray:
    """(n,) sharpness of each image (n, C, H, W): the variance of its Laplacian (002, after
    Pech-Pacheco et al.), averaged over channels; lower is blurrier."""
    lap = scipy.ndimage.correlate(np.asarray(images, np.float32), _LAPLACIAN[None, None], mode="reflect")
    return lap.reshape(*lap.shape[:2], -1).var(axis=2).mean(axis=1).astype(np.float64)


# ---- SWD against position-matched real halves -------------------------------------------------------

def relative_positions(real: SliceSet) -> np.ndarray:
    """(N,) each slice's place along its own volume's slicing axis, 0 (first slice) to 1 (last),
    so subjects with different slice counts line up."""
    rel = np.zeros(len(real))
    for sid in np.unique(real.subject_ids):
        mine = real.subject_ids == sid
        pos = real.positions[mine].astype(np.float64)
        span = pos.max() - pos.min()
        rel[mine] = (pos - pos.min()) / span if span > 0 else 0.5
    return rel


def position_matched_halves(real: SliceSet, *, seed: int, splits: int, max_pairs: int | None = None
                            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``splits`` pairs of disjoint boolean masks (A, B) over the slices: real halves matched by
    slice position.

    The slices are ordered by relative position (random order among equals) and taken in
    consecutive pairs; one of each pair goes to A, the other to B. Both halves then hold the same
    mix of positions (the phantom's empty end slices included: up to half of a volume) from all
    subjects, whatever their number, so the floor measures two real sets of the same make-up,
    not how one subject differs from the others; with one subject the pairs are neighbouring
    slices. With more than ``max_pairs`` pairs, evenly spaced ones are kept (the halves stay
    matched, the SWD's cost bounded)."""
    rel = relative_positions(real)
    halves = []
    for s in range(splits):
        rng = np.random.default_rng([seed, s])
        order = np.lexsort((rng.random(len(real)), rel))
        pairs = order[: len(order) // 2 * 2].reshape(-1, 2)
        if max_pairs is not None and len(pairs) > max_pairs:
            pairs = pairs[np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int)]
        pick = rng.integers(0, 2, size=len(pairs))
        a, b = np.zeros(len(real), bool), np.zeros(len(real), bool)
        a[pairs[np.arange(len(pairs)), pick]] = True
        b[pairs[np.arange(len(pairs)), 1 - pick]] = True
        halves.append((a, b))
    return halves


def stratified_draws(labels: np.ndarray, m: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` index sets of m pairs, each a stratified sample of the set by labelled area.

    Sorted by the share of pixels the labels mark as foreground (random order among equals:
    the empty slices), the set is cut into m strata of equal count and each draw takes one pair
    at random from every stratum. The set's own distribution is kept (a generator that makes
    too many empty slices still shows), but the mix of a draw no longer varies the way m
    independent picks do: a real half is a position-matched, not a random, set, and an
    unstratified draw of real held-out slices scores well above the floor (25 x1e3 on the
    quickstart) for that reason alone."""
    if len(labels) < m:
        raise ValueError(f"a compared set needs at least {m} pairs (the size of a real half), got {len(labels)}")
    area = (np.asarray(labels) > 0).reshape(len(labels), -1).mean(axis=1)
    order = np.lexsort((rng.random(len(labels)), area))
    edges = np.linspace(0, len(labels), m + 1).round().astype(int)
    return [order[rng.integers(edges[:-1], edges[1:])] for _ in range(count)]


def _summary(values: np.ndarray, per_level: list[dict[int, float]], floor: np.ndarray) -> dict:
    """Mean and SD over splits; the paired gap to the floor (same split, same reference B): its
    mean, SD over splits and standard error; the gap in units of the floor's own spread."""
    sd = lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
    gap, floor_sd = values - floor, sd(floor)
    return {"mean": float(values.mean()), "sd": sd(values), "per_split": values.round(3).tolist(),
            "gap": float(gap.mean()), "gap_sd": sd(gap), "gap_se": sd(gap) / np.sqrt(len(gap)),
            "vs_floor": float(gap.mean()) / floor_sd if floor_sd > 0 else None,
            "per_level": {str(k): float(np.mean([d[k] for d in per_level])) for k in per_level[0]}}


def matched_swd(real: SliceSet, sets: dict[str, tuple[np.ndarray, np.ndarray]], *, seed: int,
                splits: int = 8, draws: int = 2, max_pairs: int | None = None) -> dict:
    """SWD of each compared set and of real data (the floor), at equal set sizes.

    Per split (``position_matched_halves`` of the training subset only: rule 3), real half B is
    the reference; the floor is SWD(B, A), and each compared set's figure the mean of SWD(B, X)
    over ``draws`` sets X of |A| of its pairs (``stratified_draws``: a sample has no slice
    position, so its draws are matched by labelled area instead), so the floor and every figure
    compare sets of the same sizes and make-up against the same reference, and a figure's paired
    gap to the floor leaves out how B itself was drawn. Real slices of held-out subjects score
    at the floor (``benchmarks/quality_figures.py``).

    Returns {"real": summary, name: summary, "sizes": [[|A|, |B|], ...]}: each summary the mean
    and SD over splits of the level-averaged SWD x 1e3, its paired gap to the floor (mean, SD,
    standard error over splits), that gap in units of the floor's SD (``vs_floor``), its
    per-split and per-level values. The splits reuse the same few real slices, so the standard
    error is a lower bound; the floor's SD is the spread a perfect generator stays within.
    """
    k = real.num_classes
    halves = position_matched_halves(real, seed=seed, splits=splits, max_pairs=max_pairs)
    m = int(halves[0][0].sum())
    if m < 1:
        raise ValueError(f"the SWD floor needs at least 2 real slices, got {len(real)}")
    rng = np.random.default_rng([seed, 1])
    chunks = {name: stratified_draws(labels, m, splits * draws, rng) for name, (_, labels) in sets.items()}
    values: dict[str, list] = {"real": [], **{name: [] for name in sets}}
    levels: dict[str, list] = {name: [] for name in values}
    for s, (a, b) in enumerate(halves):
        reference = joint_pictures(real.images[b], real.labels[b], k)
        level_seed = seed * 1000 + s
        floor = swd_per_level(reference, joint_pictures(real.images[a], real.labels[a], k), seed=level_seed)
        values["real"].append(np.mean(list(floor.values())))
        levels["real"].append(floor)
        for name, (images, labels) in sets.items():
            per = [swd_per_level(reference, joint_pictures(images[idx], labels[idx], k), seed=level_seed)
                   for idx in chunks[name][s * draws:(s + 1) * draws]]
            mean_levels = {res: float(np.mean([p[res] for p in per])) for res in per[0]}
            values[name].append(np.mean(list(mean_levels.values())))
            levels[name].append(mean_levels)
    floor = np.array(values["real"])
    out = {name: _summary(np.array(v), levels[name], floor) for name, v in values.items()}
    return {**out, "sizes": [[int(a.sum()), int(b.sum())] for a, b in halves]}


def swd_samples_needed(real: SliceSet, *, seed: int, splits: int = 8, draws: int = 2,
                       max_pairs: int | None = None) -> int:
    """How many pairs a compared set should have for ``matched_swd``: one per pair drawn, so
    strata hold as many pairs as there are draws."""
    a, _ = position_matched_halves(real, seed=seed, splits=1, max_pairs=max_pairs)[0]
    return int(a.sum()) * splits * draws


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
           "levels. Per split of the real training subset into halves A, B matched by slice position: "
           "SWD(B, |A| pairs of the set), averaged over draws; mean (swd_sd: SD) over splits. real: SWD(B, A), "
           "the floor at the same set sizes",
    "swd_gap": "swd - floor, paired by split (same reference B); swd_gap_sd its SD over splits, swd_gap_se "
               "its standard error (a lower bound: the splits reuse the same real slices)",
    "swd_vs_floor": "swd_gap / the floor's SD over splits (real: swd_sd): held-out real subjects stay within "
                    "about 1; 2 or more is told apart from real data",
    "fcn_dice_mean": "Dice of a reference UNet trained on the real training subset, predicting the pairs' "
                     "images, against their labels, pooled over pairs; real: on the validation slices if "
                     "given, else on the training slices (in-sample)",
    "blur": "mean variance of the Laplacian of the images (lower = blurrier)",
    "nn_distance": "mean L2 distance from each image to its nearest real training image; real: leave-one-"
                   "subject-out within the training subset",
}


def _swd_figures(swd: dict) -> dict:
    return {"swd": swd["mean"], "swd_sd": swd["sd"], "swd_gap": swd["gap"], "swd_gap_sd": swd["gap_sd"],
            "swd_gap_se": swd["gap_se"], "swd_vs_floor": swd["vs_floor"],
            "swd_per_split": swd["per_split"], "swd_per_level": swd["per_level"]}


def _figures(images: np.ndarray, labels: np.ndarray, swd: dict, real: SliceSet,
             segmenter: torch.nn.Module, n: int) -> dict:
    fcn = fcn_score(segmenter, _Pairs(images[:n], labels[:n]))
    return {**_swd_figures(swd),
            "fcn_dice_mean": fcn["dice_mean"], "fcn_dice": {k: v for k, v in fcn.items() if k != "dice_mean"},
            "blur": float(laplacian_variance(images[:n]).mean()),
            "nn_distance": nearest_neighbour_distance(images[:n], real.images)[0]}


class _Pairs(NamedTuple):
    images: np.ndarray
    labels: np.ndarray


def quality_report(sample: Callable[[int, int], Any], real: SliceSet, *, seed: int, n: int,
                   untrained: Callable[[int, int], Any] | None = None, val: SliceSet | None = None,
                   reference_segmenter: torch.nn.Module | None = None, device: str | torch.device = "cpu",
                   splits: int = 8, draws: int = 2, others: dict[str, Callable[[int, int], Any]] | None = None
                   ) -> dict:
    """Every quality figure for ``sample`` (``sample(n, seed) -> Samples``), for the untrained
    sampler if given, for any ``others`` (name -> sample function: e.g. held-out real slices in
    a benchmark), and for real data (the floors), JSON-able: {"trained", "untrained", "real",
    <others>: {swd, swd_sd, swd_gap, swd_gap_sd, swd_vs_floor, fcn_dice_mean, fcn_dice, blur,
    nn_distance, ...}, "meta", "definitions"}. ``real`` is the cell's training subset, the only
    real data the SWD floor uses (rule 3); ``val`` (real validation slices) only gives the
    reference segmenter's own Dice, for scale. Pass ``reference_segmenter`` to reuse one across
    snapshots (``train_reference_segmenter``). ``n`` pairs give the FCN score, blur and NN
    distance; the SWD's real halves hold up to n/2 slices each, its compared sets as many."""
    max_pairs = max(2, n // 2)
    drawn = max(n, swd_samples_needed(real, seed=seed, splits=splits, draws=draws, max_pairs=max_pairs))
    draws_by_name = {"trained": sample(drawn, seed)}
    if untrained is not None:
        draws_by_name["untrained"] = untrained(drawn, seed)
    for name, fn in (others or {}).items():
        draws_by_name[name] = fn(drawn, seed)
    swd = matched_swd(real, {k: (v.images, v.labels) for k, v in draws_by_name.items()}, seed=seed,
                      splits=splits, draws=draws, max_pairs=max_pairs)
    segmenter = reference_segmenter or train_reference_segmenter(real, seed=seed, device=device)
    report = {name: _figures(d.images, d.labels, swd[name], real, segmenter, n) for name, d in draws_by_name.items()}
    report.setdefault("untrained", None)
    fcn_real = fcn_score(segmenter, val if val is not None else real)
    real_swd = _swd_figures(swd["real"])
    report["real"] = {**{k: v for k, v in real_swd.items() if not k.startswith(("swd_gap", "swd_vs"))},
                      "fcn_dice_mean": fcn_real["dice_mean"],
                      "fcn_dice": {k: v for k, v in fcn_real.items() if k != "dice_mean"},
                      "fcn_on": "validation slices" if val is not None else "training slices (in-sample)",
                      "blur": float(laplacian_variance(real.images).mean()),
                      "nn_distance": _leave_subject_out_nn(real)}
    report["meta"] = {"seed": seed, "n_samples": n, "n_drawn": drawn, "n_real": len(real), "splits": splits,
                      "swd_draws": draws, "swd_set_sizes": swd["sizes"]}
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
