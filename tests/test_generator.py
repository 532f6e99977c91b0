"""The joint image+label WGAN-GP generator: networks, penalty, sampling, artifact, resume, rule 3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthmix.datasets.arrays import SliceSet, SyntheticPool
from synthmix.errors import DataError, StudyError, TrainingDiverged
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators import GENERATORS, dcgan, training
from synthmix.trainers.generators.artifact import ARTIFACT_FILES, GeneratorArtifact, is_complete
from synthmix.trainers.generators.training import GeneratorConfig, build_generator_config, train_generator


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


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Two torch threads on two cores shared with other jobs run ~10x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(latent_dim=16, base_filters=4, batch_size=4, n_critic=2, pool_size=8, quality_samples=8)


# ---- config ------------------------------------------------------------------------------------

def test_config_defaults_keep_003_loss_and_paper_settings_are_003():
    c = GeneratorConfig()
    assert (c.betas, c.gp_lambda, c.amp, c.upsampling, c.skip_empty) == ((0.5, 0.9), 10.0, False, "resize", False)
    assert (c.lr, c.n_critic) == (1e-3, 2)  # the CPU budget (see GeneratorConfig's docstring)
    paper = build_generator_config(dict(training.PAPER_SETTINGS))
    assert (paper.lr, paper.betas, paper.n_critic, paper.gp_lambda, paper.steps) == (1e-4, (0.5, 0.9), 5, 10.0, 10000)


def test_config_rejects_unknown_upsampling_and_non_bool_skip_empty():
    with pytest.raises(StudyError, match="upsampling.*bilinear"):
        build_generator_config({"upsampling": "bilinear"})
    with pytest.raises(StudyError, match="skip_empty"):
        build_generator_config({"skip_empty": "yes"})


def test_build_config_rejects_unknown_keys_by_name():
    assert build_generator_config({"steps": 7, "betas": [0.0, 0.99]}) == GeneratorConfig(steps=7, betas=(0.0, 0.99))
    with pytest.raises(StudyError, match="n_critics"):
        build_generator_config({"n_critics": 3})
    with pytest.raises(StudyError, match="batch_size"):
        build_generator_config({"batch_size": 0})


def test_registry_entry():
    family = GENERATORS.get("dcgan_wgangp")
    assert family.config({"steps": 3}).steps == 3
    assert family.train is train_generator


# ---- networks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("upsampling", ["resize", "transpose"])
@pytest.mark.parametrize("size", [32, 64, 128])
def test_generator_and_critic_shapes(size, upsampling):
    g = dcgan.Generator(latent_dim=8, out_channels=5, size=size, base_filters=4, upsampling=upsampling)
    c = dcgan.Critic(in_channels=5, size=size, base_filters=4)
    x = g(torch.randn(3, 8))
    assert x.shape == (3, 5, size, size)
    assert x.abs().max() <= 1
    assert c(x).shape == (3,)
    transposed = any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    assert transposed == (upsampling == "transpose")


def test_he_init_uses_the_true_fan_in_of_each_layer():
    torch.manual_seed(0)
    # Conv2d: fan-in = in * k * k. ConvTranspose2d (4x4, stride 2): each output pixel sums
    # in * 4 * 4 / 2^2 products; torch's own fan computation would use the out channels.
    for module, fan_in in [(torch.nn.Conv2d(32, 64, 3), 32 * 9),
                           (torch.nn.ConvTranspose2d(256, 8, 4, stride=2, padding=1), 256 * 4)]:
        dcgan._he_init(module)
        assert module.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
        assert module.bias.abs().max() == 0
    # The transposed conv's output variance is then ~2 x its input's second moment, as for a conv.
    up = torch.nn.ConvTranspose2d(256, 8, 4, stride=2, padding=1)
    dcgan._he_init(up)
    x = torch.randn(64, 256, 8, 8)
    assert up(x)[:, :, 1:-1, 1:-1].var().item() == pytest.approx(2.0, rel=0.1)


def test_different_latents_give_different_samples_in_eval_mode():
    """Identical samples for different z was the symptom of the untrained-looking generator:
    the latent must reach the output through the eval-mode (running-statistics) batch norm."""
    gen = dcgan.build_generator(latent_dim=16, image_channels=1, num_classes=3, size=32, base_filters=8, seed=0)
    gen.train()
    with torch.no_grad():
        for _ in range(20):  # settle the running statistics, as training does
            gen(torch.randn(16, 16))
    sampler = dcgan.JointSampler(gen, image_channels=1, num_classes=3, intensity=dcgan.IntensityMap([0.0], [1.0]))
    images, _ = sampler.sample(16, seed=0)
    between = images.std(axis=0).mean()  # spread across latent vectors, per pixel
    assert between > 0.25 * images.std()


def test_256_builds_and_other_sizes_are_refused():
    g = dcgan.Generator(latent_dim=8, out_channels=2, size=256, base_filters=2)
    assert g(torch.randn(1, 8)).shape == (1, 2, 256, 256)
    assert dcgan.Critic(in_channels=2, size=256, base_filters=2)(torch.zeros(1, 2, 256, 256)).shape == (1,)
    with pytest.raises(ValueError, match="48"):
        dcgan.Generator(latent_dim=8, out_channels=2, size=48, base_filters=2)


def test_gradient_penalty_matches_per_sample_autograd():
    torch.manual_seed(0)
    critic = dcgan.Critic(in_channels=3, size=32, base_filters=4).double()
    real, fake = torch.randn(4, 3, 32, 32).double(), torch.randn(4, 3, 32, 32).double()
    alpha = torch.rand(4, 1, 1, 1).double()
    s_real, s_fake, penalty = training.gradient_penalty(critic, real, fake, alpha)
    # Independent: one sample at a time, gradient of that sample's score alone.
    norms = []
    for i in range(4):
        x = (alpha[i] * real[i] + (1 - alpha[i]) * fake[i]).unsqueeze(0).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x)
        norms.append(g.flatten().norm())
    expected = torch.stack([(n - 1) ** 2 for n in norms]).mean()
    torch.testing.assert_close(penalty.double(), expected)
    torch.testing.assert_close(s_real.double(), critic(real).detach())
    torch.testing.assert_close(s_fake.double(), critic(fake).detach())
    penalty.backward()  # differentiable w.r.t. the critic's weights (double backward)
    no_grad = [name for name, p in critic.named_parameters() if p.grad is None]
    assert no_grad == [f"net.{len(critic.net) - 1}.bias"]  # the final bias cannot move an input gradient


# ---- encoding and sampling --------------------------------------------------------------------

@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_label_encoding_round_trip(num_classes):
    labels = torch.randint(0, num_classes, (3, 8, 8))
    enc = dcgan.encode_labels(labels, num_classes)
    assert enc.shape[1] == dcgan.label_channels(num_classes)
    assert set(enc.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(dcgan.decode_labels(enc, num_classes), labels)


def test_binary_label_thresholds_at_zero():
    channel = torch.tensor([[[[-0.5, -0.01, 0.01, 0.7]]]])
    assert dcgan.decode_labels(channel, 2).tolist() == [[[0, 0, 1, 1]]]


def test_intensity_map_round_trip_for_z_scored_images():
    images = np.random.default_rng(0).normal(0, 2, (50, 2, 8, 8)).astype(np.float32)
    m = dcgan.IntensityMap.fit(images)
    np.testing.assert_allclose(m.low, np.percentile(images, 0.5, axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(m.high, np.percentile(images, 99.5, axis=(0, 2, 3)), rtol=1e-6)
    t = m.to_tanh(torch.from_numpy(images))
    assert t.min() >= -1 - 1e-6 and t.max() <= 1 + 1e-6
    low, high = np.array(m.low)[None, :, None, None], np.array(m.high)[None, :, None, None]
    inside = (images >= low) & (images <= high)
    assert inside.mean() > 0.98
    back = m.from_tanh(t).numpy()
    np.testing.assert_allclose(back[inside], images[inside], atol=1e-5)
    np.testing.assert_allclose(back, np.clip(images, low, high), atol=1e-5)  # outliers are clipped


def test_intensity_map_is_not_squeezed_by_a_few_outliers():
    """z-scored phantom slices reach ~8 in a handful of voxels; the bulk must still span [-1, 1]."""
    images = np.random.default_rng(0).uniform(-1, 2, (20, 1, 16, 16)).astype(np.float32)
    images[0, 0, 0, :3] = 8.0
    t = dcgan.IntensityMap.fit(images).to_tanh(torch.from_numpy(images))
    assert torch.quantile(t, 0.9) > 0.7


@pytest.mark.parametrize("num_classes", [2, 4])
def test_sampling_returns_integer_labels_in_range(num_classes):
    gen = dcgan.build_generator(latent_dim=8, image_channels=1, num_classes=num_classes, size=32,
                                base_filters=4, seed=0)
    sampler = dcgan.JointSampler(gen, image_channels=1, num_classes=num_classes,
                                 intensity=dcgan.IntensityMap([-2.0], [3.0]), batch_size=4)
    images, labels = sampler.sample(10, seed=1)  # 10 = 3 batches of 4, 4, 2
    assert images.shape == (10, 1, 32, 32) and images.dtype == np.float32
    assert labels.shape == (10, 32, 32) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < num_classes
    assert images.min() >= -2 - 1e-5 and images.max() <= 3 + 1e-5
    again, _ = sampler.sample(10, seed=1)
    np.testing.assert_array_equal(images, again)


# ---- training flow ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    data = ellipse_slices(["b", "a", "c"])
    context = LocalContext(checkpoint_root=root / "ckpt")
    artifact = train_generator(GeneratorConfig(steps=4, checkpoint_every=2, **TINY), data, context, root / "artifact")
    return artifact, data, context


def test_artifact_is_complete_and_reloadable(trained):
    artifact, data, context = trained
    assert is_complete(artifact.path)
    assert sorted(p.name for p in artifact.path.iterdir()) == sorted(ARTIFACT_FILES)
    assert [p.name for p in artifact.path.parent.iterdir() if p.name.startswith(".")] == []  # no temp left
    reopened = GeneratorArtifact(artifact.path)
    assert reopened.state["num_classes"] == 3 and reopened.state["image_shape"] == [1, 32, 32]
    assert reopened.state["step"] == 4
    pool = SyntheticPool.load(artifact.path / "pool.npz")
    assert pool.images.shape == (8, 1, 32, 32) and pool.labels.shape == (8, 32, 32)
    assert pool.labels.dtype == np.int64 and pool.labels.max() < 3
    images, labels = reopened.sample(5, seed=3)
    again, labels_again = reopened.load_generator().sample(5, seed=3)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    for key in ("swd", "swd_untrained", "nn_distance", "nn_distance_untrained", "nn_distance_real_baseline"):
        assert np.isfinite(reopened.quality[key])
    assert [m["step"] for m in context.history] == [2, 4]
    assert {"critic_loss", "generator_loss", "wasserstein"} <= set(context.history[0])


def test_rule3_training_subjects_are_exactly_the_given_subset(trained):
    artifact, data, _ = trained
    assert artifact.training_subjects == ["a", "b", "c"] == sorted(data.subjects)
    assert json.loads((artifact.path / "training_subjects.json").read_text()) == ["a", "b", "c"]


def test_rule3_batches_come_only_from_the_given_subset(tmp_path, monkeypatch):
    everything = ellipse_slices(["t1", "t2", "v1", "v2"], seed=1)
    train_mask = np.isin(everything.subject_ids, ["t1", "t2"])
    subset = SliceSet(everything.images[train_mask], everything.labels[train_mask],
                      everything.subject_ids[train_mask], everything.positions[train_mask],
                      {s: everything.spacing[s] for s in ("t1", "t2")}, everything.num_classes)
    drawn = []

    def spy(joint, rng, batch_size, rank, world_size):
        batch = real_draw(joint, rng, batch_size, rank, world_size)
        drawn.append(batch.clone())
        return batch

    real_draw = training.draw_real_batch
    monkeypatch.setattr(training, "draw_real_batch", spy)
    artifact = train_generator(GeneratorConfig(steps=3, checkpoint_every=3, **TINY), subset,
                               LocalContext(checkpoint_root=tmp_path / "ckpt"), tmp_path / "artifact")
    intensity = dcgan.IntensityMap.fit(subset.images)

    def encoded(s: np.ndarray) -> torch.Tensor:
        return dcgan.encode_pairs(torch.from_numpy(everything.images[s]), torch.from_numpy(everything.labels[s]),
                                  3, intensity).flatten(1)

    train_rows, held_out_rows = encoded(train_mask), encoded(~train_mask)
    assert len(drawn) == 3 * TINY["n_critic"]
    for batch in drawn:
        for row in batch.flatten(1):
            assert (train_rows == row).all(dim=1).any()
            assert not (held_out_rows == row).all(dim=1).any()
    assert artifact.training_subjects == ["t1", "t2"]
    assert artifact.quality["n_real"] == len(subset)


def test_skip_empty_draws_only_slices_with_foreground(tmp_path, monkeypatch):
    data = ellipse_slices(["a", "b"], seed=3)
    empty = SliceSet(np.full_like(data.images[:3], -0.8), np.zeros_like(data.labels[:3]), np.array(["a"] * 3),
                     np.arange(4, 7), data.spacing, 3)
    mixed = SliceSet(np.concatenate([data.images, empty.images]), np.concatenate([data.labels, empty.labels]),
                     np.concatenate([data.subject_ids, empty.subject_ids]),
                     np.concatenate([data.positions, empty.positions]), data.spacing, 3)
    drawn = []
    real_draw = training.draw_real_batch
    monkeypatch.setattr(training, "draw_real_batch",
                        lambda joint, *a: drawn.append(joint) or real_draw(joint, *a))
    config = GeneratorConfig(steps=1, checkpoint_every=1, skip_empty=True, **TINY)
    train_generator(config, mixed, LocalContext(checkpoint_root=tmp_path / "c"), tmp_path / "artifact")
    assert len(drawn[0]) == len(data)  # the three all-background slices are not in the pool of rows
    images, labels = training.training_rows(mixed, skip_empty=False)
    assert len(images) == len(labels) == len(mixed)
    with pytest.raises(DataError, match="skip_empty"):
        train_generator(config, empty, LocalContext(checkpoint_root=tmp_path / "c2"), tmp_path / "x")


def test_short_default_run_learns_the_ellipses(tmp_path):
    """The default optimiser settings, a small network and 100 generator steps already move the
    samples well away from the untrained generator towards the training data (both by the
    joint image+label SWD against the training slices): the regression this guards against is a
    generator whose samples stay untrained-looking noise after a CPU-sized budget."""
    data = ellipse_slices([f"s{i}" for i in range(8)], seed=4)
    config = GeneratorConfig(steps=100, checkpoint_every=100, latent_dim=32, base_filters=16, pool_size=8,
                             quality_samples=32)
    q = train_generator(config, data, LocalContext(checkpoint_root=tmp_path / "c"), tmp_path / "a").quality
    assert q["swd"] < 0.5 * q["swd_untrained"], q  # measured: 43 vs 172; 003 lr/n_critic: 132


class _DiesAfter(LocalContext):
    """Simulates a worker that dies right after reporting the checkpoint of ``step``."""

    def __init__(self, step: int, **kwargs):
        super().__init__(**kwargs)
        self.die_at = step

    def report(self, metrics, checkpoint_dir=None):
        super().report(metrics, checkpoint_dir)
        if metrics["step"] == self.die_at:
            raise RuntimeError("worker died")


def test_resume_continues_step_counter_and_matches_uninterrupted_run(tmp_path):
    data = ellipse_slices(["a", "b"], seed=2)
    config = GeneratorConfig(steps=6, checkpoint_every=2, seed=5, **TINY)
    whole = train_generator(config, data, LocalContext(checkpoint_root=tmp_path / "c1"), tmp_path / "whole")

    with pytest.raises(RuntimeError, match="worker died"):
        train_generator(config, data, _DiesAfter(4, checkpoint_root=tmp_path / "c2"), tmp_path / "resumed")
    assert not (tmp_path / "resumed").exists()
    torch.manual_seed(123)  # the resumed run must not depend on the process's global RNG
    second = LocalContext(checkpoint_root=tmp_path / "c2")
    resumed = train_generator(config, data, second, tmp_path / "resumed")
    assert [m["step"] for m in second.history] == [6]

    for key, value in whole.state["weights"].items():
        torch.testing.assert_close(resumed.state["weights"][key], value, rtol=0, atol=0)
    np.testing.assert_array_equal(whole.pool().images, resumed.pool().images)


def test_nan_loss_raises_training_diverged(tmp_path, monkeypatch):
    monkeypatch.setattr(training._Run, "generator_step", lambda self: float("nan"))
    with pytest.raises(TrainingDiverged, match="step 1"):
        train_generator(GeneratorConfig(steps=2, **TINY), ellipse_slices(["a"]), LocalContext(checkpoint_root=tmp_path),
                        tmp_path / "artifact")
    assert not (tmp_path / "artifact").exists()


def test_bad_data_is_refused_before_training(tmp_path):
    data = ellipse_slices(["a"], size=32)
    odd = SliceSet(data.images[:, :, :30, :30], data.labels[:, :30, :30], data.subject_ids, data.positions,
                   data.spacing, 3)
    with pytest.raises(DataError, match="30x30"):
        train_generator(GeneratorConfig(**TINY), odd, LocalContext(checkpoint_root=tmp_path), tmp_path / "x")
    bad_labels = SliceSet(data.images, data.labels + 5, data.subject_ids, data.positions, data.spacing, 3)
    with pytest.raises(DataError, match="outside"):
        train_generator(GeneratorConfig(**TINY), bad_labels, LocalContext(checkpoint_root=tmp_path), tmp_path / "x")


def test_binary_label_generator_trains_and_samples(tmp_path):
    data = ellipse_slices(["a", "b"], num_classes=2)
    artifact = train_generator(GeneratorConfig(steps=2, checkpoint_every=2, **TINY), data,
                               LocalContext(checkpoint_root=tmp_path / "c"), tmp_path / "artifact")
    _, labels = artifact.sample(6, seed=0)
    assert set(np.unique(labels).tolist()) <= {0, 1}
    assert artifact.load_generator().generator.upsample[-2].out_channels == 2  # image + one label channel


# ---- two workers (DDP over gloo, CPU) -----------------------------------------------------------

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
        train_generator(GeneratorConfig(steps=4, checkpoint_every=2, **TINY), ellipse_slices(["a", "b"]),
                        context, Path(root) / "artifact")
        Path(root, f"rank{rank}.json").write_text(json.dumps(context.reports))
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
