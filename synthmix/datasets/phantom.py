"""The built-in phantom dataset: brain-like 3D NIfTI images, label maps and a manifest.

This is synthmix's embedded default data, so that every study, test and demo runs without a
download. Each subject has real variance for a GAN and an augmentation to learn:

* anatomy: scalp, a skull ring, a CSF rim, a cortex of grey matter with a folded boundary to the
  white matter, deep grey nuclei, an interhemispheric fissure, two lateral ventricles and
  white-matter lesions;
* an age-like covariate (20-90) that enlarges the ventricles and the CSF rim (atrophy) and
  raises the expected number of lesions; ``age`` and ``unlabelled_age`` narrow its range for the
  labelled and the unlabelled subjects (001's unlabelled pool is older than its labelled set,
  and so, through the covariate, has more lesions and larger ventricles);
* lesions of random number, size, shape and place;
* a random rigid pose (rotation + translation) applied to the anatomy inside the voxel grid,
  not to the header: every subject has the same affine, like CT scans that were never
  co-registered (paper 000);
* partial-volume blur, a smooth multiplicative bias field, Rician noise, a random scanner gain.

Anatomy is defined analytically in head coordinates (mm) and sampled at the voxel centres
through the pose, so any ``size`` gives the same head at a different resolution: the field of
view is fixed at ``FOV_MM`` and the spacing is ``FOV_MM/size`` in-plane, twice that across
slices (``size//2`` slices).

Base label classes are 0 background (air, scalp and skull: visible in the image, background in
the label), 1 grey matter, 2 white matter, 3 CSF (ventricles and the CSF rim/fissure),
4 lesions. ``classes`` merges them as in ``CLASS_MERGES``; lesions stay visible in the image
whatever ``classes`` is.

``classes=7`` is 004's BraTS class structure instead: the same head (same draws) with one
tumour in place of the small white-matter lesions, drawn from a stream of its own
(``[seed, subject_index, 7]``) so that every other class count stays byte-identical. The tumour
is a necrotic core inside an enhancing rim inside irregular peritumoral oedema; labels follow
004's order: 0 background, 1 necrotic core, 2 oedema, 3 enhancing rim, 4 white matter, 5 grey
matter, 6 CSF (so 004's 4-class problem is ``{4: 0, 5: 0, 6: 0}``). Tumour tissues have their
own intensities in the image (core dark, oedema brighter than white matter, rim brightest).

``truth``: the unlabelled subjects' label maps are written too, in the manifest's ``label``
column with ``labelled`` false, so nothing trains on them but an evaluation can score a
segmentation of them (001 needed MALPEM as a surrogate; a phantom knows the truth).

Every random choice comes from ``np.random.default_rng([seed, subject_index])``: a subject does
not change when more subjects are asked for, and the same arguments give byte-identical files
(gzip is written with mtime 0 and no file name).

Written by hand because no maintained library draws labelled brain phantoms with controlled
covariates and pose; scipy supplies the blur, the rotations and the lesion component count.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.transform import Rotation

from synthmix.errors import DataError

FOV_MM = 192.0

# Base classes (what the phantom draws) and how ``classes=K`` merges them: CLASS_MERGES[K][b] is
# the written label of base class b.
BASE_CLASS_NAMES = ("background", "grey matter", "white matter", "CSF/ventricles", "lesion")
CLASS_MERGES: dict[int, tuple[int, ...]] = {
    5: (0, 1, 2, 3, 4),  # all classes
    4: (0, 1, 2, 3, 2),  # lesions counted as white matter
    3: (0, 1, 1, 2, 1),  # background, parenchyma (GM + WM + lesions), CSF/ventricles
    2: (0, 1, 1, 1, 1),  # background, intracranial (brain + CSF)
}
CLASS_NAMES: dict[int, tuple[str, ...]] = {
    5: BASE_CLASS_NAMES,
    4: ("background", "grey matter", "white matter (incl. lesions)", "CSF/ventricles"),
    3: ("background", "parenchyma", "CSF/ventricles"),
    2: ("background", "intracranial"),
    7: ("background", "necrotic core", "oedema", "enhancing rim", "white matter", "grey matter", "CSF"),
}
TUMOUR_CLASSES = 7  # 004's class structure: not a merge of the base classes (see the module docstring)
PHANTOM_CLASSES = (*sorted(CLASS_MERGES), TUMOUR_CLASSES)

# Tissues drawn in the image; more than the label classes because scalp and skull are visible.
AIR, SCALP, SKULL, CSF, GM, WM, VENTRICLE, LESION = range(8)
TISSUE_TO_BASE_LABEL = np.array([0, 0, 0, 3, 1, 2, 3, 4], dtype=np.uint8)
TISSUE_INTENSITY = np.array([0.0, 0.55, 0.95, 0.12, 0.45, 0.68, 0.10, 0.90])
# Tumour tissues (classes=7 only), after the others so the draws above keep their order.
NECROTIC, OEDEMA, ENHANCING = 8, 9, 10
TUMOUR_INTENSITY = np.array([0.25, 0.84, 1.10])
TISSUE_TO_TUMOUR_LABEL = np.array([0, 0, 0, 6, 5, 4, 6, 2, 1, 2, 3], dtype=np.uint8)

HEAD_RADII_MM = np.array([66.0, 82.0, 64.0])  # left-right, posterior-anterior, inferior-superior
SCALP_MM, SKULL_MM = 4.0, 6.0
MAX_ROTATION_DEG = np.array([8.0, 6.0, 12.0])  # about x (pitch), y (roll), z (in-plane yaw)
MAX_SHIFT_MM = np.array([8.0, 8.0, 6.0])
AGE_RANGE = (20.0, 90.0)  # the covariate's span: atrophy and lesion rate are linear over it


def phantom_geometry(size: int) -> tuple[tuple[int, int, int], np.ndarray]:
    """The volume shape and the (RAS+, centred) affine shared by every subject of a given size."""
    depth = size // 2
    step = FOV_MM / size
    spacing = np.array([step, step, 2 * step])
    shape = (size, size, depth)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * spacing
    return shape, affine


@dataclass(frozen=True)
class SmoothField:
    """A random smooth scalar field (sum of plane waves), unit variance, evaluable anywhere."""

    directions: np.ndarray  # (3, K) wave vectors in rad/mm
    phases: np.ndarray  # (K,)
    amplitudes: np.ndarray  # (K,)

    @classmethod
    def draw(cls, rng: np.random.Generator, wavelength_mm: tuple[float, float], waves: int = 12) -> SmoothField:
        unit = rng.normal(size=(3, waves))
        unit /= np.linalg.norm(unit, axis=0)
        wavelength = rng.uniform(*wavelength_mm, size=waves)
        return cls(unit * (2 * np.pi / wavelength), rng.uniform(0, 2 * np.pi, waves),
                   np.full(waves, np.sqrt(2.0 / waves)))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        dtype = points.dtype
        waves = points @ self.directions.astype(dtype) + self.phases.astype(dtype)
        return np.cos(waves) @ self.amplitudes.astype(dtype)


@dataclass(frozen=True)
class Ellipsoid:
    centre: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray  # maps ellipsoid axes to head axes

    def rho(self, points: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside, 1 on the surface."""
        local = (points - self.centre) @ self.rotation
        return np.sqrt(((local / self.radii) ** 2).sum(axis=1))


def _rho(points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised radius of a head-centred, axis-aligned ellipsoid; radii may vary per point."""
    return np.sqrt(((points / radii) ** 2).sum(axis=1))


@dataclass(frozen=True)
class Anatomy:
    """One subject's head, in head coordinates (mm), before pose, blur and noise."""

    age: float
    head_radii: np.ndarray
    csf_rim_mm: float
    cortex_mm: float
    fissure_mm: float
    surface: SmoothField
    gyri: SmoothField
    texture: SmoothField
    nuclei: tuple[Ellipsoid, ...]
    ventricles: tuple[Ellipsoid, ...]
    lesions: tuple[Ellipsoid, ...] = ()
    tumour: "Tumour | None" = None

    @property
    def brain_radii(self) -> np.ndarray:
        return self.head_radii - SCALP_MM - SKULL_MM - self.csf_rim_mm

    def tissues(self, points: np.ndarray) -> np.ndarray:
        """Tissue code at each (N, 3) head-coordinate point.

        Nested: each layer is only evaluated on the points inside the one around it, which
        keeps a default dataset at seconds (most of the grid is air or scalp)."""
        tissue = np.full(len(points), AIR, dtype=np.uint8)
        head = np.flatnonzero(_rho(points, self.head_radii) <= 1)
        tissue[head] = self._head_tissues(points[head])
        return tissue

    def _head_tissues(self, points: np.ndarray) -> np.ndarray:
        tissue = np.full(len(points), SCALP, dtype=np.uint8)
        tissue[_rho(points, self.head_radii - SCALP_MM) <= 1] = SKULL
        tissue[_rho(points, self.head_radii - SCALP_MM - SKULL_MM) <= 1] = CSF
        brain_r = self.brain_radii
        # Only points near the brain surface need the (costly) surface field: its amplitude is
        # bounded by the sum of its wave amplitudes.
        rho = _rho(points, brain_r)
        margin = 2.0 / brain_r.mean() * np.abs(self.surface.amplitudes).sum()
        near = np.flatnonzero(np.abs(rho - 1) <= margin)
        inside = rho <= 1
        inside[near] = rho[near] <= 1 + 2.0 / brain_r.mean() * self.surface(points[near])
        brain = np.flatnonzero(inside)
        tissue[brain] = self._brain_tissues(points[brain], rho[brain])
        return tissue

    def _brain_tissues(self, points: np.ndarray, rho: np.ndarray) -> np.ndarray:
        tissue = np.full(len(points), GM, dtype=np.uint8)
        # The grey/white boundary is folded: cortex thickness varies with a gyral field.
        thickness = self.cortex_mm * (1 + 0.45 * self.gyri(points))
        tissue[_rho(points, self.brain_radii - thickness[:, None]) <= 1] = WM
        for nucleus in self.nuclei:
            tissue[nucleus.rho(points) <= 1] = GM
        # The fissure splits the hemispheres above and around, not through, the deep structures.
        fissure = (np.abs(points[:, 0]) < self.fissure_mm / 2) & (rho > 0.55) & (points[:, 2] > -10)
        tissue[fissure] = CSF
        for ventricle in self.ventricles:
            tissue[ventricle.rho(points) <= 1] = VENTRICLE
        for lesion in self.lesions:
            tissue[(lesion.rho(points) <= 1) & ((tissue == GM) | (tissue == WM))] = LESION
        if self.tumour is not None:
            self.tumour.paint(points, tissue)
        return tissue


@dataclass(frozen=True)
class Tumour:
    """A glioma-like tumour (classes=7): an ellipsoidal core, necrotic inside ``necrotic_rho`` of
    its normalised radius and enhancing outside it, in an oedema ellipsoid whose surface is
    roughened by a smooth field. It replaces parenchyma (GM, WM) only."""

    core: Ellipsoid
    oedema: Ellipsoid
    roughness: SmoothField
    necrotic_rho: float
    intensities: np.ndarray  # (3,) necrotic, oedema, enhancing, jittered per subject

    def paint(self, points: np.ndarray, tissue: np.ndarray) -> None:
        parenchyma = (tissue == GM) | (tissue == WM)
        rho_o = self.oedema.rho(points)
        tissue[parenchyma & (rho_o <= 1 + 0.1 * self.roughness(points))] = OEDEMA
        rho_c = self.core.rho(points)
        tissue[parenchyma & (rho_c <= 1)] = ENHANCING
        tissue[parenchyma & (rho_c <= self.necrotic_rho)] = NECROTIC


def draw_tumour(rng: np.random.Generator, anatomy: Anatomy) -> Tumour:
    """One tumour centred in white matter away from the ventricles: core radius log-uniform
    10-20 mm, oedema 1.4-2 times the core."""
    candidates = rng.uniform(-0.8, 0.8, size=(4000, 3)) * anatomy.brain_radii
    in_wm = anatomy.tissues(candidates) == WM
    clear = np.all([v.rho(candidates) > 1.5 for v in anatomy.ventricles], axis=0)
    pool = candidates[in_wm & clear] if (in_wm & clear).any() else candidates[in_wm]
    centre = pool[rng.integers(len(pool))]
    radius = float(np.exp(rng.uniform(np.log(10.0), np.log(20.0))))
    core = Ellipsoid(centre, radius * rng.uniform(0.8, 1.2, size=3), _rotation(rng, np.array([180.0] * 3)))
    oedema = Ellipsoid(centre + rng.normal(0, 0.15 * radius, size=3),
                       core.radii * rng.uniform(1.4, 2.0), _rotation(rng, np.array([180.0] * 3)))
    return Tumour(core=core, oedema=oedema, roughness=SmoothField.draw(rng, (10, 25)),
                  necrotic_rho=float(rng.uniform(0.5, 0.7)),
                  intensities=TUMOUR_INTENSITY * (1 + rng.normal(0, 0.03, size=3)))


def _rotation(rng: np.random.Generator, max_deg: np.ndarray) -> np.ndarray:
    return Rotation.from_euler("xyz", rng.uniform(-max_deg, max_deg), degrees=True).as_matrix()


def draw_anatomy(rng: np.random.Generator, age_range: tuple[float, float] = AGE_RANGE) -> Anatomy:
    """Draw one subject's anatomy. ``a`` in [0, 1], the normalised age, drives atrophy
    (ventricles, CSF rim, fissure grow; cortex thins) and the expected lesion count. The age is
    uniform over ``age_range`` (one draw whatever the range, so other draws keep their place)."""
    age = float(rng.uniform(*age_range))
    a = (age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0])
    head = HEAD_RADII_MM * rng.uniform(0.93, 1.05) * rng.uniform(0.97, 1.03, size=3)
    ventricle_scale = (0.65 + 0.85 * a) * float(np.exp(rng.normal(0, 0.08)))
    ventricles = tuple(
        Ellipsoid(centre=np.array([side * (3.0 + 5.0 * ventricle_scale), 4.0, 10.0]),
                  radii=np.array([6.0, 20.0, 8.0]) * ventricle_scale,
                  rotation=Rotation.from_euler("y", side * 20, degrees=True).as_matrix())
        for side in (-1, 1)
    )
    nuclei = tuple(
        Ellipsoid(centre=np.array([side * 18.0, 0.0, -2.0]), radii=np.array([7.0, 11.0, 8.0]),
                  rotation=np.eye(3))
        for side in (-1, 1)
    )
    anatomy = Anatomy(
        age=age, head_radii=head, csf_rim_mm=1.5 + 3.0 * a + rng.uniform(0, 1),
        cortex_mm=rng.uniform(7.0, 9.0) - 1.5 * a, fissure_mm=2.0 + 2.0 * a,
        surface=SmoothField.draw(rng, (25, 60)), gyri=SmoothField.draw(rng, (12, 30), waves=24),
        texture=SmoothField.draw(rng, (4, 10)), nuclei=nuclei, ventricles=ventricles,
    )
    lesion_count = 1 + int(rng.poisson(0.5 + 5.0 * a))
    return replace(anatomy, lesions=_draw_lesions(rng, anatomy, lesion_count))


def _draw_lesions(rng: np.random.Generator, anatomy: Anatomy, count: int) -> tuple[Ellipsoid, ...]:
    """Lesions centred in white matter, away from the ventricles; size log-uniform 3-10 mm."""
    candidates = rng.uniform(-1, 1, size=(4000, 3)) * anatomy.brain_radii
    in_wm = anatomy.tissues(candidates) == WM
    clear = np.all([v.rho(candidates) > 1.3 for v in anatomy.ventricles], axis=0)
    pool = candidates[in_wm & clear]
    centres = pool[rng.choice(len(pool), size=count, replace=len(pool) < count)]
    lesions = []
    for centre in centres:
        radius = float(np.exp(rng.uniform(np.log(3.0), np.log(10.0))))
        radii = radius * rng.uniform(0.6, 1.4, size=3)
        lesions.append(Ellipsoid(centre, radii, _rotation(rng, np.array([180.0, 180.0, 180.0]))))
    return tuple(lesions)


@dataclass(frozen=True)
class PhantomSubject:
    image: np.ndarray  # (X, Y, Z) float32, scanner units
    label: np.ndarray  # (X, Y, Z) uint8, base classes 0..4 (the 7-class label with a tumour)
    age: float
    lesion_count: int  # connected lesion (or tumour) components in the label (what is visible)
    lesion_load_ml: float
    ventricle_volume_ml: float


def make_subject(rng: np.random.Generator, size: int, tumour_rng: np.random.Generator | None = None,
                 age_range: tuple[float, float] = AGE_RANGE) -> PhantomSubject:
    """Draw and render one subject at the given in-plane size. With ``tumour_rng`` (classes=7)
    the subject's lesions give way to one tumour and ``label`` holds the 7-class label."""
    shape, affine = phantom_geometry(size)
    anatomy = draw_anatomy(rng, tuple(age_range))
    if tumour_rng is not None:
        anatomy = replace(anatomy, lesions=())
        anatomy = replace(anatomy, tumour=draw_tumour(tumour_rng, anatomy))
    rotation = _rotation(rng, MAX_ROTATION_DEG)
    shift = rng.uniform(-MAX_SHIFT_MM, MAX_SHIFT_MM)

    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = (index @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)  # float32: 2x faster
    # The pose maps head to world (world = rotation @ head + shift); sample through its inverse.
    head = (world - shift.astype(np.float32)) @ rotation.astype(np.float32)
    tissue = anatomy.tissues(head)
    image = _scan(rng, anatomy, tissue, head, world, shape, np.diag(affine)[:3])

    tissue = tissue.reshape(shape)
    if anatomy.tumour is None:
        label = TISSUE_TO_BASE_LABEL[tissue]
        lesion = label == 4
    else:
        label = TISSUE_TO_TUMOUR_LABEL[tissue]
        lesion = (label >= 1) & (label <= 3)
    voxel_ml = float(np.prod(np.diag(affine)[:3])) / 1000
    return PhantomSubject(
        image=image, label=label, age=anatomy.age,
        lesion_count=int(ndimage.label(lesion)[1]),
        lesion_load_ml=float(lesion.sum()) * voxel_ml,
        ventricle_volume_ml=float((tissue == VENTRICLE).sum()) * voxel_ml,
    )


def _scan(rng: np.random.Generator, anatomy: Anatomy, tissue: np.ndarray, head: np.ndarray,
          world: np.ndarray, shape: tuple[int, int, int], spacing: np.ndarray) -> np.ndarray:
    """What a scanner would record: tissue intensities with texture, partial-volume blur, a
    bias field fixed to the scanner (world coordinates), Rician noise and a random gain."""
    intensity = TISSUE_INTENSITY * (1 + rng.normal(0, 0.03, size=len(TISSUE_INTENSITY)))
    if anatomy.tumour is not None:
        intensity = np.concatenate([intensity, anatomy.tumour.intensities])
    clean = intensity[tissue]
    inside = tissue != AIR
    clean[inside] *= 1 + 0.04 * anatomy.texture(head[inside])
    clean = ndimage.gaussian_filter(clean.reshape(shape), sigma=0.6 * spacing[0] / spacing)
    bias = np.exp(rng.uniform(0.10, 0.25) * SmoothField.draw(rng, (250, 500), waves=6)(world))
    sigma = rng.uniform(0.015, 0.035)
    signal = clean * bias.reshape(shape)
    noisy = np.hypot(signal + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    return (noisy * rng.uniform(800, 1200)).astype(np.float32)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write .nii.gz with a fixed gzip header (mtime 0, no name) so reruns are byte-identical."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def _check_arguments(subjects: int, size: int, classes: int, unlabelled: int, ages: dict | None = None) -> None:
    problems = []
    for name, value in (ages or {}).items():
        if value is None:
            continue
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok or not AGE_RANGE[0] <= value[0] < value[1] <= AGE_RANGE[1]:
            problems.append(f"--{name.replace('_', '-')} must be two ages LOW < HIGH within "
                            f"{AGE_RANGE[0]:g}-{AGE_RANGE[1]:g}, got {value!r}")
    if subjects < 1:
        problems.append(f"--subjects must be at least 1, got {subjects}")
    if size < 16:
        problems.append(f"--size must be at least 16 voxels, got {size}")
    if classes not in PHANTOM_CLASSES:
        problems.append(f"--classes must be one of {', '.join(map(str, PHANTOM_CLASSES))}, got {classes}")
    if unlabelled < 0:
        problems.append(f"--unlabelled must be 0 or more, got {unlabelled}")
    if problems:
        raise DataError("phantom: " + "; ".join(problems))


def write_phantom_dataset(out_dir: str | Path, *, subjects: int = 20, size: int = 64, classes: int = 4,
                          unlabelled: int = 0, seed: int = 0, age: tuple[float, float] | None = None,
                          unlabelled_age: tuple[float, float] | None = None, truth: bool = False) -> Path:
    """Write ``subjects`` labelled and ``unlabelled`` unlabelled phantom subjects under ``out_dir``
    (``images/``, ``labels/``, ``manifest.csv``, ``phantom.json``) and return the manifest path.

    Manifest columns: subject_id, image, label (empty for unlabelled), labelled, age,
    lesion_load (mL), lesion_count, ventricle_volume (mL); paths relative to ``out_dir``. With
    ``classes=7`` the lesion columns describe the tumour (its three classes together).
    Unlabelled subjects come after the labelled ones and are drawn the same way, their age over
    ``unlabelled_age`` (default: ``age``, default the full 20-90); with ``truth`` their label
    maps are written as well, with ``labelled`` false (see the module docstring).
    """
    _check_arguments(subjects, size, classes, unlabelled, {"age": age, "unlabelled_age": unlabelled_age})
    ages = (tuple(age or AGE_RANGE), tuple(unlabelled_age or age or AGE_RANGE))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if subjects:
        (out / "labels").mkdir(exist_ok=True)
    _, affine = phantom_geometry(size)
    # The 7-class label is drawn as such; the others merge the base classes.
    merge = np.arange(TUMOUR_CLASSES, dtype=np.uint8) if classes == TUMOUR_CLASSES \
        else np.array(CLASS_MERGES[classes], dtype=np.uint8)
    rows = []
    for index in range(subjects + unlabelled):
        subject_id = f"sub-{index:03d}"
        labelled = index < subjects
        tumour_rng = np.random.default_rng([seed, index, TUMOUR_CLASSES]) if classes == TUMOUR_CLASSES else None
        subject = make_subject(np.random.default_rng([seed, index]), size, tumour_rng, ages[0 if labelled else 1])
        image = f"images/{subject_id}.nii.gz"
        label = f"labels/{subject_id}.nii.gz" if labelled or truth else ""
        _write_nifti(out / image, subject.image, affine)
        if label:
            (out / "labels").mkdir(exist_ok=True)
            _write_nifti(out / label, merge[subject.label], affine)
        rows.append({
            "subject_id": subject_id, "image": image, "label": label, "labelled": labelled,
            "age": round(subject.age, 1), "lesion_load": round(subject.lesion_load_ml, 3),
            "lesion_count": subject.lesion_count,
            "ventricle_volume": round(subject.ventricle_volume_ml, 3),
        })
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False, lineterminator="\n")
    info = {"generator": "synthmix phantom", "subjects": subjects, "unlabelled": unlabelled, "size": size,
            **({"age": list(age)} if age else {}), **({"unlabelled_age": list(unlabelled_age)} if unlabelled_age else {}),
            **({"truth": True} if truth else {}),
            "classes": classes, "class_names": list(CLASS_NAMES[classes]), "seed": seed,
            "spacing_mm": [float(s) for s in np.diag(affine)[:3]]}
    (out / "phantom.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return manifest
