"""Dataset manifests: which subjects exist, where their NIfTI files are, which are labelled.

A manifest is a CSV or Parquet table, one row per subject:

========================  ===================================================================
``subject_id``            required, unique, non-empty
``image``                 required: one path, or several separated by ``;`` (one per modality,
                          in channel order). Instead of ``image`` a manifest may have one
                          ``image_<modality>`` column per modality (``image_t1``,
                          ``image_flair``...), channels in column order; not both.
``label``                 required column; the label map path, empty for an unlabelled subject
``labelled``              optional: true/false (also 1/0, yes/no). Default: whether ``label``
                          is set. A labelled subject must have a label path.
``group``                 optional: e.g. a patient id. Rows of one group stay on the same side
                          of every split and in the same subsets (splits.py). Without the
                          column each subject is its own group; with it, every row needs one.
anything else             subject metadata (age, lesion load, diagnosis...), kept per subject
========================  ===================================================================

Relative paths are relative to the manifest's folder, so a dataset folder can be moved or
copied whole. ``read_manifest`` raises one ``DataError`` listing every problem it finds (empty
manifest, missing column, duplicate or empty ids, missing files, a labelled subject without a
label path), each naming the manifest line and the subject. ``scan_manifest`` returns those
problems instead of raising, for ``synthmix data inspect``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from synthmix.errors import DataError

MANIFEST_NAMES = ("manifest.csv", "manifest.parquet")
IMAGE, IMAGE_PREFIX, LABEL, LABELLED, SUBJECT_ID = "image", "image_", "label", "labelled", "subject_id"
GROUP = "group"
_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}


@dataclass(frozen=True)
class SubjectRecord:
    """One manifest row: absolute file paths, labelled flag, metadata (column -> value) and
    group (the ``group`` column, else the subject id)."""

    subject_id: str
    image_paths: tuple[Path, ...]
    label_path: Path | None
    labelled: bool
    metadata: dict = field(default_factory=dict)
    group: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.subject_id)


@dataclass(frozen=True, eq=False)
class Manifest:
    """A parsed manifest. ``subjects`` keeps the manifest's row order; so do the id lists."""

    path: Path
    subjects: list[SubjectRecord]
    labelled_ids: list[str]
    unlabelled_ids: list[str]
    metadata: pd.DataFrame  # indexed by subject_id; the non-reserved columns
    modalities: tuple[str, ...] = (IMAGE,)

    @property
    def groups(self) -> dict[str, str]:
        """subject id -> group (the subject itself when the manifest has no group column)."""
        return {r.subject_id: r.group for r in self.subjects}

    @property
    def has_groups(self) -> bool:
        return any(r.group != r.subject_id for r in self.subjects)

    def subject(self, subject_id: str) -> SubjectRecord:
        for record in self.subjects:
            if record.subject_id == subject_id:
                return record
        raise DataError(f"{self.path}: no subject {subject_id!r}")

    def fingerprint(self) -> str:
        """Content hash of the dataset: every row (id, labelled flag, metadata, modality names)
        and the bytes of every file it names, in subject-id order.

        File contents rather than paths or mtimes, so the same data copied to another folder or
        machine (a cluster node, a resumed study) keeps its fingerprint and its trained
        generators, while any edited image or label changes it. Hashing is cached per
        (path, size, mtime) within a process, so a second call costs only stat() calls.
        """
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps({"format": "synthmix-manifest-1", "modalities": self.modalities}).encode())
        for record in sorted(self.subjects, key=lambda r: r.subject_id):
            row = {
                "id": record.subject_id,
                "labelled": record.labelled,
                "images": [file_digest(p) for p in record.image_paths],
                "label": file_digest(record.label_path) if record.label_path else None,
                "metadata": {k: _json_value(v) for k, v in sorted(record.metadata.items())},
            }
            if record.group != record.subject_id:  # absent for group-less rows: old fingerprints hold
                row["group"] = record.group
            digest.update(json.dumps(row, sort_keys=True).encode())
        return digest.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """blake2b of a file's bytes, cached by (path, size, mtime_ns)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _json_value(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest (a CSV/Parquet file, or a folder holding manifest.csv or
    manifest.parquet). Raises one DataError listing every problem found."""
    manifest, problems = scan_manifest(path)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{manifest.path}: {len(problems)} problem(s)\n{listing}")
    return manifest


def scan_manifest(path: str | Path) -> tuple[Manifest, list[str]]:
    """Parse a manifest and return it with its row-level problems (missing files, duplicate
    ids...), raising a DataError only when the table cannot be used at all (unreadable, empty,
    a required column missing)."""
    file = find_manifest(Path(path))
    table = _read_table(file)
    image_columns = _image_columns(file, table)
    for column in (SUBJECT_ID, LABEL):
        if column not in table.columns:
            raise DataError(f"{file}: missing required column {column!r} "
                            f"(columns: {', '.join(map(str, table.columns))})")
    reserved = {SUBJECT_ID, LABEL, LABELLED, GROUP, *image_columns}
    meta_columns = [c for c in table.columns if c not in reserved]
    metadata = _metadata_frame(table, meta_columns)

    base = file.parent.absolute()
    records, problems = [], []
    for row, (_, values) in enumerate(table.iterrows()):
        where = _where(file, row)
        record, row_problems = _parse_row(values, image_columns, metadata.iloc[row].to_dict(), base, where)
        records.append(record)
        problems.extend(row_problems)
    problems.extend(_duplicate_problems(file, records))

    metadata.index = pd.Index([r.subject_id for r in records], name=SUBJECT_ID)
    modalities = tuple(c[len(IMAGE_PREFIX):] for c in image_columns) if image_columns != [IMAGE] else \
        _modality_names(records)
    manifest = Manifest(
        path=file, subjects=records,
        labelled_ids=[r.subject_id for r in records if r.labelled],
        unlabelled_ids=[r.subject_id for r in records if not r.labelled],
        metadata=metadata, modalities=modalities,
    )
    return manifest, problems


def find_manifest(path: Path) -> Path:
    """The manifest file itself: ``path`` if it is a file, else manifest.csv/.parquet inside it."""
    if path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return path / name
        raise DataError(f"{path}: no {' or '.join(MANIFEST_NAMES)} in this folder")
    if not path.exists():
        raise DataError(f"{path}: manifest not found")
    return path


def _read_table(file: Path) -> pd.DataFrame:
    try:
        if file.suffix.lower() in (".parquet", ".pq"):
            table = pd.read_parquet(file)
        else:
            table = pd.read_csv(file, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{file}: empty manifest (no header, no subjects)") from None
    except Exception as err:  # any parser failure is a problem with the user's file
        raise DataError(f"{file}: cannot read manifest: {err}") from None
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        raise DataError(f"{file}: empty manifest (a header but no subjects)")
    return table.reset_index(drop=True)


def _image_columns(file: Path, table: pd.DataFrame) -> list[str]:
    prefixed = [c for c in table.columns if c.startswith(IMAGE_PREFIX) and len(c) > len(IMAGE_PREFIX)]
    if IMAGE in table.columns and prefixed:
        raise DataError(f"{file}: use either an 'image' column or image_<modality> columns, not both "
                        f"(found 'image' and {', '.join(prefixed)})")
    if IMAGE in table.columns:
        return [IMAGE]
    if prefixed:
        return prefixed
    raise DataError(f"{file}: missing required column 'image' (or image_<modality> columns); "
                    f"columns: {', '.join(table.columns)}")


def _metadata_frame(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Metadata columns, numeric where every non-empty value parses as a number."""
    frame = pd.DataFrame(index=table.index)
    for column in columns:
        values = table[column]
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            text = values.astype(str).str.strip()
            numeric = pd.to_numeric(text.replace("", np.nan), errors="coerce")
            values = numeric if numeric.notna().sum() == (text != "").sum() else text
        frame[column] = values
    return frame


def _where(file: Path, row: int) -> str:
    # CSV: the line in the file (header is line 1); Parquet: the 1-based row.
    if file.suffix.lower() in (".parquet", ".pq"):
        return f"{file.name} row {row + 1}"
    return f"{file.name} line {row + 2}"


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _resolve(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _parse_row(values: pd.Series, image_columns: list[str], metadata: dict, base: Path,
               where: str) -> tuple[SubjectRecord, list[str]]:
    problems = []
    subject_id = _text(values[SUBJECT_ID])
    name = f"{where} (subject {subject_id!r})"
    if not subject_id:
        problems.append(f"{where}: empty subject_id")
    group = _text(values[GROUP]) if GROUP in values.index else subject_id
    if GROUP in values.index and not group:
        problems.append(f"{name}: empty 'group' (every row needs one when the column is given; "
                        "use the subject id for a subject scanned once)")
    images = []
    for column in image_columns:
        parts = [p.strip() for p in _text(values[column]).split(";") if p.strip()]
        if not parts:
            problems.append(f"{name}: no image path in column {column!r}")
        images.extend(_resolve(base, p) for p in parts)
    label_text = _text(values[LABEL])
    label = _resolve(base, label_text) if label_text else None
    labelled = label is not None
    if LABELLED in values.index and _text(values[LABELLED]):
        flag = _text(values[LABELLED]).lower()
        if flag in _TRUE | _FALSE:
            labelled = flag in _TRUE
        else:
            problems.append(f"{name}: 'labelled' must be true or false, got {values[LABELLED]!r}")
    if labelled and label is None:
        problems.append(f"{name}: marked labelled but has no label path")
    for kind, path in [("image", p) for p in images] + [("label", label)]:
        if path is not None and not path.is_file():
            problems.append(f"{name}: {kind} file not found: {path}")
    clean_meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in metadata.items()}
    record = SubjectRecord(subject_id, tuple(images), label, labelled, clean_meta, group)
    return record, problems


def _duplicate_problems(file: Path, records: list[SubjectRecord]) -> list[str]:
    rows: dict[str, list[int]] = {}
    for row, record in enumerate(records):
        if record.subject_id:
            rows.setdefault(record.subject_id, []).append(row)
    problems = []
    for sid, duplicates in rows.items():
        if len(duplicates) > 1:
            places = ", ".join(_where(file, r).removeprefix(f"{file.name} ") for r in duplicates)
            problems.append(f"{file.name}: duplicate subject_id {sid!r} on {places}")
    return problems


def _modality_names(records: list[SubjectRecord]) -> tuple[str, ...]:
    """Names for ``;``-separated image paths: 'image' for one, image0, image1... for several."""
    count = max((len(r.image_paths) for r in records), default=1)
    return (IMAGE,) if count <= 1 else tuple(f"{IMAGE}{i}" for i in range(count))
