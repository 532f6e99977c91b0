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
