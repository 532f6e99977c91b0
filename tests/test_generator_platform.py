"""The generator platform every family shares: channel encoding, shape fit, the session's random
streams, the training flow (artifact, rule 3, resume, divergence, snapshot selection) and safe
loading."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from synthmix.datasets.arrays import SliceSet
from synthmix.errors import DataError, StudyError, SynthmixError, TrainingDiverged
from synthmix.trainers.checkpoint import load_checkpoint, load_tensors
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators import GENERATORS, GeneratorData, dcgan
from synthmix.trainers.generators.artifact import ARTIFACT_FILES, GeneratorArtifact, is_complete
from synthmix.trainers.generators.encoding import IntensityMap, JointEncoding, ShapeFit, decode_labels, \
    encode_labels, label_channels
from synthmix.trainers.generators.flow import GeneratorSpec, _jsonable, train_generator
from synthmix.trainers.generators.masks import MaskSource, MaskSpec
from synthmix.trainers.generators.session import GeneratorSession, SelectSpec, build_select_spec
from toy_slices import ellipse_slices

TINY = dict(latent_dim=16, base_filters=4, batch_size=4, n_critic=2)
QUALITY = {"samples": 16, "reference_steps": 3}


def _spec(seed: int = 0, select: dict | None = None, **config) -> GeneratorSpec:
    return GeneratorSpec(key="k", name="dcgan_wgangp", config={**TINY, **config}, seed=seed,
                         select=select or {}, quality=QUALITY)


def _train(spec: GeneratorSpec, data: SliceSet, root: Path, name: str = "artifact", context=None):
    context = context or LocalContext(checkpoint_root=root / f"ckpt-{name}")
    return train_generator(spec, GeneratorData(data), context, root / name)


# ---- encoding -----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_label_encoding_round_trip(num_classes):
    labels = torch.randint(0, num_classes, (3, 8, 8))
    enc = encode_labels(labels, num_classes)
    assert enc.shape[1] == label_channels(num_classes)
    assert set(enc.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(decode_labels(enc, num_classes), labels)


def test_binary_label_thresholds_at_zero():
    channel = torch.tensor([[[[-0.5, -0.01, 0.01, 0.7]]]])
    assert decode_labels(channel, 2).tolist() == [[[0, 0, 1, 1]]]


def test_intensity_map_round_trip_for_z_scored_images():
    images = np.random.default_rng(0).normal(0, 2, (50, 2, 8, 8)).astype(np.float32)
    m = IntensityMap.fit(images)
    np.testing.assert_allclose(m.low, np.percentile(images, 0.5, axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(m.high, np.percentile(images, 99.5, axis=(0, 2, 3)), rtol=1e-6)
    t = m.to_tanh(torch.from_numpy(images))
    assert t.min() >= -1 - 1e-6 and t.max() <= 1 + 1e-6
    low, high = np.array(m.low)[None, :, None, None], np.array(m.high)[None, :, None, None]
    inside = (images >= low) & (images <= high)
    assert inside.mean() > 0.98
    back = m.from_tanh(t).numpy()
    np.testing.assert_allclose(back, np.clip(images, low, high), atol=1e-5)  # outliers are clipped
    assert IntensityMap.from_dict(m.to_dict()).low == m.low


def test_intensity_map_is_not_squeezed_by_a_few_outliers():
    images = np.random.default_rng(0).uniform(-1, 2, (20, 1, 16, 16)).astype(np.float32)
    images[0, 0, 0, :3] = 8.0
    t = IntensityMap.fit(images).to_tanh(torch.from_numpy(images))
    assert torch.quantile(t, 0.9) > 0.7


def test_shape_fit_pads_centred_and_crops_back():
    fit = ShapeFit((5, 3), (8, 8))
    images = np.arange(2 * 2 * 15, dtype=np.float32).reshape(2, 2, 5, 3)
    labels = np.ones((2, 5, 3), np.int64)
    padded, plab = fit.pad(images, labels)
    assert padded.shape == (2, 2, 8, 8) and plab.shape == (2, 8, 8)
    assert plab.sum() == labels.sum()  # padding is background
    np.testing.assert_array_equal(fit.crop(padded), images)
    np.testing.assert_array_equal(fit.crop(plab), labels)
    assert ShapeFit.from_dict(fit.to_dict()) == fit


# ---- session streams: the same global draws on 1 or N workers ------------------------------------

class _Rank:
    def __init__(self, rank: int, world: int):
        self.device, self.world_rank, self.world_size = torch.device("cpu"), rank, world


def test_global_batches_are_the_same_draws_on_one_or_two_workers():
    one = GeneratorSession(_Rank(0, 1), seed=3, total_steps=1, checkpoint_every=1)
    two = [GeneratorSession(_Rank(r, 2), seed=3, total_steps=1, checkpoint_every=1) for r in (0, 1)]
    for _ in range(3):
        rows = one.rows(100, 8)
        assert np.array_equal(rows, np.concatenate([s.rows(100, 8) for s in two]))
        z = one.randn(8, 5)
        assert torch.equal(z, torch.cat([s.randn(8, 5) for s in two]))
    with pytest.raises(StudyError, match="not divisible"):
        two[0].rows(100, 7)


def test_select_spec_validates():
    assert build_select_spec({"by": "swd", "every": 5}) == SelectSpec("swd", 5)
    with pytest.raises(StudyError, match="by: unknown 'fid'"):
        build_select_spec({"by": "fid"})
    with pytest.raises(StudyError, match="often: unknown key"):
        build_select_spec({"often": 3})


# ---- the training flow ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    data = ellipse_slices(["b", "a", "c"])
    context = LocalContext(checkpoint_root=root / "ckpt")
    artifact = _train(_spec(steps=4, checkpoint_every=2), data, root, context=context)
    return artifact, data, context


def test_artifact_is_complete_reloadable_and_plain_data(trained):
    artifact, data, context = trained
    assert is_complete(artifact.path)
    assert sorted(p.name for p in artifact.path.iterdir()) == sorted(ARTIFACT_FILES)
    assert [p.name for p in artifact.path.parent.iterdir() if p.name.startswith(".")] == []  # no temp left
    reopened = GeneratorArtifact(artifact.path)
    assert reopened.num_classes == 3 and reopened.spec["shape"] == {"data": [32, 32], "model": [32, 32]}
    assert reopened.spec["step"] == 4 and reopened.family_name == "dcgan_wgangp"
    assert all(isinstance(v, torch.Tensor) for v in load_tensors(artifact.path / "weights.pt").values())
    a, b = reopened.sample(5, seed=3), reopened.sampler().sample(5, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.labels.dtype == np.int64 and a.labels.max() < 3 and a.images.shape == (5, 1, 32, 32)
    assert a.extras["label_channels"].shape == (5, 3, 32, 32) and a.extras["latent_norm"].shape == (5,)
    for key in ("swd", "swd_untrained", "nn_distance", "nn_distance_untrained", "nn_distance_real", "fcn_dice_mean", "blur_real"):
        assert np.isfinite(reopened.quality[key])
    assert [m["step"] for m in context.history] == [2, 4]
    assert {"critic_loss", "generator_loss", "wasserstein"} <= set(context.history[0])


def test_rule3_training_subjects_are_exactly_the_given_subset(trained):
    artifact, data, _ = trained
    assert artifact.training_subjects == ["a", "b", "c"] == sorted(data.subjects)


def test_rule3_batches_come_only_from_the_given_subset(tmp_path, monkeypatch):
    everything = ellipse_slices(["t1", "t2", "v1", "v2"], seed=1)
    train_mask = np.isin(everything.subject_ids, ["t1", "t2"])
    subset = SliceSet(everything.images[train_mask], everything.labels[train_mask],
                      everything.subject_ids[train_mask], everything.positions[train_mask],
                      {s: everything.spacing[s] for s in ("t1", "t2")}, everything.num_classes)
    drawn = []
    real_batch = GeneratorSession.batch
    monkeypatch.setattr(GeneratorSession, "batch",
                        lambda self, rows, n: drawn.append(real_batch(self, rows, n).clone()) or drawn[-1])
    artifact = _train(_spec(steps=3, checkpoint_every=3), subset, tmp_path)
    encoding = JointEncoding(1, 3, IntensityMap.fit(subset.images))

    def encoded(s: np.ndarray) -> torch.Tensor:
        return encoding.encode(torch.from_numpy(everything.images[s]), torch.from_numpy(everything.labels[s])).flatten(1)

    train_rows, held_out_rows = encoded(train_mask), encoded(~train_mask)
    assert len(drawn) == 3 * TINY["n_critic"]
    for batch in drawn:
        for row in batch.flatten(1):
            assert (train_rows == row).all(dim=1).any()
            assert not (held_out_rows == row).all(dim=1).any()
    assert artifact.training_subjects == ["t1", "t2"]


def test_skip_empty_draws_only_slices_with_foreground(tmp_path, monkeypatch):
    data = ellipse_slices(["a", "b"], seed=3)
    empty = SliceSet(np.full_like(data.images[:3], -0.8), np.zeros_like(data.labels[:3]), np.array(["a"] * 3),
                     np.arange(4, 7), data.spacing, 3)
    mixed = SliceSet(np.concatenate([data.images, empty.images]), np.concatenate([data.labels, empty.labels]),
                     np.concatenate([data.subject_ids, empty.subject_ids]),
                     np.concatenate([data.positions, empty.positions]), data.spacing, 3)
    drawn = []
    real_batch = GeneratorSession.batch
    monkeypatch.setattr(GeneratorSession, "batch", lambda self, rows, n: drawn.append(len(rows)) or real_batch(self, rows, n))
    _train(_spec(steps=1, checkpoint_every=1, skip_empty=True), mixed, tmp_path)
    assert drawn[0] == len(data)  # the three all-background slices are not among the rows
    with pytest.raises(DataError, match="skip_empty"):
        _train(_spec(steps=1, checkpoint_every=1, skip_empty=True), empty, tmp_path, "x")


class _DiesAfter(LocalContext):
    """Simulates a worker that dies right after reporting the checkpoint of ``step``."""

    def __init__(self, step: int, **kwargs):
        super().__init__(**kwargs)
        self.die_at = step

    def report(self, metrics, checkpoint_dir=None):
        super().report(metrics, checkpoint_dir)
        if metrics["step"] == self.die_at:
            raise RuntimeError("worker died")


def test_resume_continues_step_counter_snapshots_and_matches_uninterrupted_run(tmp_path):
    data = ellipse_slices(["a", "b"], seed=2)
    spec = _spec(seed=5, select={"by": "swd", "every": 2}, steps=6, checkpoint_every=2)
    whole = _train(spec, data, tmp_path, "whole")
    with pytest.raises(RuntimeError, match="worker died"):
        _train(spec, data, tmp_path, "resumed", context=_DiesAfter(4, checkpoint_root=tmp_path / "c2"))
    assert not (tmp_path / "resumed").exists()
    torch.manual_seed(123)  # the resumed run must not depend on the process's global RNG
    second = LocalContext(checkpoint_root=tmp_path / "c2")
    resumed = _train(spec, data, tmp_path, "resumed", context=second)
    assert [m["step"] for m in second.history] == [6]
    for key, value in whole.weights().items():
        torch.testing.assert_close(resumed.weights()[key], value, rtol=0, atol=0)
    assert resumed.spec["selection"] == whole.spec["selection"]
    assert [s["step"] for s in resumed.spec["selection"]["snapshots"]] == [2, 4, 6]


def test_select_keeps_the_best_scoring_snapshot(tmp_path, monkeypatch):
    """A planted scorer: the snapshot of step 4 scores best, so its weights are published."""
    from synthmix.trainers.generators import flow

    planted = iter([9.0, 1.0, 5.0])  # the scores of the snapshots at steps 2, 4, 6
    monkeypatch.setattr(flow, "_scorer", lambda by, *args, **kwargs: lambda weights: next(planted))
    snapshots = {}
    real_end_step = GeneratorSession.end_step

    def end_step(self, losses, *, weights):
        real_end_step(self, losses, weights=weights)
        snapshots[self.step] = {k: v.clone() for k, v in weights().items()}

    monkeypatch.setattr(GeneratorSession, "end_step", end_step)
    artifact = _train(_spec(select={"by": "swd", "every": 2}, steps=6, checkpoint_every=6),
                      ellipse_slices(["a", "b"]), tmp_path)
    selection = artifact.spec["selection"]
    assert selection["chosen_step"] == 4 and selection["chosen_score"] == 1.0
    assert [s["score"] for s in selection["snapshots"]] == [9.0, 1.0, 5.0]
    for key, value in artifact.weights().items():
        torch.testing.assert_close(value, snapshots[4][key], rtol=0, atol=0)
    assert artifact.quality["selection"]["chosen_step"] == 4


def test_nan_loss_raises_training_diverged(tmp_path, monkeypatch):
    monkeypatch.setattr(dcgan, "gradient_penalty", lambda *a: (torch.zeros(1), torch.zeros(1),
                                                                torch.tensor(float("nan"), requires_grad=True)))
    with pytest.raises(TrainingDiverged, match="step 1"):
        _train(_spec(steps=2), ellipse_slices(["a"]), tmp_path)
    assert not (tmp_path / "artifact").exists()


def test_odd_slices_train_padded_and_samples_come_back_at_their_size(tmp_path):
    data = ellipse_slices(["a", "b"], size=32)
    odd = SliceSet(data.images[:, :, :30, :23], data.labels[:, :30, :23], data.subject_ids, data.positions,
                   data.spacing, 3)
    artifact = _train(_spec(steps=1, checkpoint_every=1), odd, tmp_path)
    assert artifact.spec["shape"] == {"data": [30, 23], "model": [32, 32]}
    s = artifact.sample(3, seed=0)
    assert s.images.shape == (3, 1, 30, 23) and s.labels.shape == (3, 30, 23)
    assert s.extras["label_channels"].shape == (3, 3, 30, 23)
    big = SliceSet(np.zeros((2, 1, 300, 20), np.float32), np.zeros((2, 300, 20), np.int64), np.array(["a", "a"]),
                   np.arange(2), data.spacing, 3)
    with pytest.raises(DataError, match="300x20 exceed"):
        _train(_spec(steps=1), big, tmp_path, "big")


def test_bad_data_is_refused_before_training(tmp_path):
    data = ellipse_slices(["a"], size=32)
    bad_labels = SliceSet(data.images, data.labels + 5, data.subject_ids, data.positions, data.spacing, 3)
    with pytest.raises(DataError, match="outside"):
        _train(_spec(), bad_labels, tmp_path)


def test_binary_label_generator_trains_and_samples(tmp_path):
    artifact = _train(_spec(steps=2, checkpoint_every=2), ellipse_slices(["a", "b"], num_classes=2), tmp_path)
    s = artifact.sample(6, seed=0)
    assert set(np.unique(s.labels).tolist()) <= {0, 1} and s.extras["label_channels"].shape[1] == 1


def test_mask_source_uses_each_mask_once_per_pass_and_transforms_keep_labels():
    labels = np.stack([np.full((8, 8), k % 3) for k in range(5)])
    labels[:, :2] = 0
    masks = MaskSource(labels).take(10, seed=1)
    firsts = sorted(int(m[4, 4]) for m in masks[:5])
    assert firsts == sorted(int(m[4, 4]) for m in labels)  # one pass: each mask once
    moved = MaskSource(labels, MaskSpec(transform=True, shift_px=2, scale=0.2)).take(20, seed=2)
    assert moved.dtype == np.int64 and set(np.unique(moved)) <= {0, 1, 2}
    assert any(not any(np.array_equal(m, l) for l in labels) for m in moved)  # new masks appear


# ---- nothing is unpickled ---------------------------------------------------------------------------

class _Plant:
    """Unpickling this creates a file: the proof that a loader ran foreign code."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def plant_pickle(path: Path, target: Path) -> None:
    """A torch-style file whose unpickling would create ``target``."""
    torch.save({"weights": _Plant(str(target))}, path)


def test_a_planted_pickle_is_refused_as_weights_and_as_checkpoint(trained, tmp_path):
    artifact, _, _ = trained
    target = tmp_path / "pwned"
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(artifact.path, bad)
    plant_pickle(bad / "weights.pt", target)
    with pytest.raises(SynthmixError, match=r"weights\.pt: not a tensor file"):
        GeneratorArtifact(bad).sample(2, seed=0)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    plant_pickle(ckpt / "state.pt", target)
    with pytest.raises(SynthmixError, match=r"state\.pt: not a tensor file"):
        load_checkpoint(ckpt, models={}, optimizers={})
    assert not target.exists()
    assert pickle.dumps(1)  # (the pickle module itself is fine; only loading foreign files is not)


def test_no_weights_only_false_remains_in_the_package():
    root = Path(__file__).resolve().parents[1] / "synthmix"
    offenders = [str(p) for p in root.rglob("*.py") if "weights_only=False" in p.read_text().replace(" ", "")]
    assert offenders == []


# ---- two workers (DDP over gloo, CPU) -------------------------------------------------------------

class _DDPContext:
    """What the Ray Train context does for a trainer, without Ray: DDP models, per-rank reports."""

    def __init__(self, rank: int, world: int):
        self.device, self.world_rank, self.world_size = torch.device("cpu"), rank, world
        self.reports: list[tuple[int, bool]] = []

    def prepare_model(self, model):
        return torch.nn.parallel.DistributedDataParallel(model)

    def report(self, metrics, checkpoint_dir=None):
        self.reports.append((metrics["step"], checkpoint_dir is not None))

    def latest_checkpoint(self):
        return None


def _ddp_worker(rank: int, world: int, port: int, root: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        context = _DDPContext(rank, world)
        train_generator(_spec(steps=4, checkpoint_every=2), GeneratorData(ellipse_slices(["a", "b"])), context,
                        Path(root) / "artifact")
        Path(root, f"rank{rank}.json").write_text(json.dumps(context.reports))
        # leave together: a rank that tears gloo down while its peer is still writing the
        # artifact can abort in C++ (seen once in CI: SIGABRT in rank 1 after its last step)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_workers_report_at_the_same_steps_and_rank0_writes_the_artifact(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == [[2, True], [4, True]] and rank1 == [[2, False], [4, False]]
    assert is_complete(tmp_path / "artifact")


@pytest.mark.parametrize("name", sorted(GENERATORS.names()))
def test_every_family_rebuilds_its_default_config_from_the_artifact_json(name):
    """An artifact records the built config as JSON (flow) and a sampler is loaded from it
    (artifact): the defaults must survive that round trip (ddpm's unset network once did not)."""
    family = GENERATORS.get(name)
    config = family.config({})
    assert family.config(_jsonable(dataclasses.asdict(config))) == config
