"""Several modalities (2-4 image channels, BraTS-like) through every network and every generator
family, and a sample grid that shows each modality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from synthmix.datasets.arrays import SliceSet
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators import GENERATORS, GeneratorData
from synthmix.trainers.generators.artifact import save_sample_grid
from synthmix.trainers.generators.flow import GeneratorSpec, train_generator
from synthmix.trainers.networks import NETWORKS, build_network

TINY_NETWORKS = {
    "unet": dict(levels=3, base_filters=4, doubling=True, batch_norm=True),
    "uresnet": dict(levels=3, base_filters=4, num_res_units=1),
    "deepmedic2d": dict(filters=[4, 4, 6, 6, 6, 6, 8, 8], fc_filters=8),
    "fcn8s": dict(base_filters=4, fc_filters=8),
}
TINY_GENERATORS = {
    "dcgan_wgangp": dict(latent_dim=8, base_filters=4, batch_size=4, steps=2, checkpoint_every=2),
    "pix2pix": dict(base_filters=4, disc_filters=4, batch_size=2, steps=2, checkpoint_every=2),
    "spade_two_stage": dict(labels=dict(steps=2, batch_size=2, base_filters=4, latent_dim=8),
                            images=dict(steps=2, batch_size=2, base_filters=2, disc_filters=4, hidden=4),
                            select_every=2, select_samples=4, calibration_samples=8, checkpoint_every=2),
    "ddpm": dict(channels=[8, 8], attention=[False, True], norm_groups=4, head_channels=8, batch_size=4,
                 sampling_steps=3, train_timesteps=100, steps=2, checkpoint_every=2),
    "pggan": dict(latent_dim=8, base_filters=4, max_filters=8, batch_size=4, fade_images=4, stable_images=4,
                  steps=7, checkpoint_every=7),
    "gansfer": dict(phase1=dict(latent_dim=8, base_filters=4, max_filters=8, batch_size=4, fade_images=4,
                                stable_images=4, steps=7, checkpoint_every=7),
                    phase2_steps=2, phase3_steps=2, warmup_cycles=1, warmup_critic_steps=2),
}


def test_every_family_has_a_tiny_case():
    # Shipped families only: a test module may register its own (test_toy_family's "toy").
    shipped = {n for n in GENERATORS.names() if GENERATORS.get(n).train.__module__.startswith("synthmix.")}
    assert set(TINY_NETWORKS) == set(NETWORKS.names()) and set(TINY_GENERATORS) == shipped


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("name", sorted(TINY_NETWORKS))
def test_networks_take_several_channels_on_odd_slices(name, channels):
    torch.manual_seed(0)
    net = build_network(name, in_channels=channels, num_classes=3, options=TINY_NETWORKS[name])
    x = torch.randn(2, channels, 37, 45, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 3, 37, 45)
    out.pow(2).mean().backward()
    # Every input channel reaches the output: the first convolution reads all of them.
    assert all(x.grad[:, c].abs().sum() > 0 for c in range(channels))


def four_channel_slices(n: int = 6, size: int = 32, channels: int = 4) -> SliceSet:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] - size / 2
    labels = np.stack([((yy / rng.uniform(6, 10)) ** 2 + (xx / rng.uniform(6, 10)) ** 2 < 1).astype(np.int64)
                       + ((yy ** 2 + xx ** 2) < 9) for _ in range(n)])
    contrast = rng.uniform(-1, 1, (channels, 3))
    images = np.stack([[contrast[c][lab] + rng.normal(0, 0.05, lab.shape) for c in range(channels)]
                       for lab in labels]).astype(np.float32)
    return SliceSet(images, labels, np.array([f"s{i // 2}" for i in range(n)]), np.arange(n) % 2,
                    {f"s{i}": (1.0, 1.0, 1.0) for i in range(n)}, 3)


@pytest.mark.parametrize("channels", [2, 4])
@pytest.mark.parametrize("name", sorted(TINY_GENERATORS))
def test_every_generator_family_learns_and_samples_every_modality(name, channels, tmp_path):
    data = four_channel_slices(channels=channels, size=24)  # not a size the DCGAN builds: padded to 32
    spec = GeneratorSpec(key="k", name=name, seed=0, config=TINY_GENERATORS[name],
                         quality={"samples": 8, "reference_steps": 2})
    unlabelled = four_channel_slices(channels=channels, size=24).images if GENERATORS.get(name).uses_unlabelled \
        else None  # a family that learns from unlabelled images gets some
    artifact = train_generator(spec, GeneratorData(data, unlabelled=unlabelled),
                               LocalContext(checkpoint_root=tmp_path / "c"), tmp_path / "artifact")
    masks = data.labels[:3] if GENERATORS.get(name).needs_masks else None  # conditional: the subset's masks
    samples = artifact.sample(3, seed=0, masks=masks)
    assert samples.images.shape == (3, channels, 24, 24) and samples.labels.shape == (3, 24, 24)
    assert np.isfinite(samples.images).all()
    assert len({float(samples.images[:, c].std()) for c in range(channels)}) == channels
    assert (artifact.path / "samples.png").is_file()


def test_sample_grid_has_a_panel_per_modality(tmp_path):
    data = four_channel_slices(n=4, channels=3)  # 32x32
    one = save_sample_grid(data.images[:4, :1], data.labels[:4], tmp_path / "one.png", num_classes=3, ncols=4)
    three = save_sample_grid(data.images[:4], data.labels[:4], tmp_path / "three.png", num_classes=3, ncols=4,
                             channel_names=["t1", "t2", "flair"])
    # Per pair: every modality, then the overlay; the figure widens with the panels.
    assert imread(three).shape[1] == pytest.approx(imread(one).shape[1] * 4 / 2, rel=0.02)
