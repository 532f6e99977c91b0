"""``synthmix data inspect``: what a dataset holds and what is wrong with it.

Reads every subject once (through ``validate_dataset``) and summarises subjects, shapes, voxel
spacing, intensity range per modality, label class frequencies and metadata. A bad subject never
stops the inspection: it is listed under problems (and the CLI exits 1). Only a manifest that
cannot be read at all raises a DataError.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from synthmix.datasets.manifest import scan_manifest
from synthmix.datasets.nifti import LoadedSubject, validate_dataset


@dataclass
class IntensityStats:
    """Running intensity summary of one modality over all subjects."""

    minimum: float = np.inf
    maximum: float = -np.inf
    total: float = 0.0
    count: int = 0
    p1: list[float] = field(default_factory=list)  # per subject
    p99: list[float] = field(default_factory=list)

    def add(self, volume: np.ndarray) -> None:
        self.minimum = min(self.minimum, float(volume.min()))
        self.maximum = max(self.maximum, float(volume.max()))
        self.total += float(volume.sum(dtype=np.float64))
        self.count += volume.size
        low, high = np.percentile(volume, [1, 99])
        self.p1.append(float(low))
        self.p99.append(float(high))

    def render(self) -> str:
        if not self.count:
            return "no data"
        return (f"min {self.minimum:.4g}, max {self.maximum:.4g}, mean {self.total / self.count:.4g}, "
                f"1st-99th percentile (median over subjects) {np.median(self.p1):.4g} to {np.median(self.p99):.4g}")


@dataclass
class DatasetReport:
    """The summary ``synthmix data inspect`` prints; ``problems`` is empty for a clean dataset."""

    manifest_path: Path
    labelled: int
    unlabelled: int
    modalities: tuple[str, ...]
    loaded: int = 0
    shapes: Counter = field(default_factory=Counter)  # (X, Y, Z) -> subjects
    spacings: Counter = field(default_factory=Counter)  # rounded (X, Y, Z) mm -> subjects
    intensity: dict[str, IntensityStats] = field(default_factory=dict)
    class_voxels: Counter = field(default_factory=Counter)  # label value -> voxels
    class_subjects: Counter = field(default_factory=Counter)  # label value -> subjects having it
    metadata: pd.DataFrame = field(default_factory=pd.DataFrame)
    groups: Counter = field(default_factory=Counter)  # group -> subjects; empty without a group column
    problems: list[str] = field(default_factory=list)

    def add(self, subject: LoadedSubject) -> None:
        """Fold one cleanly loaded subject into the summary."""
        self.loaded += 1
        self.shapes[subject.image.shape[1:]] += 1
        self.spacings[tuple(round(s, 3) for s in subject.spacing)] += 1
        for index, volume in enumerate(subject.image):
            name = self.modalities[index] if index < len(self.modalities) else f"channel {index}"
            self.intensity.setdefault(name, IntensityStats()).add(volume)
        if subject.label is not None:
            counts = np.bincount(subject.label.ravel())
            for value in np.flatnonzero(counts):
                self.class_voxels[int(value)] += int(counts[value])
                self.class_subjects[int(value)] += 1

    @property
    def notes(self) -> list[str]:
        """Things worth knowing that are not errors."""
        values = sorted(self.class_voxels)
        if values and values != list(range(values[-1] + 1)):
            return [f"label values {values} are not consecutive from 0: a study must declare "
                    f"num_classes > {values[-1]} or the labels need remapping"]
        return []

    def render(self) -> str:
        lines = [
            f"dataset     {self.manifest_path}",
            f"subjects    {self.labelled + self.unlabelled} ({self.labelled} labelled, "
            f"{self.unlabelled} unlabelled); {self.loaded} loaded cleanly",
            f"modalities  {len(self.modalities)}: {', '.join(self.modalities)}",
        ]
        lines += self._render_groups()
        lines += _counted("shape", {"x".join(map(str, k)): v for k, v in self.shapes.items()})
        lines += _counted("spacing", {"x".join(f"{s:g}" for s in k) + " mm": v for k, v in self.spacings.items()})
        lines.append("intensity")
        lines += [f"  {name}: {stats.render()}" for name, stats in self.intensity.items()] or ["  (none)"]
        lines += self._render_classes()
        lines += self._render_metadata()
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"problems    {len(self.problems) or 'none'}")
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)

    def _render_groups(self) -> list[str]:
        if not self.groups:
            return []
        (largest, size), = self.groups.most_common(1)
        several = sum(n > 1 for n in self.groups.values())
        return [f"groups      {len(self.groups)} (splits keep each group together); {several} with more than "
                f"one subject; largest: {largest} ({size} subjects)"]

    def _render_classes(self) -> list[str]:
        total = sum(self.class_voxels.values())
        if not total:
            return ["classes     (no label maps loaded)"]
        lines = ["classes     value: share of labelled voxels (subjects containing it)"]
        for value in sorted(self.class_voxels):
            share = self.class_voxels[value] / total
            lines.append(f"  {value}: {share:8.3%}  ({_subjects(self.class_subjects[value])})")
        return lines

    def _render_metadata(self) -> list[str]:
        if self.metadata.empty or not len(self.metadata.columns):
            return ["metadata    (none)"]
        lines = ["metadata"]
        for column in self.metadata.columns:
            values = self.metadata[column]
            if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                present = values.dropna()
                summary = (f"min {present.min():.4g}, median {present.median():.4g}, max {present.max():.4g}"
                           if len(present) else "all empty")
                missing = len(values) - len(present)
                lines.append(f"  {column}: {summary}" + (f" ({missing} empty)" if missing else ""))
            else:
                top = ", ".join(f"{k} ({v})" for k, v in values.astype(str).value_counts().head(5).items())
                lines.append(f"  {column}: {values.nunique()} distinct: {top}")
        return lines


def _subjects(n: int) -> str:
    return f"{n} subject" + ("" if n == 1 else "s")


def _counted(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return [f"{title:<11} (none loaded)"]
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    return [f"{title:<11} " + "; ".join(f"{k} ({_subjects(v)})" for k, v in ordered)]


def inspect_dataset(path: str | Path) -> DatasetReport:
    """Summarise a dataset folder or manifest file, listing every problem instead of raising."""
    manifest, _ = scan_manifest(path)  # its problems come back from validate_dataset below
    report = DatasetReport(manifest_path=manifest.path, labelled=len(manifest.labelled_ids),
                           unlabelled=len(manifest.unlabelled_ids), modalities=manifest.modalities,
                           metadata=manifest.metadata,
                           groups=Counter(manifest.groups.values()) if manifest.has_groups else Counter())
    report.problems = validate_dataset(manifest.path, on_subject=report.add)
    return report
