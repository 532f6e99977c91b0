"""Benchmark of the preprocessed cache on the default phantom dataset.

Prints the time to write the default phantom (20 subjects, 64x64x32), to build the cache, and
to load one split's training arrays from the cache versus decoding the NIfTI files again (the
same preprocessing, skip_empty and normalisation on both paths), with their ratio. Measures and
prints; asserts nothing. Usage: ``python benchmarks/data_cache.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from synthmix.datasets.cache import build_cache, open_cache, subject_slices
from synthmix.datasets.loader import fit_normaliser, load_slices, prepare_split_data
from synthmix.datasets.manifest import read_manifest
from synthmix.datasets.phantom import write_phantom_dataset
from synthmix.datasets.preprocess import PreprocessConfig
from synthmix.datasets.splits import SplitSpec, build_splits


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def decode_training_arrays(manifest, subject_ids, cfg, normaliser) -> tuple[np.ndarray, np.ndarray]:
    """The reference: decode each training subject's NIfTI files and preprocess them again."""
    images, labels = [], []
    for sid in subject_ids:
        img, lab, _ = subject_slices(manifest.subject(sid), cfg)
        keep = lab.reshape(len(lab), -1).any(axis=1) if cfg.skip_empty else slice(None)
        images.append(img[keep])
        labels.append(lab[keep])
    return normaliser.apply(np.concatenate(images)), np.concatenate(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest_path = write_phantom_dataset(Path(tmp) / "phantom")
        t_phantom = time.perf_counter() - start

        manifest = read_manifest(manifest_path)
        cfg = PreprocessConfig(skip_empty=True, normalise="zscore")
        start = time.perf_counter()
        entry = build_cache(manifest, cfg, Path(tmp) / "cache")
        t_build = time.perf_counter() - start

        split = build_splits(manifest.labelled_ids, SplitSpec(folds=5, seed=0)).get(0, 0, 1.0)
        norm = fit_normaliser(entry, split.train, cfg)

        def from_cache():
            e = open_cache(entry.path)
            return load_slices(e, split.train, normaliser=norm, training=True, preprocess=cfg)

        t_cache, sliceset = timed(from_cache, args.repeats)
        t_decode, (images, labels) = timed(lambda: decode_training_arrays(manifest, split.train, cfg, norm),
                                           args.repeats)
        t_prepare, _ = timed(lambda: prepare_split_data(manifest_path, split, cfg, Path(tmp) / "cache"),
                             args.repeats)
        same = np.array_equal(sliceset.images, images) and np.array_equal(sliceset.labels, labels)

    mb = sliceset.images.nbytes / 2**20
    print(f"phantom: {len(manifest.subjects)} subjects, slices {entry.images.shape[1:]}, "
          f"training split: {len(split.train)} subjects, {len(sliceset)} non-empty slices ({mb:.1f} MiB)")
    print(f"phantom generation (write_phantom_dataset defaults): {t_phantom:8.3f} s")
    print(f"cache build (decode + slice + write, cold):          {t_build:8.3f} s")
    print(f"training arrays from cache (open_cache+load_slices): {t_cache * 1e3:8.2f} ms  (median of {args.repeats})")
    print(f"training arrays by decoding NIfTI again:             {t_decode * 1e3:8.2f} ms  (median of {args.repeats})")
    print(f"prepare_split_data, warm cache (manifest + train/val/test + fit): {t_prepare * 1e3:8.2f} ms")
    print(f"ratio decode / cache: {t_decode / t_cache:.1f}x   (identical arrays: {same})")


if __name__ == "__main__":
    main()
