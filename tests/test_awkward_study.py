"""An awkward dataset end to end through a real local Ray: odd non-square slices of different
sizes, anisotropic voxels, an oblique LPS affine, two modalities and a patient scanned twice,
run with a labels region of interest, ``resize``, ``patch_size``, sliding-window evaluation and
a generator trained on the patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from awkward_data import SPACING, TWICE, awkward_study_yaml, write_awkward_dataset
from synthmix.datasets.cache import build_cache
from synthmix.datasets.loader import fit_normaliser, load_slices
from synthmix.datasets.nifti import header_geometry
from synthmix.datasets.preprocess import build_preprocess_config, slice_geometry
from synthmix.datasets.splits import SplitPlan
from synthmix.orchestrator.study_run import run_study
from synthmix.trainers.checkpoint import CHECKPOINT_FILE
from synthmix.trainers.generators.artifact import GeneratorArtifact
from synthmix.trainers.networks import build_network
from synthmix.trainers.segmentation import Inference, evaluate

PREPROCESS = "resize: [48, 40], patch_size: 32, patch_stride: 16, crop: {labels: true, margin_mm: 5}"
NETWORK = dict(levels=2, base_filters=4, doubling=True, batch_norm=True)


@pytest.mark.slow
def test_awkward_dataset_end_to_end(tmp_path: Path) -> None:
    manifest = write_awkward_dataset(tmp_path / "data")
    study = tmp_path / "awkward.yaml"
    study.write_text(awkward_study_yaml(manifest, preprocess=PREPROCESS, segmenter="inference: sliding_window"))
    store = run_study(study, storage=tmp_path / "runs", quiet=True)

    # Every cell finished with its row.
    plan = json.loads(store.plan_file.read_text())
    cells = [c["cell_id"] for c in plan["cells"]]
    assert len(cells) == 2 and store.finished_cells() == set(cells)
    rows = pd.concat([pd.read_parquet(store.row_file(c)) for c in cells], ignore_index=True)
    assert rows["dice_mean"].between(0, 1).all() and np.isfinite(rows["hd95_mean"]).all()

    # The two scans of one patient are never split: same side of every split, same subset.
    splits = SplitPlan.load(store.splits_file)
    for s in splits.splits:
        sides = [name for name in ("train", "val", "test") if TWICE[0] in getattr(s, name)]
        assert sides and all(TWICE[1] in getattr(s, name) for name in sides), s.name
        assert (TWICE[0] in s.pool) == (TWICE[1] in s.pool)

    # The generator learnt both modalities on the 32x32 patches, from the training subset only.
    (key,) = {c["generator_key"] for c in plan["cells"] if c["generator_key"]}
    artifact = GeneratorArtifact(store.generator_dir(key))
    assert tuple(artifact.fit.data) == (32, 32) and artifact.encoding.image_channels == 2
    assert artifact.sample(2, seed=0).images.shape == (2, 2, 32, 32)
    assert artifact.training_subjects == sorted(splits.splits[0].train)
    assert (artifact.path / "samples.png").stat().st_size > 0

    # Metrics were computed with the spacing of the cropped, resampled slices.
    split = splits.splits[0]
    fitted = plan["data"]["fitted_crops"][0]  # the box fitted on this split's training pool
    assert (fitted["fold"], fitted["repeat"]) == (split.fold, split.repeat)
    preprocess = build_preprocess_config({**_raw_preprocess(store), "crop": fitted["crop"]})
    entry = build_cache(manifest, preprocess, store.cache_dir)
    record_spacing = {}
    for sid in split.test:
        g = slice_geometry(*header_geometry(manifest.parent / "images" / f"{sid}_t1.nii.gz"), preprocess)
        assert entry.spacing[sid] == pytest.approx(g.spacing)
        assert g.spacing[1:] != pytest.approx(SPACING[:2])  # resampling changed it
        record_spacing[sid] = g.spacing
    test = load_slices(entry, split.test, normaliser=fit_normaliser(entry, split.train, preprocess),
                       training=False, preprocess=preprocess)
    assert test.images.shape[1:] == (2, 48, 40) and test.spacing == record_spacing
    baseline = rows[rows["synthetic"] == 0].iloc[0]
    net = _best_network(store, baseline["cell_id"])
    inference = Inference(window=(32, 32), overlap=0.25)
    metrics, _ = evaluate(net, test, num_classes=3, lcc=False, device="cpu", inference=inference)
    assert metrics["dice_mean"] == pytest.approx(baseline["dice_mean"])
    assert metrics["hd95_mean"] == pytest.approx(baseline["hd95_mean"])


def _raw_preprocess(store) -> dict:
    import yaml

    return yaml.safe_load(store.study_file.read_text())["dataset"]["preprocess"]


def _best_network(store, cell_id: str) -> torch.nn.Module:
    """The cell's selected weights, from its last Ray Train checkpoint."""
    checkpoints = sorted(Path(store.ray_storage("train")).glob(f"cell-{cell_id}*/**/{CHECKPOINT_FILE}"))
    assert checkpoints, f"no checkpoint of cell {cell_id}"
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)
    net = build_network("unet", in_channels=2, num_classes=3, options=NETWORK)
    net.load_state_dict(state["extra"]["best_state"])
    return net.eval()
