"""The label-first families: pix2pix (002) and spade_two_stage (004): options, networks, samplers,
the between-stage threshold rule, training through the shared flow, and kill/resume in stage 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthmix.errors import StudyError
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators import GENERATORS, GeneratorData, pix2pix
from synthmix.trainers.generators import spade_two_stage as spade
from synthmix.trainers.generators.artifact import GeneratorArtifact
from synthmix.trainers.generators.encoding import IntensityMap, JointEncoding
from synthmix.trainers.generators.flow import GeneratorSpec, train_generator
from toy_slices import ellipse_slices

QUALITY = {"samples": 16, "reference_steps": 10}


def _class_means(images: np.ndarray, labels: np.ndarray, k: int) -> list[float]:
    return [float(images[:, 0][labels == c].mean()) for c in range(k)]


# ---- pix2pix -------------------------------------------------------------------------------------

def test_pix2pix_options_are_002s_and_unknown_keys_are_named():
    c = pix2pix.build_config({})
    assert (c.betas, c.l1_lambda, c.dropout, c.lr) == ((0.5, 0.999), 100.0, 0.5, 1e-3)  # lr: the CPU budget
    paper = pix2pix.build_config(dict(pix2pix.PAPER_SETTINGS))
    assert (paper.base_filters, paper.batch_size, paper.lr) == (64, 1, 2e-4)
    assert pix2pix.build_config({"betas": [0.5, 0.99]}).betas == (0.5, 0.99)
    with pytest.raises(StudyError, match="l1_lamda: unknown pix2pix option"):
        pix2pix.build_config({"l1_lamda": 10})
    with pytest.raises(StudyError, match="(?s)dropout.*batch_size"):
        pix2pix.build_config({"dropout": 1.0, "batch_size": 0})
    family = GENERATORS.get("pix2pix")
    assert family.needs_masks and family.cost(c, (64, 64)) > family.cost(c, (32, 32)) > 0


def test_pix2pix_fits_any_slice_size_to_a_power_of_two():
    assert pix2pix.fit_shape(24, 20) == (32, 32)
    assert pix2pix.fit_shape(64, 64) == (64, 64)
    assert pix2pix.fit_shape(240, 155) == (256, 256)
    with pytest.raises(ValueError, match="1024"):
        pix2pix.fit_shape(2000, 10)


def test_unet_reaches_a_1x1_bottleneck_with_dropout_in_three_decoder_blocks():
    g = pix2pix.UNetGenerator(in_channels=3, out_channels=2, size=64, base_filters=4, dropout=0.5)
    bottleneck = []
    for m in g.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: bottleneck.append(out.shape[-1]))
    out = g(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2, 64, 64) and out.abs().max() <= 1
    assert min(bottleneck) == 1
    assert sum(isinstance(m, torch.nn.Dropout) for m in g.modules()) == 3


def test_patch_discriminator_sees_70x70_patches():
    """Through its convolutions, one output score depends on exactly a 70x70 window of the input
    (pix2pix's PatchGAN); instance norm, which mixes in whole-image statistics, is taken out."""
    d = pix2pix.patch_discriminator(in_channels=2, base_filters=4).double()
    for adn in [m for m in d.modules() if hasattr(m, "N")]:
        adn.N = torch.nn.Identity()
    x = torch.randn(1, 2, 128, 128, dtype=torch.double, requires_grad=True)
    scores = d(x)[-1]
    assert scores.shape[-2:] == (14, 14)
    scores[0, 0, 7, 7].backward()
    rows = np.flatnonzero(x.grad[0].abs().sum(dim=(0, 2)).numpy())
    cols = np.flatnonzero(x.grad[0].abs().sum(dim=(0, 1)).numpy())
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_mask_sampler_needs_masks_and_its_dropout_noise_is_seeded():
    enc = JointEncoding(1, 3, IntensityMap([-1.0], [1.0]))
    sampler = pix2pix.load(pix2pix.build_config({"base_filters": 4}), enc, None, seed=0, shape=(32, 32))
    masks = ellipse_slices(["a"], per_subject=3).labels
    with pytest.raises(ValueError, match="mask-conditional"):
        sampler.sample(3, seed=0)
    with pytest.raises(ValueError, match="outside"):
        sampler.sample(3, seed=0, masks=masks + 5)
    a, b, c = (sampler.sample(3, seed=s, masks=masks) for s in (1, 1, 2))
    assert np.array_equal(a.images, b.images) and not np.allclose(a.images, c.images)
    assert np.array_equal(a.labels, masks) and a.images.shape == (3, 1, 32, 32)


def test_pix2pix_learns_to_draw_the_mask_s_structures(tmp_path: Path):
    """Through the shared flow (masks from the subset): after 120 steps the generated image is
    bright where the mask's core is and dark on its background, as the real images are; the
    untrained network's is not. 24x24 slices are padded to 32 and cropped back."""
    real = ellipse_slices(["a", "b", "c"], per_subject=4, size=24)
    spec = GeneratorSpec(key="p", name="pix2pix", seed=0, quality=QUALITY,
                         config={"steps": 120, "batch_size": 4, "base_filters": 8, "disc_filters": 8})
    artifact = train_generator(spec, GeneratorData(real), LocalContext(checkpoint_root=tmp_path / "ckpt"),
                               tmp_path / "out")
    assert artifact.family_name == "pix2pix" and artifact.spec["shape"] == {"data": [24, 24], "model": [32, 32]}
    samples = GeneratorArtifact(artifact.path).sample(len(real), seed=4, masks=real.labels)
    assert samples.images.shape == real.images.shape and np.array_equal(samples.labels, real.labels)
    fake, truth = _class_means(samples.images, real.labels, 3), _class_means(real.images, real.labels, 3)
    assert fake[0] < fake[1] < fake[2]
    untrained = artifact.sampler(trained=False).sample(len(real), seed=4, masks=real.labels)
    off = lambda means: np.abs(np.subtract(means, truth)).max()  # noqa: E731
    assert off(fake) < 0.5 * off(_class_means(untrained.images, real.labels, 3))
    assert artifact.quality["fcn_dice_mean"] > 0


# ---- spade_two_stage: pieces -----------------------------------------------------------------------

def test_threshold_rule_trades_synthetic_against_real_removals():
    real = np.array([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0, -10.0])
    synthetic = np.array([-1.5, -2.5, -20.0, -30.0])
    # Cutting at -10 (keep >= -10) removes the two outliers and no real map.
    assert spade.choose_threshold(real, synthetic, 0.0) == (-10.0, 0.0, 0.5)
    # Allowing 10% real removals buys nothing more here, and the lowest such cut is kept.
    assert spade.choose_threshold(real, synthetic, 0.1) == (-10.0, 0.0, 0.5)
    # At most a quarter of the synthetic maps may go: one outlier only.
    assert spade.choose_threshold(real, synthetic, 0.0, max_synthetic_drop=0.25) == (-20.0, 0.0, 0.25)
    # Synthetic maps as real as the real ones: nothing is cut.
    assert spade.choose_threshold(real, real.copy(), 0.05)[0] == -np.inf


def test_spade_networks_spectral_norm_hinge_and_two_scales():
    g = spade.SpadeGenerator(label_nc=3, out_channels=1, size=64, base_filters=2, hidden=4)
    seg = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 64, 64)), 3).permute(0, 3, 1, 2).float() * 2 - 1
    out = g(seg)
    assert out.shape == (2, 1, 64, 64) and out.abs().max() <= 1
    assert [b.conv_0.weight.shape[0] for b in g.blocks] == [32, 16, 8, 4, 2]  # filters halve per doubling
    assert all(hasattr(b.conv_0, "parametrizations") and hasattr(b.conv_1, "parametrizations") for b in g.blocks)
    d = spade.TwoScaleDiscriminator(in_channels=4, base_filters=4)
    scales = d(torch.cat([seg, out], 1))
    assert len(scales) == 2 and scales[1][-1].shape[-1] < scales[0][-1].shape[-1]
    assert len(scales[0]) == 5  # four layers' features for feature matching, then the scores
    assert spade.hinge_discriminator(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])).item() == 0.25 + 0.5


def test_spade_options_are_checked_by_name():
    c = spade.build_config({"filter": "none"})
    assert c.image_stage.fm_lambda == 10.0 and c.image_stage.betas == (0.0, 0.9)
    assert c.label_stage.skip_empty and c.steps == c.label_stage.steps + c.image_stage.steps
    with pytest.raises(StudyError, match="labels.skip_empty"):
        spade.build_config({"filter": "none", "labels": {"skip_empty": False}})
    with pytest.raises(StudyError, match="n_critics"):
        spade.build_config({"filter": "none", "labels": {"n_critics": 2}})
    with pytest.raises(StudyError, match="vgg_lambda: unknown"):
        spade.build_config({"filter": "none", "images": {"vgg_lambda": 10}})
    with pytest.raises(StudyError, match="'blurry'"):
        spade.build_config({"filter": "blurry"})
    with pytest.raises(StudyError, match="cleanup: 'training_mask'"):
        spade.build_config({"filter": "none", "cleanup": ["training_mask"]})


# ---- spade_two_stage: training, kill and resume --------------------------------------------------

TINY_SPADE = {"labels": {"steps": 8, "batch_size": 4, "base_filters": 4, "latent_dim": 8},
              "images": {"steps": 8, "batch_size": 4, "base_filters": 2, "disc_filters": 4, "hidden": 4},
              "select_every": 4, "select_samples": 8, "calibration_samples": 32, "checkpoint_every": 3,
              "filter": "zscore_norm"}


class Killed(RuntimeError):
    pass


def _train_spade(tmp_path: Path, name: str, ckpt: str):
    real = ellipse_slices(["a", "b", "c"], per_subject=3, size=32)
    spec = GeneratorSpec(key="s", name="spade_two_stage", config=TINY_SPADE, seed=0, quality=QUALITY)
    context = LocalContext(checkpoint_root=tmp_path / ckpt)
    return train_generator(spec, GeneratorData(real), context, tmp_path / name), context


def test_spade_killed_in_stage_2_resumes_stage_2_with_stage_1_untouched(tmp_path, monkeypatch):
    whole, _ = _train_spade(tmp_path, "whole", "ckpt-whole")

    calls = {"label": 0, "image": 0}
    label_step, image_step = spade._Training.label_step, spade._Training.image_step

    def counting_label_step(self):
        calls["label"] += 1
        return label_step(self)

    def dying_image_step(self):
        calls["image"] += 1
        if calls["image"] == 5:  # stage-2 step 5; the last checkpoint was after stage-2 step 4 (step 12)
            raise Killed("worker killed")
        return image_step(self)

    monkeypatch.setattr(spade._Training, "label_step", counting_label_step)
    monkeypatch.setattr(spade._Training, "image_step", dying_image_step)
    with pytest.raises(Killed):
        _train_spade(tmp_path, "resumed", "ckpt")
    assert calls == {"label": 8, "image": 5}
    calls.update(label=0, image=0)
    resumed, context = _train_spade(tmp_path, "resumed", "ckpt")
    assert calls == {"label": 0, "image": 4}  # stage 2 from step 12: steps 13..16; stage 1 not retrained
    assert [h["step"] for h in context.history] == [15, 16] and context.history[-1]["stage"] == 2
    a, b = whole.weights(), resumed.weights()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if never killed
    assert float(a["between.threshold"]) > -np.inf  # the stand-in filter was calibrated
    sampler = resumed.sampler()
    samples = sampler.sample(6, seed=1)
    assert samples.images.shape == (6, 1, 32, 32) and (samples.labels.reshape(6, -1).max(axis=1) > 0).all()
    counts = sampler.sampler.last_counts
    assert counts["kept"] == 6 and counts["drawn"] >= 6 + counts["filter_removed"] + counts["empty_removed"]
    with pytest.raises(ValueError, match="no masks"):
        sampler.sample(2, seed=0, masks=samples.labels[:2])
