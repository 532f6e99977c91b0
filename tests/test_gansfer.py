"""The ``gansfer`` family (001): options, the label codec, phase 1 = pggan, freezing and unfreezing,
the warm-up, self-teaching, the pool of two phases, resume in every phase, and that the
unlabelled images pull the samples towards them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmix.errors import DataError, StudyError
from synthmix.trainers import quality
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators import GENERATORS, GeneratorData, gansfer, pggan
from synthmix.trainers.generators.encoding import IntensityMap, JointEncoding
from synthmix.trainers.generators.flow import GeneratorSpec, train_generator
from synthmix.trainers.generators.session import GeneratorSession
from toy_slices import ellipse_slices

# 16x16: levels 4, 8, 16; phase 1 reaches 16x16 stable at its 5th step.
PHASE1 = dict(latent_dim=8, base_filters=4, max_filters=8, batch_size=4, fade_images=4, stable_images=4, steps=6,
              checkpoint_every=4)
TINY = dict(phase1=PHASE1, phase2_steps=4, phase3_steps=6, warmup_cycles=2, warmup_critic_steps=3, frozen_layers=3)
QUALITY = {"samples": 8, "reference_steps": 2}


def _data(size: int = 16) -> GeneratorData:
    labelled = ellipse_slices(["a", "b"], per_subject=3, size=size)
    unlabelled = ellipse_slices(["u1", "u2", "u3"], per_subject=3, size=size, seed=9, offset=0.3).images
    return GeneratorData(labelled, unlabelled=unlabelled)


def _spec(seed: int = 0, select: dict | None = None, **config) -> GeneratorSpec:
    return GeneratorSpec(key="k", name="gansfer", config={**TINY, **config}, seed=seed, quality=QUALITY,
                         select=select or {})


def _session(tmp_path, total: int, seed: int = 0) -> GeneratorSession:
    return GeneratorSession(LocalContext(checkpoint_root=tmp_path), seed=seed, total_steps=total, checkpoint_every=100)


def _encoding(data: GeneratorData) -> JointEncoding:
    return JointEncoding(1, data.labelled.num_classes, IntensityMap.fit(data.labelled.images))


# ---- options ---------------------------------------------------------------------------------------

def test_registry_and_defaults():
    family = GENERATORS.get("gansfer")
    assert family is gansfer.FAMILY and family.uses_unlabelled and not family.needs_masks
    c = family.config({})
    assert (c.warmup_cycles, c.warmup_critic_steps, c.pool, c.label_encoding) == (5, 100, (2, 3), "onehot")
    assert c.steps == c.phase1.steps + c.phase2_steps + c.phase3_steps
    assert family.config({"phase1": {"steps": 50}}).phase1.steps == 50
    assert family.cost(c, (64, 64)) > pggan.cost(c.phase1, (64, 64)) > 0


@pytest.mark.parametrize("options, message", [
    ({"phase2_step": 3}, "phase2_step: unknown gansfer option"),
    ({"phase1": {"batch_size": 0}}, "phase1.batch_size: must be a positive integer"),
    ({"phase1": {"fade": 3}}, "phase1.fade: unknown pggan option"),
    ({"phase1": 5}, "phase1: must be a mapping"),
    ({"pool": [1, 3]}, r"pool: the phases .* got \[1, 3\]"),
    ({"label_encoding": "bits"}, "label_encoding: must be one of onehot, intensity"),
    ({"frozen_layers": 0}, "frozen_layers: must be a positive integer"),
    ({"unfreeze_every": -2}, "unfreeze_every: must be a positive integer or null"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(StudyError, match=message):
        gansfer.build_config(options)


def test_the_flow_refuses_a_study_without_unlabelled_images(tmp_path):
    with pytest.raises(DataError, match="unlabelled"):
        train_generator(_spec(), GeneratorData(ellipse_slices(["a"], size=16)), LocalContext(checkpoint_root=tmp_path),
                        tmp_path / "a")


# ---- label codec -----------------------------------------------------------------------------------

def test_intensity_codec_carries_the_image_and_decodes_back():
    data = ellipse_slices(["a", "b"], size=16)
    images = IntensityMap.fit(data.images).to_tanh(torch.from_numpy(data.images))
    labels = torch.from_numpy(data.labels)
    codec = gansfer.LabelCodec.fitted("intensity", 3, images, labels)
    channels = codec.encode(images, labels)
    assert channels.shape == (len(labels), 2, 16, 16) and codec.channels == 2
    assert torch.equal(codec.decode(channels), labels)  # the floor keeps every structure pixel
    outside = torch.stack([labels != 1, labels != 2], 1)
    assert (channels[outside] == -1).all()
    inside = channels[:, 1][labels == 2]
    assert (inside >= -1 + 2 * codec.floor - 1e-6).all() and inside.std() > 0  # it carries the intensity
    assert codec.scores(channels).shape == (len(labels), 3, 16, 16)
    onehot = gansfer.LabelCodec.fitted("onehot", 3, images, labels)
    assert onehot.channels == 3 and torch.equal(onehot.decode(onehot.encode(images, labels)), labels)


# ---- phases ----------------------------------------------------------------------------------------

def test_phase1_is_a_pggan_training(tmp_path):
    data = _data()
    encoding = _encoding(data)
    config = gansfer.build_config(TINY)
    s = _session(tmp_path / "g", config.steps, seed=3)
    t = gansfer._Training(config, data, encoding, s)
    while s.step < config.phase1.steps:
        s.end_step(t.growing.step(), weights=t.weights)
    alone = pggan.train(config.phase1, data, encoding, _session(tmp_path / "p", config.phase1.steps, seed=3))
    for key, value in alone.items():
        torch.testing.assert_close(t.growing.weights()[key], value, rtol=0, atol=0)


def test_phase2_fixes_the_final_layers_warms_up_then_phase3_unfreezes_all_but_the_last(tmp_path, monkeypatch):
    data = _data()
    config = gansfer.build_config(TINY)
    s = _session(tmp_path, config.steps)
    t = gansfer._Training(config, data, _encoding(data), s)
    layers = t.growing.generator_module.layers()
    critic_steps = []
    original = gansfer._Training._critic_step
    monkeypatch.setattr(gansfer._Training, "_critic_step",
                        lambda self, critic, *a: critic_steps.append((s.step, critic is self.image_critic))
                        or original(self, critic, *a))

    def snapshot():
        return [[p.detach().clone() for p in layer.parameters()] for layer in layers]

    def moved(before, after):
        return [any(not torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(before, after)]

    while s.step < config.phase1.steps:
        s.end_step(t.growing.step(), weights=t.weights)
    start2 = snapshot()
    s.state["phase"] = 2
    while s.step < config.phase1.steps + config.phase2_steps:
        s.end_step(t.late_step(2), weights=t.weights)
    end2 = snapshot()
    assert moved(start2, end2) == [True] * (len(layers) - 3) + [False] * 3  # the final 3 layers are fixed
    image_steps = [sum(1 for step, image in critic_steps if step == k and image) for k in range(6, 10)]
    assert image_steps == [3, 3, 1, 1]  # warmup_critic_steps for warmup_cycles, then n_critic
    t.end_phase2()
    s.state["phase"] = 3
    frozen = []
    while s.step < config.steps:
        s.end_step(t.late_step(3), weights=t.weights)
        frozen.append(s.state["frozen"])
    assert frozen == [3, 3, 2, 2, 1, 1]  # one layer every phase3_steps // frozen_layers steps
    assert moved(end2, snapshot())[-3:] == [True, True, False]  # the final layer never moves
    assert any(not image for step, image in critic_steps if step >= 10)  # D_S trains in phase 3


def test_self_teaching_maps_are_phase2s_decoded_labels_mixed_equally_with_the_real_ones(tmp_path):
    data = _data()
    config = gansfer.build_config({**TINY, "self_teaching": 64})
    t = gansfer._Training(config, data, _encoding(data), _session(tmp_path, config.steps))
    t.end_phase2()
    taught = t.teaching.value
    assert taught.shape == (64, 3, 16, 16) and set(taught.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal((taught == 1).sum(1), torch.ones(64, 16, 16, dtype=torch.long))  # one class per pixel
    real = t.label_pictures.flatten(1)
    drawn = torch.cat([t._label_rows() for _ in range(25)]).flatten(1)
    from_real = torch.tensor([(real == row).all(1).any().item() for row in drawn]).float().mean()
    assert 0.35 < from_real < 0.65


def test_pool_draws_from_the_phase2_and_final_generators(tmp_path):
    artifact = train_generator(_spec(), _data(), LocalContext(checkpoint_root=tmp_path / "c"), tmp_path / "a")
    s = artifact.sample(6, seed=1)
    assert s.images.shape == (6, 1, 16, 16) and s.labels.shape == (6, 16, 16) and s.labels.max() < 3
    assert s.extras["phase"].tolist() == [2, 3, 2, 3, 2, 3]
    assert s.extras["label_channels"].shape == (6, 3, 16, 16)
    weights = artifact.weights()
    assert any(k.startswith("phase2.") for k in weights) and int(weights["gansfer.phase"]) == 3
    only3 = gansfer.load(gansfer.build_config({**TINY, "pool": [3]}), artifact.encoding, weights, seed=0,
                         shape=(16, 16)).sample(4, seed=1)
    assert only3.extras["phase"].tolist() == [3, 3, 3, 3]
    np.testing.assert_allclose(only3.images[1], s.images[1], atol=1e-4)  # the same latent, the same final generator


@pytest.mark.parametrize("kill_at, resumes_from", [(8, 6), (14, 10)])  # in phase 2; in phase 3
def test_resume_in_each_phase_matches_an_uninterrupted_run(tmp_path, monkeypatch, kill_at, resumes_from):
    spec = _spec(seed=4, label_encoding="intensity", **{"phase1": {**PHASE1, "checkpoint_every": 5}})
    data = _data()
    whole_ctx = LocalContext(checkpoint_root=tmp_path / "c1")
    whole = train_generator(spec, data, whole_ctx, tmp_path / "whole")
    end_step = GeneratorSession.end_step

    def killed(self, losses, *, weights, checkpoint=False):
        end_step(self, losses, weights=weights, checkpoint=checkpoint)
        if self.step == kill_at:
            raise RuntimeError("worker killed")

    monkeypatch.setattr(GeneratorSession, "end_step", killed)
    with pytest.raises(RuntimeError, match="worker killed"):
        train_generator(spec, data, LocalContext(checkpoint_root=tmp_path / "c2"), tmp_path / "resumed")
    monkeypatch.setattr(GeneratorSession, "end_step", end_step)
    torch.manual_seed(7)
    second = LocalContext(checkpoint_root=tmp_path / "c2")
    resumed = train_generator(spec, data, second, tmp_path / "resumed")
    steps = [m["step"] for m in whole_ctx.history]
    assert steps == [5, 6, 10, 15, 16]  # every 5, and the two phase boundaries
    assert second.history == [m for m in whole_ctx.history if m["step"] > resumes_from]
    for key, value in whole.weights().items():
        torch.testing.assert_close(resumed.weights()[key], value, rtol=0, atol=0)


@pytest.mark.slow
def test_the_unlabelled_images_pull_the_pool_towards_them_and_away_from_the_labelled(tmp_path):
    """Labelled ellipses and brighter unlabelled ones (+0.5): against phase 1 alone (pggan with the
    same options and seed), the pool's images are closer to the unlabelled images by SWD, further
    from the labelled ones by nearest-neighbour distance, and as bright as the unlabelled ones.
    Measured: SWD to the unlabelled 53.5 vs 75.3; NN distance 7.9 vs 4.2; mean intensity 0.07 vs
    -0.37 (labelled -0.40, unlabelled 0.10)."""
    labelled = ellipse_slices([f"l{i}" for i in range(4)], size=16, seed=4)
    unlabelled = ellipse_slices([f"u{i}" for i in range(8)], size=16, seed=5, offset=0.5).images
    phase1 = dict(steps=150, checkpoint_every=400, latent_dim=32, base_filters=8, max_filters=32, fade_images=480,
                  stable_images=480, lr=0.01, ema_decay=0.9)
    q = {"samples": 16, "reference_steps": 2}
    alone = train_generator(GeneratorSpec(key="p", name="pggan", config=phase1, seed=0, quality=q),
                            GeneratorData(labelled), LocalContext(checkpoint_root=tmp_path / "c1"), tmp_path / "p")
    both = train_generator(GeneratorSpec(key="g", name="gansfer", seed=0, quality=q,
                                         config=dict(phase1=phase1, phase2_steps=60, phase3_steps=60)),
                           GeneratorData(labelled, unlabelled=unlabelled), LocalContext(checkpoint_root=tmp_path / "c2"),
                           tmp_path / "g")
    figures = {}
    for name, artifact in (("phase1", alone), ("gansfer", both)):
        s = artifact.sample(256, seed=11)
        figures[name] = (
            quality.sliced_wasserstein_distance(unlabelled, s.images, seed=0),
            quality.nearest_neighbour_distance(s.images, labelled.images)[0], s.images.mean())
    assert figures["gansfer"][0] < 0.8 * figures["phase1"][0], figures  # SWD to the unlabelled images
    assert figures["gansfer"][1] > figures["phase1"][1], figures  # NN distance to the labelled subset
    gap = unlabelled.mean() - labelled.images.mean()
    assert figures["gansfer"][2] - figures["phase1"][2] > 0.5 * gap, figures  # the unlabelled images' brightness
