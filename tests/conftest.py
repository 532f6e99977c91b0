"""Shared fixtures: tiny phantom datasets, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthmix.datasets.phantom import write_phantom_dataset


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom dataset folder: 8 labelled subjects, 32x32x16 voxels, 4 classes, seed 0, no
    unlabelled subjects. Session-scoped and shared: do not modify its files."""
    out = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(out, subjects=8, size=32, classes=4, seed=0)
    return out


@pytest.fixture(scope="session")
def phantom_manifest(phantom_dir: Path) -> Path:
    """The manifest.csv of ``phantom_dir``."""
    return phantom_dir / "manifest.csv"


@pytest.fixture(scope="session")
def phantom_unlabelled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom dataset with an unlabelled pool (GANsfer): 6 labelled + 4 unlabelled subjects,
    32x32x16 voxels, 4 classes, seed 1. Session-scoped and shared: do not modify its files."""
    out = tmp_path_factory.mktemp("phantom_unlabelled")
    write_phantom_dataset(out, subjects=6, size=32, classes=4, unlabelled=4, seed=1)
    return out
