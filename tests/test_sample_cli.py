"""``synthmix sample``: a PNG grid or an .npz pool from a generator artifact, clear errors otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmix.cli import main
from synthmix.datasets.arrays import SliceSet, SyntheticPool
from synthmix.trainers.context import LocalContext
from synthmix.trainers.generators import GeneratorData
from synthmix.trainers.generators.flow import GeneratorSpec, train_generator
from test_generator_platform import plant_pickle


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two shared cores run far slower than one
    root = tmp_path_factory.mktemp("sample_cli")
    rng = np.random.default_rng(0)
    labels = (rng.random((6, 32, 32)) > 0.5).astype(np.int64)
    images = (labels[:, None] * 2.0 - 1 + rng.normal(0, 0.1, (6, 1, 32, 32))).astype(np.float32)
    data = SliceSet(images, labels, np.array(["a"] * 3 + ["b"] * 3), np.tile(np.arange(3), 2),
                    {"a": (1.0, 1.0, 1.0), "b": (1.0, 1.0, 1.0)}, 2)
    spec = GeneratorSpec(key="k", name="dcgan_wgangp", seed=0, quality={"samples": 4, "reference_steps": 2},
                         config=dict(steps=2, checkpoint_every=2, latent_dim=8, base_filters=4, batch_size=4, n_critic=1))
    try:
        train_generator(spec, GeneratorData(data), LocalContext(checkpoint_root=root / "ckpt"), root / "gen")
    finally:
        torch.set_num_threads(before)
    return root / "gen"


def test_sample_writes_png_grid(artifact_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(artifact_dir), "--n", "5", "--out", str(out), "--seed", "1"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out


def test_sample_writes_npz_pool(artifact_dir, tmp_path):
    out = tmp_path / "sub" / "pool.npz"
    assert main(["sample", str(artifact_dir), "--n", "7", "--out", str(out), "--seed", "2"]) == 0
    pool = SyntheticPool.load(out)
    assert pool.images.shape == (7, 1, 32, 32) and pool.labels.shape == (7, 32, 32)
    assert set(np.unique(pool.labels).tolist()) <= {0, 1}
    assert pool.meta["seed"] == 2 and pool.meta["family"] == "dcgan_wgangp"
    again = tmp_path / "again.npz"
    main(["sample", str(artifact_dir), "--n", "7", "--out", str(again), "--seed", "2"])
    np.testing.assert_array_equal(SyntheticPool.load(again).images, pool.images)


def test_sample_refuses_a_folder_that_is_not_an_artifact(artifact_dir, tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g.png")]) == 2
    assert "nowhere" in capsys.readouterr().err
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "weights.pt").write_bytes((artifact_dir / "weights.pt").read_bytes())
    assert main(["sample", str(partial), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "partial" in err and "generator.json" in err and "not a complete generator artifact" in err
    assert main(["sample", str(artifact_dir), "--out", str(tmp_path / "g.jpg")]) == 2
    assert ".png" in capsys.readouterr().err


def test_sample_refuses_a_planted_pickle_and_never_runs_it(artifact_dir, tmp_path, capsys):
    import shutil

    bad, target = tmp_path / "bad", tmp_path / "pwned"
    shutil.copytree(artifact_dir, bad)
    plant_pickle(bad / "weights.pt", target)
    assert main(["sample", str(bad), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "weights.pt" in err and "not a tensor file" in err
    assert not target.exists()


@pytest.fixture(scope="module")
def pix2pix_dir(tmp_path_factory):
    """A conditional (needs_masks) artifact: pix2pix, two steps on 24x24 slices of two subjects
    (padded to its 32x32 model and cropped back)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sample_cli_pix2pix")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (6, 24, 24)).astype(np.int64)
    images = (labels[:, None] - 1.0 + rng.normal(0, 0.1, (6, 1, 24, 24))).astype(np.float32)
    data = SliceSet(images, labels, np.array(["a"] * 3 + ["b"] * 3), np.tile(np.arange(3), 2),
                    {"a": (1.0, 1.0, 1.0), "b": (1.0, 1.0, 1.0)}, 3)
    spec = GeneratorSpec(key="p", name="pix2pix", seed=0, quality={"samples": 4, "reference_steps": 2},
                         config={"steps": 2, "batch_size": 2, "base_filters": 4, "disc_filters": 4})
    try:
        train_generator(spec, GeneratorData(data), LocalContext(checkpoint_root=root / "ckpt"), root / "gen")
    finally:
        torch.set_num_threads(before)
    return root / "gen", labels


def test_sample_conditions_a_conditional_family_on_its_training_masks(pix2pix_dir, tmp_path, capsys):
    gen, labels = pix2pix_dir
    out = tmp_path / "pool.npz"
    assert main(["sample", str(gen), "--n", "8", "--out", str(out), "--seed", "3"]) == 0
    pool = SyntheticPool.load(out)
    assert pool.images.shape == (8, 1, 24, 24) and pool.meta["family"] == "pix2pix"
    # every label map is one of the training subset's six, each used once per pass (6 + 2)
    used = [int(np.flatnonzero((labels == m).all(axis=(1, 2)))[0]) for m in pool.labels]
    assert sorted(used[:6]) == list(range(6)) and len(set(used[6:])) == 2
    assert main(["sample", str(gen), "--n", "3", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_sample_takes_masks_from_a_file_and_names_a_bad_one(pix2pix_dir, tmp_path, capsys):
    gen, labels = pix2pix_dir
    mine = np.zeros((2, 24, 24), np.int64)
    mine[1, 5:15, 5:15] = 2
    np.savez(tmp_path / "mine.npz", labels=mine)
    out = tmp_path / "pool.npz"
    assert main(["sample", str(gen), "--n", "4", "--out", str(out), "--masks", str(tmp_path / "mine.npz")]) == 0
    assert sorted(SyntheticPool.load(out).labels.sum(axis=(1, 2)).tolist()) == [0, 0, 200, 200]
    np.savez(tmp_path / "small.npz", labels=mine[:, :16, :16])
    assert main(["sample", str(gen), "--out", str(out), "--masks", str(tmp_path / "small.npz")]) == 2
    assert "small.npz" in (err := capsys.readouterr().err) and "(N, 24, 24)" in err
    np.savez(tmp_path / "classes.npz", labels=mine + 3)
    assert main(["sample", str(gen), "--out", str(out), "--masks", str(tmp_path / "classes.npz")]) == 2
    assert "classes.npz" in (err := capsys.readouterr().err) and "[0, 3)" in err


def test_sample_without_recorded_masks_asks_for_them(pix2pix_dir, artifact_dir, tmp_path, capsys):
    import shutil

    gen, _ = pix2pix_dir
    old = tmp_path / "old"
    shutil.copytree(gen, old)
    (old / "masks.npz").unlink()  # an artifact written before conditional artifacts recorded masks
    assert main(["sample", str(old), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "pix2pix is a conditional family" in err and "masks.npz" in err and "--masks" in err
    np.savez(tmp_path / "m.npz", labels=np.zeros((1, 32, 32), np.int64))
    assert main(["sample", str(artifact_dir), "--out", str(tmp_path / "g.png"), "--masks", str(tmp_path / "m.npz")]) == 2
    assert "takes no masks" in capsys.readouterr().err
