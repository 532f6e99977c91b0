"""The ``ddpm`` family: options, label codebook, shape fit, cost model, training flow, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from synthmix.cli import main
from synthmix.datasets.arrays import SliceSet
from synthmix.errors import StudyError
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators import GENERATORS, GeneratorData, ddpm
from synthmix.trainers.generators.artifact import is_complete
from synthmix.trainers.generators.encoding import IntensityMap, JointEncoding
from synthmix.trainers.generators.flow import GeneratorSpec, train_generator
from synthmix.trainers.generators.session import GeneratorSession
from toy_slices import ellipse_slices

# A network a test can afford: two levels, attention at the lower one, 3 DDIM steps.
TINY = dict(channels=[8, 8], attention=[False, True], norm_groups=4, head_channels=8, batch_size=4,
            sampling_steps=3, train_timesteps=100, checkpoint_every=3)
QUALITY = {"samples": 8, "reference_steps": 2}


def _spec(seed: int = 0, select: dict | None = None, **config) -> GeneratorSpec:
    return GeneratorSpec(key="k", name="ddpm", config={**TINY, **config}, seed=seed, quality=QUALITY,
                         select=select or {})


# ---- options ---------------------------------------------------------------------------------------

def test_registry_entry_and_defaults():
    family = GENERATORS.get("ddpm")
    assert family is ddpm.FAMILY and not family.needs_masks and not family.uses_unlabelled
    c = family.config({})
    assert (c.schedule, c.prediction, c.label_encoding, c.sampling_steps) == ("cosine", "v", "onehot", 50)
    assert family.config({"channels": [16, 32], "attention": [False, True]}).channels == (16, 32)


@pytest.mark.parametrize("options, message", [
    ({"sampling_step": 10}, "sampling_step: unknown ddpm option"),
    ({"schedule": "quadratic"}, "schedule: must be one of cosine, linear"),
    ({"prediction": "x0"}, "prediction: must be one of epsilon, v"),
    ({"label_encoding": "gray"}, "label_encoding: must be one of onehot, bits"),
    ({"channels": [16, 20, 32]}, "multiple of norm_groups=8"),
    ({"channels": [8] * 5, "attention": [False] * 5}, "1 to 4 levels"),
    ({"attention": [True]}, r"attention: \[True\] needs channels"),
    ({"channels": [16, 32], "attention": [True]}, "attention: one true/false per level"),
    ({"channels": []}, "1 to 4 levels"),
    ({"sampling_steps": 2000}, "sampling_steps: 2000 exceeds train_timesteps=1000"),
    ({"ema_decay": 1.0}, "ema_decay"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(StudyError, match=message):
        ddpm.build_config(options)


# ---- label codebook --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, num_classes, width", [("onehot", 2, 1), ("onehot", 5, 5), ("bits", 2, 1),
                                                      ("bits", 5, 3), ("bits", 8, 3), ("bits", 9, 4)])
def test_codebook_round_trips_and_background_is_all_minus_one_bits(kind, num_classes, width):
    codes = ddpm.codebook(num_classes, kind)
    assert codes.shape == (num_classes, width) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert len({tuple(c) for c in codes.tolist()}) == num_classes
    labels = torch.randint(0, num_classes, (3, 6, 6))
    channels = ddpm.encode_codes(labels, codes)
    assert torch.equal(ddpm.class_scores(channels, codes).argmax(1), labels)
    noisy = channels + 0.6 * torch.randn(channels.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    agree = (ddpm.class_scores(noisy, codes).argmax(1) == labels).float().mean()
    assert agree > 0.8  # nearest-code decoding tolerates noise


def test_bits_sampler_reports_one_score_channel_per_class():
    config = ddpm.build_config({**TINY, "label_encoding": "bits"})
    sampler = ddpm.load(config, JointEncoding(1, 5, IntensityMap([0.0], [1.0])), None, seed=0, shape=(16, 16))
    assert sampler.unet.in_channels == 1 + 3
    s = sampler.sample(3, seed=0)
    assert s.extras["label_channels"].shape == (3, 5, 16, 16)
    np.testing.assert_array_equal(s.extras["label_channels"].argmax(1), s.labels)
    again = sampler.sample(3, seed=0)
    np.testing.assert_array_equal(s.images, again.images)


# ---- shape fit and cost ----------------------------------------------------------------------------

def test_fit_shape_pads_any_size_to_a_multiple_of_eight():
    assert ddpm.fit_shape(32, 32) == (32, 32)
    assert ddpm.fit_shape(30, 45) == (32, 48)
    assert ddpm.fit_shape(1, 8) == (8, 8)


def test_an_unset_network_is_sized_to_the_slice():
    auto = ddpm.build_config({})
    assert ddpm.network(auto, (16, 16)) == ((16, 32), (False, True))
    assert ddpm.network(auto, (32, 32)) == ((16, 32, 64), (False, False, True))
    assert ddpm.network(auto, (64, 64)) == ((16, 32, 64, 64), (False, False, False, True))
    assert ddpm.network(auto, (30, 70)) == ((16, 32, 64), (False, False, True))  # the shorter side, padded to 32
    assert ddpm.network(auto, (256, 256)) == ((16, 32, 64, 64), (False, False, False, True))  # at most 4 levels
    assert ddpm.network(ddpm.build_config({"channels": [8, 16]}), (64, 64)) == ((8, 16), (False, True))
    encoding = JointEncoding(1, 3, IntensityMap([0.0], [1.0]))
    assert ddpm.load(auto, encoding, None, seed=0, shape=(64, 64)).unet.block_out_channels == (16, 32, 64, 64)


def test_cost_counts_training_and_sampling_steps_times_passes():
    base = ddpm.build_config({})
    assert ddpm.sampling_seconds(base, (64, 64), 200) == pytest.approx(2 * ddpm.sampling_seconds(base, (64, 64), 100))
    more_steps = ddpm.build_config({"sampling_steps": 100})
    assert ddpm.sampling_seconds(more_steps, (64, 64), 100) == pytest.approx(
        2 * ddpm.sampling_seconds(base, (64, 64), 100))
    assert ddpm.cost(base, (64, 64)) > ddpm.cost(base, (32, 32)) > 0
    assert ddpm.cost(ddpm.build_config({"steps": 3000}), (32, 32)) > ddpm.cost(base, (32, 32))
    assert ddpm.cost(ddpm.build_config({"channels": [32, 64, 128]}), (32, 32)) > ddpm.cost(base, (32, 32))
    # measured (benchmarks/ddpm_cost.py): attention over 16x16 tokens costs more than a fourth level
    attention_at_16 = ddpm.build_config({"channels": [16, 32, 64], "attention": [False, False, True]})
    assert ddpm.cost(attention_at_16, (64, 64)) > ddpm.cost(base, (64, 64))


def test_on_the_fly_problem_gives_the_estimate_and_the_way_out():
    config = ddpm.build_config({"sampling_steps": 200})
    draws = 2000 * 8  # 2000 segmentation steps, 8 synthetic pairs per batch
    budget = 2000 * 0.2
    message = ddpm.on_the_fly_problem(config, (64, 64), draws, budget)
    assert "CPU-hours" in message and "200 DDIM steps" in message and "mixing.source: pool" in message
    assert "lower sampling_steps to at most" in message
    assert ddpm.on_the_fly_problem(config, (64, 64), 10, budget) is None


# ---- training flow ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddpm")
    data = ellipse_slices(["b", "a"], per_subject=3, size=24)
    odd = SliceSet(data.images[:, :, 1:22, 2:21], data.labels[:, 1:22, 2:21], data.subject_ids, data.positions,
                   data.spacing, 3)  # 21 x 19: padded to 24 x 24 for the UNet
    context = LocalContext(checkpoint_root=root / "c")
    artifact = train_generator(_spec(steps=6, select={"by": "swd", "every": 3}), GeneratorData(odd), context,
                               root / "a")
    return artifact, odd, context


def test_artifact_samples_pairs_of_the_data_shape(trained):
    artifact, data, context = trained
    assert is_complete(artifact.path)
    assert artifact.fit.model == (24, 24) and artifact.fit.data == (21, 19)
    s = artifact.sample(5, seed=1)
    assert s.images.shape == (5, 1, 21, 19) and s.labels.shape == (5, 21, 19) and s.labels.dtype == np.int64
    assert s.labels.min() >= 0 and s.labels.max() < 3
    assert s.extras["label_channels"].shape == (5, 3, 21, 19)
    np.testing.assert_array_equal(s.images, artifact.sample(5, seed=1).images)
    assert not np.array_equal(s.images, artifact.sample(5, seed=2).images)
    assert [m["step"] for m in context.history] == [3, 6] and {"loss", "grad_norm"} <= set(context.history[0])
    for key in ("swd", "swd_untrained", "nn_distance", "fcn_dice_mean", "fcn_dice_mean_real"):
        assert np.isfinite(artifact.quality[key])


def test_snapshots_are_scored_on_the_ema_weights(trained, tmp_path, monkeypatch):
    artifact, _, _ = trained
    selection = artifact.spec["selection"]
    assert [s["step"] for s in selection["snapshots"]] == [3, 6] and selection["chosen_step"] in (3, 6)

    made, scored = [], []
    ema_init, snapshot = ddpm.EMA.__init__, GeneratorSession._snapshot
    monkeypatch.setattr(ddpm.EMA, "__init__", lambda self, net, decay: made.append((self, net)) or
                        ema_init(self, net, decay))
    monkeypatch.setattr(GeneratorSession, "_snapshot", lambda self, weights: scored.append(
        {k: v.clone() for k, v in weights().items()}) or snapshot(self, weights))
    data = GeneratorData(ellipse_slices(["a"], per_subject=3, size=16))
    train_generator(_spec(steps=3, select={"by": "swd", "every": 3}), data, LocalContext(checkpoint_root=tmp_path),
                    tmp_path / "a")
    (ema, live), = made
    assert len(scored) == 1
    for key, value in scored[0].items():
        torch.testing.assert_close(value, ema.module.state_dict()[key], rtol=0, atol=0)
    assert any(not torch.equal(v, live.state_dict()[k]) for k, v in scored[0].items() if v.is_floating_point())


def test_ema_follows_the_network_with_warm_up():
    net = torch.nn.Linear(2, 2)
    ema = ddpm.EMA(net, decay=0.9)
    start = ema.module.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, step=0)  # warm-up: decay min(0.9, 1/10) = 0.1
    torch.testing.assert_close(ema.module.weight, start + 0.9)
    ema.update(net, step=1000)  # decay 0.9
    torch.testing.assert_close(ema.module.weight, start + 0.9 + 0.1 * 0.1)
    assert not ema.module.weight.requires_grad


def test_ema_weights_are_what_sampling_uses(tmp_path):
    """With ema_decay 0 the EMA is the live network; with 0.9 it is not, on the same streams."""
    data = GeneratorData(ellipse_slices(["a"], per_subject=3, size=16))
    live = train_generator(_spec(steps=3, ema_decay=0.0), data, LocalContext(checkpoint_root=tmp_path / "1"),
                           tmp_path / "live").weights()
    averaged = train_generator(_spec(steps=3, ema_decay=0.9), data, LocalContext(checkpoint_root=tmp_path / "2"),
                               tmp_path / "ema").weights()
    differs = [k for k in live if live[k].is_floating_point() and not torch.equal(live[k], averaged[k])]
    assert differs


@pytest.mark.parametrize("schedule, prediction", [("linear", "epsilon"), ("cosine", "v")])
def test_training_target_matches_the_prediction_type(schedule, prediction, monkeypatch):
    """The loss is the MSE against the noise (epsilon) or MONAI's velocity (v)."""
    config = ddpm.build_config({**TINY, "schedule": schedule, "prediction": prediction})
    scheduler = ddpm.DDPMScheduler(**ddpm._scheduler_args(config))
    x0, noise, t = torch.rand(2, 4, 8, 8) * 2 - 1, torch.randn(2, 4, 8, 8), torch.tensor([5, 90])
    expected = noise if prediction == "epsilon" else scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1) * noise \
        - (1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1) * x0
    seen = []
    monkeypatch.setattr(ddpm.nn.functional, "mse_loss", lambda p, target: seen.append(target) or (p - target).pow(2).mean())
    data = GeneratorData(ellipse_slices(["a"], per_subject=2, size=16))
    session = GeneratorSession(LocalContext(), seed=0, total_steps=1, checkpoint_every=1)
    draws = iter([x0, noise, t])
    monkeypatch.setattr(session, "batch", lambda rows, n: next(draws))
    monkeypatch.setattr(session, "randn", lambda n, *shape: next(draws))
    monkeypatch.setattr(session, "rand", lambda n: (next(draws).float() + 0.5) / config.train_timesteps)
    ddpm.train(ddpm.build_config({**TINY, "schedule": schedule, "prediction": prediction, "steps": 1}), data,
               JointEncoding(1, 3, IntensityMap([0.0], [1.0])), session)
    torch.testing.assert_close(seen[0], expected)


def test_resumes_exactly_after_a_worker_kill(tmp_path, monkeypatch):
    data = GeneratorData(ellipse_slices(["a", "b"], per_subject=2, size=16, seed=2))
    spec = _spec(seed=5, steps=7)
    whole = train_generator(spec, data, LocalContext(checkpoint_root=tmp_path / "c1"), tmp_path / "whole")

    end_step = GeneratorSession.end_step

    def killed_at_5(self, losses, *, weights):
        end_step(self, losses, weights=weights)
        if self.step == 5:
            raise RuntimeError("worker killed")

    monkeypatch.setattr(GeneratorSession, "end_step", killed_at_5)
    with pytest.raises(RuntimeError, match="worker killed"):
        train_generator(spec, data, LocalContext(checkpoint_root=tmp_path / "c2"), tmp_path / "resumed")
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(GeneratorSession, "end_step", end_step)
    torch.manual_seed(123)  # the resumed run must not depend on the process's global RNG
    second = LocalContext(checkpoint_root=tmp_path / "c2")
    resumed = train_generator(spec, data, second, tmp_path / "resumed")
    assert [m["step"] for m in second.history] == [6, 7]  # continued from the step-3 checkpoint
    for key, value in whole.weights().items():
        torch.testing.assert_close(resumed.weights()[key], value, rtol=0, atol=0)
    np.testing.assert_array_equal(whole.sample(3, seed=0).images, resumed.sample(3, seed=0).images)


def test_plan_refuses_on_the_fly_sampling_with_many_ddim_steps(tmp_path, capsys):
    # A +100% additive cell draws about half its items from the generator: at 250 DDIM steps
    # each, far more than the 64x64 UNet's training itself; a pool is sampled once instead.
    study = {"name": "fly", "dataset": {"phantom": {"subjects": 8, "size": 64, "classes": 3}},
             "split": {"test": 0.25, "val": 0.25, "repeats": 1},
             "factors": {"real_fraction": [1.0], "synthetic": [0, 1.0], "architecture": ["unet"],
                         "augmentation": ["none"]},
             "segmenter": {"batch_size": 8, "max_steps": 300},
             "generator": {"name": "ddpm", "config": {"sampling_steps": 250}},
             "mixing": {"policy": "additive", "source": "on_the_fly"}}
    path = tmp_path / "fly.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "mixing.source: on_the_fly with generator ddpm" in err and "250 DDIM steps" in err
    assert "use mixing.source: pool" in err
    study["generator"]["config"]["sampling_steps"] = 2  # cheap sampling plans
    path.write_text(yaml.safe_dump(study))
    assert main(["plan", str(path)]) == 0
