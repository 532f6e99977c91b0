"""The dcgan_wgangp family: options, networks, the gradient penalty, and a short run that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmix.errors import StudyError
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators import GENERATORS, GeneratorData, dcgan
from synthmix.trainers.generators.encoding import IntensityMap, JointEncoding
from synthmix.trainers.generators.flow import GeneratorSpec, train_generator
from synthmix.trainers.generators.wgan import gradient_penalty
from toy_slices import ellipse_slices


# ---- config ------------------------------------------------------------------------------------

def test_config_defaults_keep_003_loss_and_paper_settings_are_003():
    c = dcgan.DCGANConfig()
    assert (c.betas, c.gp_lambda, c.amp, c.upsampling, c.skip_empty) == ((0.5, 0.9), 10.0, False, "resize", False)
    assert (c.lr, c.n_critic) == (1e-3, 2)  # the CPU budget (see DCGANConfig's docstring)
    paper = dcgan.build_config(dict(dcgan.PAPER_SETTINGS))
    assert (paper.lr, paper.betas, paper.n_critic, paper.gp_lambda, paper.steps) == (1e-4, (0.5, 0.9), 5, 10.0, 10000)


def test_config_rejects_unknown_upsampling_and_non_bool_skip_empty():
    with pytest.raises(StudyError, match="upsampling.*bilinear"):
        dcgan.build_config({"upsampling": "bilinear"})
    with pytest.raises(StudyError, match="skip_empty"):
        dcgan.build_config({"skip_empty": "yes"})


def test_build_config_rejects_unknown_and_moved_keys_by_name():
    assert dcgan.build_config({"steps": 7, "betas": [0.0, 0.99]}) == dcgan.DCGANConfig(steps=7, betas=(0.0, 0.99))
    with pytest.raises(StudyError, match="n_critics"):
        dcgan.build_config({"n_critics": 3})
    with pytest.raises(StudyError, match="batch_size"):
        dcgan.build_config({"batch_size": 0})
    with pytest.raises(StudyError, match="pool_size: moved to generator.pool.size"):
        dcgan.build_config({"pool_size": 64})


def test_registry_entry_and_shape_fit():
    family = GENERATORS.get("dcgan_wgangp")
    assert family.config({"steps": 3}).steps == 3
    assert family.train is dcgan.train and not family.uses_unlabelled and not family.needs_masks
    assert family.fit_shape(30, 17) == (32, 32) and family.fit_shape(64, 64) == (64, 64)
    with pytest.raises(ValueError, match="resize"):
        family.fit_shape(300, 200)
    assert family.cost(dcgan.DCGANConfig(), (64, 64)) > family.cost(dcgan.DCGANConfig(), (32, 32)) > 0


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
    sampler = dcgan.NoiseSampler(gen, latent_dim=16, encoding=JointEncoding(1, 3, IntensityMap([0.0], [1.0])))
    images = sampler.sample(16, seed=0).images
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
    s_real, s_fake, penalty = gradient_penalty(critic, real, fake, alpha)
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




def test_short_default_run_learns_the_ellipses(tmp_path):
    """The default optimiser settings, a small network and 100 generator steps already move the
    samples well away from the untrained generator towards the training data (both by the
    joint image+label SWD against the training slices): the regression this guards against is a
    generator whose samples stay untrained-looking noise after a CPU-sized budget."""
    data = ellipse_slices([f"s{i}" for i in range(8)], seed=4)
    spec = GeneratorSpec(key="k", name="dcgan_wgangp", seed=0, quality={"samples": 64, "reference_steps": 5},
                         config=dict(steps=100, checkpoint_every=100, latent_dim=32, base_filters=16))
    q = train_generator(spec, GeneratorData(data), LocalContext(checkpoint_root=tmp_path / "c"), tmp_path / "a").quality
    assert q["swd"] < 0.5 * q["swd_untrained"], q  # measured: 43 vs 172; 003 lr/n_critic: 132
