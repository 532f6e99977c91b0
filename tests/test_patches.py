"""Patch training with whole-slice evaluation: the network trains on patches, is selected on
whole validation slices and evaluated on whole test slices, in one pass or with a sliding
window; the Dice it reports is that of the same network run on the same whole slices directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmix.datasets.arrays import SliceSet
from synthmix.datasets.preprocess import tile_patches
from synthmix.errors import DataError, StudyError
from synthmix.trainers.checkpoint import CHECKPOINT_FILE
from synthmix.trainers.context import LocalContext
from synthmix.trainers.metrics import segmentation_metrics
from synthmix.trainers.networks import build_network
from synthmix.trainers.segmentation import (SegmentationConfig, SegmentationData, build_segmentation_config,
                                            train_segmentation)

H, W, PATCH = 40, 36, 16  # odd, non-square whole slices; square patches
NET = dict(levels=2, base_filters=8, doubling=True, batch_norm=False)


def slices(subjects: list[str], seed: int, depth: int = 3, channels: int = 2) -> SliceSet:
    """Disks (class 1) holding a square (class 2), seen by two modalities with opposite contrast."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    images, labels, sids, positions = [], [], [], []
    for sid in subjects:
        for z in range(depth):
            cy, cx, r = rng.integers(12, H - 12), rng.integers(12, W - 12), rng.integers(6, 10)
            lab = np.zeros((H, W), np.int64)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
            lab[cy - 2:cy + 2, cx - 2:cx + 2] = 2
            img = [np.choose(lab, [0.0, 1.0, -1.0]), np.choose(lab, [0.0, -0.5, 1.0])][:channels]
            images.append(np.stack(img) + 0.3 * rng.normal(size=(channels, H, W)))
            labels.append(lab)
            sids.append(sid)
            positions.append(z)
    return SliceSet(np.stack(images).astype(np.float32), np.stack(labels), np.array(sids), np.array(positions),
                    {s: (3.0, 0.9, 1.2) for s in subjects}, 3)


def patches(whole: SliceSet) -> SliceSet:
    images, labels, source = tile_patches(whole.images, whole.labels, (PATCH, PATCH), (8, 8))
    return SliceSet(images, labels, whole.subject_ids[source], whole.positions[source], whole.spacing, 3)


@pytest.fixture(scope="module")
def data() -> SegmentationData:
    return SegmentationData(train=patches(slices([f"tr{i}" for i in range(4)], 0)),
                            val=slices(["va0", "va1"], 1), test=slices(["te0", "te1"], 2))


def config(**kw) -> SegmentationConfig:
    base = dict(network=NET, lr=1e-2, batch_size=8, max_steps=60, val_every=20, checkpoint_every=20,
                eval_batch_size=4, seed=0)
    return SegmentationConfig(**{**base, **kw})


def best_network(root) -> torch.nn.Module:
    state = torch.load(root / "latest" / CHECKPOINT_FILE, weights_only=False)
    net = build_network("unet", in_channels=2, num_classes=3, options=NET)
    net.load_state_dict(state["extra"]["best_state"])
    return net.eval()


def direct_dice(net: torch.nn.Module, whole: SliceSet, predict) -> float:
    """Mean over subjects of the foreground Dice of ``predict(net, x)`` on whole slices, by hand."""
    dices = []
    for sid in whole.subjects:
        idx = np.flatnonzero(whole.subject_ids == sid)
        with torch.no_grad():
            pred = predict(net, torch.from_numpy(whole.images[idx])).argmax(1).numpy()
        dices.append(segmentation_metrics(pred, whole.labels[idx], num_classes=3, spacing=whole.spacing[sid],
                                          distances=False)["dice_mean"])
    return float(np.mean(dices))


def test_trains_on_patches_and_reports_the_whole_slice_dice(data, tmp_path):
    assert data.train.images.shape[1:] == (2, PATCH, PATCH) and data.test.images.shape[1:] == (2, H, W)
    result = train_segmentation(config(), data, LocalContext(checkpoint_root=tmp_path))
    net = best_network(tmp_path)
    whole = lambda n, x: n(x)  # noqa: E731  one fully convolutional pass over the whole slice
    assert result.metrics["dice_mean"] == pytest.approx(direct_dice(net, data.test, whole), abs=1e-12)
    # The model was selected on whole validation slices: its best validation Dice is theirs.
    assert max(h["val_dice"] for h in result.val_history) == pytest.approx(direct_dice(net, data.val, whole),
                                                                           abs=1e-12)
    assert result.metrics["dice_1"] > 0.7  # it did learn the disks from 16x16 patches
    assert np.isfinite(result.metrics["hd95_mean"])


def test_sliding_window_evaluation_matches_monai_directly(data, tmp_path):
    from monai.inferers import sliding_window_inference

    cfg = config(inference="sliding_window", window_overlap=0.5, window_blend="gaussian")
    result = train_segmentation(cfg, data, LocalContext(checkpoint_root=tmp_path))
    net = best_network(tmp_path)
    window = lambda n, x: sliding_window_inference(x, (PATCH, PATCH), 4, n, overlap=0.5,  # noqa: E731
                                                   mode="gaussian")
    assert result.metrics["dice_mean"] == pytest.approx(direct_dice(net, data.test, window), abs=1e-12)
    assert max(h["val_dice"] for h in result.val_history) == pytest.approx(direct_dice(net, data.val, window),
                                                                           abs=1e-12)
    whole = direct_dice(net, data.test, lambda n, x: n(x))
    assert result.metrics["dice_mean"] == pytest.approx(whole, abs=0.1)  # windows agree with one pass, roughly


def test_inference_options_are_validated_by_name():
    with pytest.raises(StudyError) as err:
        build_segmentation_config({"inference": "tiles", "window_overlap": 1.0, "window_blend": "max"})
    text = str(err.value)
    assert "inference: must be one of whole, sliding_window" in text
    assert "window_overlap: must be a number in [0, 1)" in text and "window_blend: must be one of" in text
    with pytest.raises(StudyError, match="window_size: only with inference: sliding_window"):
        build_segmentation_config({"window_size": 32})
    assert build_segmentation_config({"inference": "sliding_window", "window_size": 24}).window_size == (24, 24)


def test_channels_must_agree_between_sets(data):
    bad = SegmentationData(train=data.train, val=slices(["v"], 3, depth=1, channels=1), test=data.test)
    with pytest.raises(DataError, match="val slices have 1 channel"):
        train_segmentation(config(max_steps=1), bad, LocalContext())
