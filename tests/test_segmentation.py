"""The segmentation training flow on a tiny easy task: config validation, learning, best-by-
validation selection, 003's stopping rule, divergence, exact resume, and evaluation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import synthmix.trainers.segmentation as seg
from synthmix.datasets.arrays import SliceSet
from synthmix.errors import DataError, StudyError, TrainingDiverged
from synthmix.trainers.checkpoint import CHECKPOINT_FILE
from synthmix.trainers.context import LocalContext
from synthmix.trainers.metrics import segmentation_metrics
from synthmix.trainers.networks import build_network
from synthmix.trainers.segmentation import (RealSampler, SegmentationConfig, SegmentationData,
                                            build_segmentation_config, evaluate, train_segmentation)

SIZE = 32
TINY_NET = dict(levels=2, base_filters=8, doubling=True, batch_norm=False)


def make_slices(subjects: list[str], seed: int, depth: int = 3) -> SliceSet:
    """Per subject ``depth`` slices: a bright disk (class 1) holding a darker square (class 2)."""
    rng = np.random.default_rng(seed)
    images, labels, sids, positions = [], [], [], []
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for sid in subjects:
        for z in range(depth):
            cy, cx = rng.integers(11, 21, 2)
            r = rng.integers(6, 10)
            lab = np.zeros((SIZE, SIZE), np.int64)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
            lab[cy - 2:cy + 2, cx - 2:cx + 2] = 2
            img = np.choose(lab, [0.0, 1.0, -1.0]) + 0.3 * rng.normal(size=lab.shape)
            images.append(img[None].astype(np.float32))
            labels.append(lab)
            sids.append(sid)
            positions.append(z)
    return SliceSet(images=np.stack(images), labels=np.stack(labels), subject_ids=np.array(sids),
                    positions=np.array(positions), spacing={s: (2.0, 1.0, 1.0) for s in subjects},
                    num_classes=3)


@pytest.fixture(scope="module")
def data() -> SegmentationData:
    return SegmentationData(train=make_slices([f"tr{i}" for i in range(4)], 0),
                            val=make_slices(["va0", "va1"], 1), test=make_slices(["te0", "te1"], 2))


def tiny_config(**kw) -> SegmentationConfig:
    base = dict(network=TINY_NET, lr=1e-2, batch_size=8, max_steps=30, val_every=10,
                checkpoint_every=10, eval_batch_size=16, seed=0)
    return SegmentationConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- configuration


def test_default_config_is_valid():
    assert build_segmentation_config({}) == SegmentationConfig()


def test_config_from_yaml_like_dict():
    c = build_segmentation_config({"betas": [0.5, 0.9], "early_stop": [3000, 3000], "lr": 1e-4,
                                   "network": {"levels": 3, "base_filters": 64}})
    assert c.betas == (0.5, 0.9) and c.early_stop == (3000, 3000)


def test_config_reports_every_problem_by_name():
    with pytest.raises(StudyError) as e:
        build_segmentation_config({"lr": -1, "batchsize": 4, "architecture": "unet",
                                   "network": {"depth": 3}, "loss": "focal", "val_every": 10,
                                   "checkpoint_every": 15, "augmentation": "rotate",
                                   "augmentation_params": {"angle": 3}, "early_stop": [5]})
    text = str(e.value)
    for needle in ("'batchsize'", "lr", "'depth'", "'focal'", "checkpoint_every", "'angle'", "early_stop"):
        assert needle in text, needle


# ----------------------------------------------------------------------------- training


def test_learns_and_keeps_the_best_validation_weights(data, tmp_path):
    ctx = LocalContext(checkpoint_root=tmp_path)
    result = train_segmentation(tiny_config(max_steps=40), data, ctx)
    losses = [h["loss"] for h in ctx.history]
    assert losses[-1] < 0.6 * losses[0]
    assert [h["step"] for h in result.val_history] == [10, 20, 30, 40]
    dices = [h["val_dice"] for h in result.val_history]
    assert result.best_step == result.val_history[int(np.argmax(dices))]["step"]
    assert result.steps_done == 40
    # The checkpoint's best weights reproduce the best validation Dice...
    state = torch.load(tmp_path / "latest" / CHECKPOINT_FILE, weights_only=False)
    net = build_network("unet", in_channels=1, num_classes=3, options=TINY_NET)
    net.load_state_dict(state["extra"]["best_state"])
    val, _ = evaluate(net, data.val, num_classes=3, lcc=False, device="cpu", distances=False)
    assert val["dice_mean"] == pytest.approx(max(dices))
    # ...and are the ones evaluated on the test subjects.
    test, per_subject = evaluate(net, data.test, num_classes=3, lcc=False, device="cpu")
    assert result.metrics["dice_mean"] == pytest.approx(test["dice_mean"])
    assert [r["subject"] for r in result.metrics["per_subject"]] == ["te0", "te1"]
    assert result.metrics["dice_1"] > 0.8  # the disk is learnt (the 4x4 square takes longer)
    for key in ("dice_mean", "hd95_mean", "iou_1", "precision_2", "recall_mean", "hd_1"):
        assert np.isfinite(result.metrics[key])


def test_early_stop_rule_of_003(data, monkeypatch):
    # Scripted validation Dice
    # (validating every 5 steps): new bests at steps 5, 10 and 20, then nothing better.
    scripted = iter([0.1, 0.5, 0.4, 0.6, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1])
    monkeypatch.setattr(seg, "_validate", lambda *a, **k: next(scripted))
    config = tiny_config(max_steps=1000, val_every=5, checkpoint_every=5, early_stop=(15, 10))
    result = train_segmentation(config, data, LocalContext())
    assert result.best_step == 20
    assert result.steps_done == 30  # at least 15 steps, and 10 after the last best


def test_early_stop_waits_for_min_steps(data, monkeypatch):
    monkeypatch.setattr(seg, "_validate", lambda *a, **k: 0.5)  # best at the first validation
    config = tiny_config(max_steps=1000, val_every=5, checkpoint_every=5, early_stop=(25, 5))
    result = train_segmentation(config, data, LocalContext())
    assert result.best_step == 5 and result.steps_done == 25


def test_fixed_budget_without_early_stop(data, monkeypatch):
    monkeypatch.setattr(seg, "_validate", lambda *a, **k: 0.5)
    result = train_segmentation(tiny_config(max_steps=12, val_every=5, checkpoint_every=5), data,
                                LocalContext())
    assert result.steps_done == 12
    assert [h["step"] for h in result.val_history] == [5, 10, 12]


def _mixed(data, level=1.0):
    """An additive +level stream over the training slices and a pool of 12 synthetic ones."""
    from synthmix.datasets.arrays import SyntheticPool
    from synthmix.datasets.mixing import MIXING_POLICIES

    fake = make_slices(["sy0", "sy1", "sy2", "sy3"], 9)
    pool = SyntheticPool(images=fake.images, labels=fake.labels)
    return MIXING_POLICIES.get("additive").build_sampler(level, real=data.train, synthetic=pool,
                                                         batch_size=8, draw="fresh")


def test_budget_in_real_exposures_adds_steps_for_synthetic_data(data, monkeypatch):
    """12 real slices, batch 8: epochs_real=10 is 120 real draws = 15 steps real only, 30 steps
    at +100% synthetic (half of each batch is synthetic); real_draws=120 is the same here."""
    monkeypatch.setattr(seg, "_validate", lambda *a, **k: 0.5)
    for budget in ({"epochs_real": 10}, {"real_draws": 120}):
        config = tiny_config(max_steps=200, budget=budget, val_every=5, checkpoint_every=5)
        real_only = train_segmentation(config, data, LocalContext())
        assert real_only.steps_done == 15 and (real_only.real_draws, real_only.synthetic_draws) == (120, 0)
        mixed = train_segmentation(config, dataclasses.replace(data, sampler=_mixed(data)), LocalContext())
        assert mixed.steps_done == 30
        assert mixed.real_draws + mixed.synthetic_draws == 30 * 8
        assert abs(mixed.real_draws - 120) < 5 * np.sqrt(240 * 0.25)  # binomial, 5 sigma
    fixed = train_segmentation(tiny_config(max_steps=15, val_every=5, checkpoint_every=5),
                               dataclasses.replace(data, sampler=_mixed(data)), LocalContext())
    assert fixed.steps_done == 15 and fixed.real_draws < 90  # a step budget halves real exposures


def test_early_stop_rule_applies_with_a_real_exposure_budget(data, monkeypatch):
    scripted = iter([0.1, 0.5, 0.4, 0.6, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1])
    monkeypatch.setattr(seg, "_validate", lambda *a, **k: next(scripted))
    config = tiny_config(budget={"epochs_real": 1000}, val_every=5, checkpoint_every=5, early_stop=(15, 10))
    result = train_segmentation(config, data, LocalContext())
    assert result.best_step == 20 and result.steps_done == 30


def test_training_steps_and_budget_validation():
    assert seg.training_steps(tiny_config(max_steps=7), n_real=50, real_share=0.1) == 7
    assert seg.training_steps(tiny_config(budget={"epochs_real": 2}), n_real=50, real_share=0.5) == 25
    assert seg.training_steps(tiny_config(budget={"real_draws": 100}), n_real=50, real_share=1 / 3) == 38
    with pytest.raises(StudyError, match="draws no real data"):
        seg.training_steps(tiny_config(budget={"real_draws": 100}), n_real=50, real_share=0.0)
    with pytest.raises(StudyError, match="not both"):
        build_segmentation_config({"max_steps": 100, "budget": {"epochs_real": 5}})
    for bad in ({"epochs": 5}, {"epochs_real": 0}, {"epochs_real": 5, "real_draws": 9}, 12):
        with pytest.raises(StudyError, match="budget"):
            build_segmentation_config({"budget": bad})
    assert build_segmentation_config({"budget": {"real_draws": 4800}}).budget == {"real_draws": 4800}


def test_global_batch_must_split_over_the_workers(data):
    ctx = LocalContext()
    ctx.world_size = 3
    with pytest.raises(StudyError, match="batch_size: 8 is the global batch and must split evenly over the 3"):
        train_segmentation(tiny_config(), data, ctx)


class NaNAtStep:
    """A sampler whose batch at draw ``at`` (0-based) holds a NaN."""

    def __init__(self, train, at):
        self.real, self.at, self.calls = RealSampler(train), at, 0

    def sample(self, batch_size, rng):
        images, labels = self.real.sample(batch_size, rng)
        if self.calls == self.at:
            images = images.copy()
            images[0, 0, 0, 0] = np.nan
        self.calls += 1
        return images, labels


def test_divergence_raises_with_the_step(data):
    nan_data = dataclasses.replace(data, sampler=NaNAtStep(data.train, at=5))
    with pytest.raises(TrainingDiverged, match="step 6"):
        train_segmentation(tiny_config(), nan_data, LocalContext())


def test_huge_learning_rate_diverges(data):
    with pytest.raises(TrainingDiverged):
        train_segmentation(tiny_config(lr=1e12, loss="ce", max_steps=40), data, LocalContext())


def test_bad_sampler_output_fails_before_training(data):
    class Wrong:
        def sample(self, batch_size, rng):
            return np.zeros((batch_size, 2, SIZE, SIZE), np.float32), np.zeros((batch_size, SIZE, SIZE), np.int64)
    with pytest.raises(DataError, match="sampler returned"):
        train_segmentation(tiny_config(), dataclasses.replace(data, sampler=Wrong()), LocalContext())


def test_mismatched_sets_fail_clearly(data):
    bad = dataclasses.replace(data, val=make_slices(["v"], 3, depth=1))
    object.__setattr__(bad.val, "num_classes", 4)
    with pytest.raises(DataError, match="val has 4 classes"):
        train_segmentation(tiny_config(), bad, LocalContext())


def test_weighted_loss_takes_weights_from_real_training_labels(data, monkeypatch):
    seen = []
    original = seg.class_weights_from_labels
    monkeypatch.setattr(seg, "class_weights_from_labels",
                        lambda labels, k: seen.append(labels) or original(labels, k))
    train_segmentation(tiny_config(loss="weighted_dice", max_steps=10), data, LocalContext())
    assert len(seen) == 1 and seen[0] is data.train.labels


# ----------------------------------------------------------------------------- resume


class CrashAfterCheckpoint(LocalContext):
    """Stops the run (as a killed worker would) right after the checkpoint of step ``at``."""

    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at = at

    def report(self, metrics, checkpoint_dir=None):
        super().report(metrics, checkpoint_dir)
        if metrics["step"] == self.at:
            raise KeyboardInterrupt("simulated crash")


def test_interrupted_run_resumes_to_identical_weights(data, tmp_path):
    # Dropout and augmentation exercise every random stream across the restart.
    config = tiny_config(network={**TINY_NET, "dropout": 0.2}, augmentation="standard",
                         augmentation_params={"flip_prob": 0.5, "reference_size": None})
    straight = train_segmentation(config, data, LocalContext(checkpoint_root=tmp_path / "a"))

    with pytest.raises(KeyboardInterrupt):
        train_segmentation(config, data, CrashAfterCheckpoint(20, checkpoint_root=tmp_path / "b"))
    resumed_ctx = LocalContext(checkpoint_root=tmp_path / "b")
    resumed = train_segmentation(config, data, resumed_ctx)

    assert [h["step"] for h in resumed_ctx.history] == [30]  # continued, not restarted
    assert resumed.val_history == straight.val_history
    assert resumed.best_step == straight.best_step
    assert resumed.metrics["dice_mean"] == straight.metrics["dice_mean"]
    a = torch.load(tmp_path / "a" / "latest" / CHECKPOINT_FILE, weights_only=False)
    b = torch.load(tmp_path / "b" / "latest" / CHECKPOINT_FILE, weights_only=False)
    for key in ("models",):
        for name, tensor in a[key]["model"].items():
            assert torch.equal(tensor, b[key]["model"][name]), name
    for name, tensor in a["extra"]["best_state"].items():
        assert torch.equal(tensor, b["extra"]["best_state"][name]), name


def test_finished_run_is_not_trained_again(data, tmp_path):
    first = train_segmentation(tiny_config(max_steps=10), data, LocalContext(checkpoint_root=tmp_path))
    ctx = LocalContext(checkpoint_root=tmp_path)
    again = train_segmentation(tiny_config(max_steps=10), data, ctx)
    assert ctx.history == [] and again.metrics["dice_mean"] == first.metrics["dice_mean"]


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_reassembles_volumes_per_subject(data):
    torch.manual_seed(0)
    net = build_network("unet", in_channels=1, num_classes=3, options=TINY_NET)
    aggregate, per_subject = evaluate(net, data.test, num_classes=3, lcc=True, device="cpu", batch_size=2)
    assert [r["subject"] for r in per_subject] == ["te0", "te1"]
    for row, (sid, images, labels, spacing) in zip(per_subject, data.test.volumes()):
        with torch.no_grad():
            pred = net.eval()(torch.from_numpy(images)).argmax(1).numpy()
        expected = segmentation_metrics(pred, labels, num_classes=3, spacing=spacing, lcc=True)
        assert {k: v for k, v in row.items() if k != "subject"} == pytest.approx(expected)
    assert aggregate["dice_mean"] == pytest.approx(np.mean([r["dice_mean"] for r in per_subject]))


def test_evaluate_per_slice(data):
    torch.manual_seed(0)
    net = build_network("unet", in_channels=1, num_classes=3, options=TINY_NET)
    aggregate, rows = evaluate(net, data.test, num_classes=3, lcc=False, device="cpu", per_slice=True)
    assert len(rows) == len(data.test) and [r["slice"] for r in rows[:3]] == [0, 1, 2]
    _, images, labels, spacing = next(data.test.volumes())
    with torch.no_grad():
        pred = net.eval()(torch.from_numpy(images[1:2])).argmax(1).numpy()
    expected = segmentation_metrics(pred, labels[1:2], num_classes=3, spacing=spacing)
    assert {k: v for k, v in rows[1].items() if k not in ("subject", "slice")} == pytest.approx(expected)


def test_per_slice_metrics_in_the_result(data):
    result = train_segmentation(tiny_config(max_steps=5, val_every=5, checkpoint_every=5, per_slice=True),
                                data, LocalContext())
    assert "slice_dice_mean" in result.metrics and "dice_mean" in result.metrics


def test_detection_thresholded_metrics_are_an_option_of_the_test_evaluation(data):
    """002's detection precision and recall (metrics.DetectionThresholds) on request only."""
    config = tiny_config(max_steps=5, val_every=5, checkpoint_every=5, detection={"min_false_positive_px": 3})
    metrics = train_segmentation(config, data, LocalContext()).metrics
    assert {"det_precision_mean", "det_recall_mean", "det_tp_1", "det_fp_2", "det_fn_1"} <= set(metrics)
    assert 0 <= metrics["det_precision_1"] <= 1 and "det_tp_1" in metrics["per_subject"][0]
    plain = train_segmentation(tiny_config(max_steps=5, val_every=5, checkpoint_every=5), data, LocalContext())
    assert not any(k.startswith("det_") for k in plain.metrics)
    with pytest.raises(StudyError) as err:
        build_segmentation_config({"detection": {"min_dice": 2, "size": 1}})
    assert "detection: unknown key(s) ['size']" in str(err.value)
    with pytest.raises(StudyError, match="detection: min_dice must be in"):
        build_segmentation_config({"detection": {"min_dice": 2}})


def test_invalid_config_object_fails_before_training(data):
    with pytest.raises(StudyError, match="lr"):
        train_segmentation(tiny_config(lr=-1.0), data, LocalContext())


# ----------------------------------------------------------------------------- DDP


class DDPContext:
    """What the Ray Train context does, without Ray: a gloo process group, DDP wrapping,
    rank 0 alone passing checkpoints."""

    def __init__(self, rank, world_size):
        self.device = torch.device("cpu")
        self.world_rank, self.world_size = rank, world_size
        self.reports = []

    def prepare_model(self, model):
        return torch.nn.parallel.DistributedDataParallel(model)

    def report(self, metrics, checkpoint_dir=None):
        self.reports.append((metrics["step"], checkpoint_dir is not None))

    def latest_checkpoint(self):
        return None


class RecordingSampler(RealSampler):
    def __init__(self, train):
        super().__init__(train)
        self.first = None

    def sample(self, batch_size, rng):
        images, labels = super().sample(batch_size, rng)
        if self.first is None:
            self.first = images.sum().item()
        return images, labels


def _ddp_worker(rank, world_size, init_file, out_dir):
    import json
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        train = make_slices([f"tr{i}" for i in range(4)], 0)
        sampler = RecordingSampler(train)
        data = SegmentationData(train=train, val=make_slices(["va0"], 1), test=make_slices(["te0"], 2),
                                sampler=sampler)
        config = tiny_config(max_steps=10, val_every=5, checkpoint_every=5,
                             network={**TINY_NET, "batch_norm": True})
        context = DDPContext(rank, world_size)
        result = train_segmentation(config, data, context)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"val_history": result.val_history, "best_step": result.best_step,
                       "dice_mean": result.metrics["dice_mean"], "hd_mean": result.metrics["hd_mean"],
                       "reports": context.reports, "first_batch": sampler.first}, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_ranks_agree(tmp_path):
    import json
    # fork: the children inherit the imported torch/MONAI instead of importing them again (CPU only).
    torch.multiprocessing.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)),
                                          nprocs=2, start_method="fork")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["first_batch"] == r1["first_batch"]  # every rank draws the same global batch (and trains on its share)
    for key in ("val_history", "best_step", "dice_mean", "hd_mean"):
        assert r0[key] == r1[key], key  # validation and evaluation agree across ranks
    assert [s for s, _ in r0["reports"]] == [s for s, _ in r1["reports"]] == [5, 10]
    assert all(has for _, has in r0["reports"]) and not any(has for _, has in r1["reports"])


@pytest.mark.parametrize("architecture", ["uresnet", "fcn8s", "deepmedic2d"])
def test_an_architecture_without_network_options_gets_its_own_defaults(architecture):
    # The field's default options are the UNet's (doubling, batch_norm); a study that lists
    # several architectures and no network section must still validate for every one.
    config = build_segmentation_config({"architecture": architecture})
    assert config.network == {}
    assert build_segmentation_config({}).network["doubling"] is True  # the UNet's default stays
