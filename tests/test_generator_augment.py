"""Mask-safe discriminator augmentation (generators/augment.py) and its use by dcgan_wgangp."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from synthmix.errors import StudyError
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators import GeneratorData, dcgan
from synthmix.trainers.generators.augment import (
    AugmentConfig, Augmenter, background_fill, build_augment_config)
from synthmix.trainers.generators.encoding import IntensityMap, JointEncoding, encode_labels
from synthmix.trainers.generators.flow import GeneratorSpec, train_generator
from synthmix.trainers.generators.session import GeneratorSession
from toy_slices import ellipse_slices

LEVELS = (-0.8, 0.3, 0.9)  # ellipse_slices' class intensities (+ noise of sd 0.05)


# ---- options ---------------------------------------------------------------------------------------

def test_config_builder_defaults_and_names_bad_keys():
    c = build_augment_config({"policy": ["translation", "cutout", "colour"], "adaptive": True, "target": 0.6})
    assert c == AugmentConfig(adaptive=True)
    assert build_augment_config({"policy": "colour"}).policy == ("colour",)
    assert build_augment_config(None) is None and build_augment_config(False) is None
    with pytest.raises(StudyError, match=r"augment\.policy\[1\]: unknown op 'flip'"):
        build_augment_config({"policy": ["translation", "flip"]})
    with pytest.raises(StudyError, match=r"augment\.targets: unknown key"):
        build_augment_config({"targets": 0.6})
    with pytest.raises(StudyError, match=r"augment\.target"):
        build_augment_config({"target": 1.5})


def test_dcgan_config_takes_augment_and_round_trips_through_json():
    config = dcgan.build_config({"augment": {"policy": ["cutout"], "adaptive": True}})
    assert config.augment == AugmentConfig(policy=("cutout",), adaptive=True)
    as_json = dataclasses.asdict(config)  # what generator.json records, reopened by the artifact
    as_json["augment"]["policy"] = list(as_json["augment"]["policy"])
    assert dcgan.build_config(as_json) == config
    assert dcgan.build_config({}).augment is None
    with pytest.raises(StudyError, match="augment.policy"):
        dcgan.build_config({"augment": {"policy": ["color"]}})


# ---- label validity and alignment ------------------------------------------------------------------

def _uniforms(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.rand((n, *shape), generator=g)


def _encoded_pairs(num_classes: int):
    data = ellipse_slices(["a", "b"], per_subject=8, num_classes=num_classes, seed=1)
    intensity = IntensityMap.fit(data.images)
    encoding = JointEncoding(1, num_classes, intensity)
    joint = encoding.encode(torch.from_numpy(data.images), torch.from_numpy(data.labels))
    # Class boundaries in the encoded image space: midway between the class intensities.
    mids = intensity.to_tanh(torch.tensor([(a + b) / 2 for a, b in zip(LEVELS, LEVELS[1:])]).view(1, -1, 1, 1))
    return encoding, joint, mids.flatten()[: num_classes - 1]


def _augment(encoding, joint, policy, seed=0, p=1.0):
    state: dict = {}
    augmenter = Augmenter(AugmentConfig(policy=policy, probability=p), fill=background_fill(encoding),
                          image_channels=1, state=state, uniform=_uniforms(seed, len(joint)))
    return augmenter(joint)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_augmented_real_pair_keeps_a_valid_label_map_aligned_with_its_image(num_classes):
    encoding, joint, mids = _encoded_pairs(num_classes)
    codes = encode_labels(torch.arange(num_classes).view(-1, 1, 1), num_classes)[:, :, 0, 0]  # (K, L)
    geometric = _augment(encoding, joint, ("translation", "cutout"))
    full = _augment(encoding, joint, ("translation", "cutout", "colour"))  # same draws, then colour

    for out in (geometric, full):
        labels = out[:, 1:].permute(0, 2, 3, 1).reshape(-1, codes.shape[1])
        valid = (labels[:, None, :] == codes[None]).all(dim=2).any(dim=1)
        assert valid.all(), "a label pixel is not the exact code of a class"
    torch.testing.assert_close(full[:, 1:], geometric[:, 1:], rtol=0, atol=0)  # colour leaves labels alone
    assert not torch.equal(full[:, :1], geometric[:, :1])

    # Aligned: the class the (geometrically moved) image shows is the class its label says,
    # including the shifted-in borders and cut-out squares (air, labelled background).
    decoded = encoding.decode_labels(geometric[:, 1:])
    from_image = (geometric[:, 0, :, :, None] > mids).sum(-1)
    assert (decoded == from_image).float().mean() > 0.995
    assert not torch.equal(geometric, joint)
    gaps = (geometric[:, 0] == -1.0) & (joint[:, 0] != -1.0)
    assert gaps.any() and (decoded[gaps] == 0).all()


def test_probability_zero_is_identity_and_ops_are_differentiable():
    encoding, joint, _ = _encoded_pairs(3)
    torch.testing.assert_close(_augment(encoding, joint, ("translation", "cutout", "colour"), p=0.0), joint)
    x = joint.clone().requires_grad_(True)
    _augment(encoding, x, ("translation", "cutout", "colour")).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---- adaptive probability --------------------------------------------------------------------------

def _adaptive(**options) -> tuple[Augmenter, dict]:
    state: dict = {}
    config = AugmentConfig(adaptive=True, **options)
    return Augmenter(config, fill=torch.zeros(2), image_channels=1, state=state,
                     uniform=lambda *shape: torch.rand(4, *shape)), state


def test_adaptive_probability_follows_the_sign_of_the_critic_on_real_data():
    augmenter, state = _adaptive(interval=2, speed=80, target=0.6)
    assert augmenter.p == 0.0
    sure = torch.tensor([3.0, 2.0, 4.0, 5.0])
    for _ in range(4):  # 2 adjustments of 8 real images each: +0.1 each
        augmenter.update(sure, torch.tensor([-1.0, 0.0, 1.0, 2.0]))  # every real above the fakes' mean 0.5
    assert augmenter.p == pytest.approx(0.2) and state["augment_r"] == 1.0
    unsure = torch.tensor([-1.0, 1.0, -2.0, 2.0])
    for _ in range(6):  # r = 0 < target: down by 0.1 per adjustment, never below 0
        augmenter.update(unsure, torch.zeros(4))
    assert augmenter.p == 0.0 and state["augment_r"] == 0.0
    without_fakes, _ = _adaptive(interval=1, speed=4)
    without_fakes.update(torch.tensor([1.0, 2.0, 3.0, -1.0]))  # sign against 0: r = 0.5 < 0.6
    assert without_fakes.p == 0.0


TINY = dict(latent_dim=16, base_filters=4, batch_size=4, n_critic=2, checkpoint_every=5)
QUALITY = {"samples": 8, "reference_steps": 2}


def test_adaptive_probability_rises_when_the_critic_overfits_a_tiny_set(tmp_path):
    """Four real slices: the critic soon scores every one above the fakes, so p climbs (ADA)."""
    tiny = ellipse_slices(["a"], per_subject=4, seed=5)
    config = {**TINY, "steps": 15, "augment": {"adaptive": True, "interval": 2, "speed": 200}}
    context = LocalContext(checkpoint_root=tmp_path / "c")
    train_generator(GeneratorSpec(key="k", name="dcgan_wgangp", config=config, seed=0, quality=QUALITY),
                    GeneratorData(tiny), context, tmp_path / "a")
    p = [m["augment_p"] for m in context.history]
    assert p[0] > 0 and p[-1] > p[0], p
    assert all(m["augment_r"] > 0.6 for m in context.history)


def test_augmented_dcgan_resumes_exactly_after_a_kill(tmp_path, monkeypatch):
    data = ellipse_slices(["a", "b"], seed=2)
    config = {**TINY, "steps": 8, "checkpoint_every": 3, "augment": {"adaptive": True, "interval": 1, "speed": 50}}
    spec = GeneratorSpec(key="k", name="dcgan_wgangp", config=config, seed=3, quality=QUALITY)
    whole = train_generator(spec, GeneratorData(data), LocalContext(checkpoint_root=tmp_path / "c1"), tmp_path / "w")

    end_step = GeneratorSession.end_step

    def dies_at_5(self, losses, *, weights):
        end_step(self, losses, weights=weights)
        if self.step == 5:
            raise RuntimeError("worker killed")

    monkeypatch.setattr(GeneratorSession, "end_step", dies_at_5)
    with pytest.raises(RuntimeError, match="worker killed"):
        train_generator(spec, GeneratorData(data), LocalContext(checkpoint_root=tmp_path / "c2"), tmp_path / "r")
    monkeypatch.setattr(GeneratorSession, "end_step", end_step)
    second = LocalContext(checkpoint_root=tmp_path / "c2")
    resumed = train_generator(spec, GeneratorData(data), second, tmp_path / "r")
    assert [m["step"] for m in second.history] == [6, 8]
    for key, value in whole.weights().items():
        torch.testing.assert_close(resumed.weights()[key], value, rtol=0, atol=0)
    assert resumed.spec["config"]["augment"]["adaptive"] is True
    np.testing.assert_array_equal(whole.sample(4, seed=1).images, resumed.sample(4, seed=1).images)
