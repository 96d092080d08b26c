"""Any CT collection as studies: a folder tree of DICOM series or NIfTI volumes, with masks.

What is a study (`list_studies`), under the ``--images`` root, walked in sorted order:

* every ``.nii`` / ``.nii.gz`` file is one NIfTI study (HU, `data.nifti_reader`);
* every folder holding other files is one DICOM series: its files (not its subfolders)
  are read by the project's DICOM reader (`data.dicom.read_dicom_files`: the longest
  series, canonical orientation, exact rescale, whitelisted header, so no name, ID, date
  or institution is read). Files that cannot be images by their name (hidden files,
  ``DICOMDIR``, and the suffixes in ``IGNORED_SUFFIXES``) are left out and reported.

Masks (optional ``--masks`` root): one NIfTI label volume per study, matched by name: the
study's path relative to the images root, with its NIfTI suffix (if any) replaced by
``.nii.gz`` or ``.nii`` (``images/a/ct.nii.gz`` <-> ``masks/a/ct.nii.gz``;
``images/p1/series2/`` <-> ``masks/p1/series2.nii.gz``). Any integer labels 0 .. 255. A
mask must cover the image voxel for voxel: after both are put in the canonical layout,
the same shape and every slice's corner voxels within ``ALIGN_TOL_MM`` of the image's
(so a mask with the image's shape and affine passes, and so does one storing the same
grid in another axis order). A mask that is missing, unreadable or misaligned leaves the
study without labels, with the reason (`FolderStudyReport.labels_left_out`).

Study ids are de-identified and stable: ``<kind>-<first 12 hex of SHA-256 of the relative
path>`` (``nifti-3f2a...``), so no folder or file name (which may hold a patient's name
or ID) enters the records or the manifest; the conversion report maps ids to paths for
the data's owner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from dinolg_jax.data import dicom, nifti_reader
from dinolg_jax.data.volume import CTVolume, Geometry

ALIGN_TOL_MM = 0.01  # mask vs image voxel positions (NIfTI affines are float32)
IGNORED_NAMES = ("DICOMDIR",)
IGNORED_SUFFIXES = (
    ".txt",
    ".md",
    ".json",
    ".csv",
    ".tsv",
    ".xml",
    ".xlsx",
    ".xls",
    ".pdf",
    ".html",
    ".htm",
    ".log",
    ".ini",
    ".db",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".zip",
    ".mha",
    ".mhd",
    ".nrrd",
    ".raw",
)
KINDS = ("dicom", "nifti")

__all__ = [
    "ALIGN_TOL_MM",
    "FolderStudy",
    "FolderStudyReport",
    "StudyList",
    "list_studies",
    "load_study",
    "mask_misalignment_mm",
    "strip_root",
    "study_id",
]


@dataclasses.dataclass(frozen=True)
class FolderStudy:
    """One study found under the images root.

    Attributes:
      study_id: de-identified id (module docstring).
      kind: ``"dicom"`` (a series folder) or ``"nifti"`` (a file).
      rel: the folder's or file's path relative to the images root (POSIX separators).
      files: the input files, relative to the images root (a NIfTI study: one).
      mask: the mask file relative to the masks root, or None.
    """

    study_id: str
    kind: str
    rel: str
    files: tuple[str, ...]
    mask: str | None = None


@dataclasses.dataclass
class StudyList:
    """What `list_studies` found.

    Attributes:
      studies: sorted by ``rel``.
      ignored_files: ``(path relative to the images root, reason)`` of files left out by
        name.
      unmatched_masks: mask files (relative to the masks root) that match no study.
    """

    studies: list[FolderStudy]
    ignored_files: list[tuple[str, str]]
    unmatched_masks: list[str]


@dataclasses.dataclass
class FolderStudyReport:
    """What loading one study did (JSON-able with `dataclasses.asdict`).

    Attributes:
      dropped_files: ``(path, reason)`` read but left out by the DICOM reader (other
        series, scouts, duplicates, non-images), relative to the images root.
      labels_left_out: why the study's mask was not used ("" when it was, or none given).
      label_voxels: ``{label: voxel count}`` of the mask used (labels > 0).
      reoriented: the permutation to the canonical layout ("" for none).
      z_gaps_mm: slice steps differing from the median by more than half of it (DICOM).
      lossy_files: ``(path, reason)`` of DICOM slices with lossy compression.
      rounded_voxels: NIfTI voxels rounded to whole HU.
    """

    dropped_files: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    labels_left_out: str = ""
    label_voxels: dict[str, int] = dataclasses.field(default_factory=dict)
    reoriented: str = ""
    z_gaps_mm: list[float] = dataclasses.field(default_factory=list)
    lossy_files: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    rounded_voxels: int = 0


def study_id(kind: str, rel: str) -> str:
    """The de-identified id of the study at `rel` (relative POSIX path)."""
    return f"{kind}-{hashlib.sha256(rel.encode()).hexdigest()[:12]}"


def _nifti_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in nifti_reader.NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _ignored_reason(name: str) -> str | None:
    if name.startswith("."):
        return "hidden file"
    if name.upper() in IGNORED_NAMES:
        return "DICOM directory file, not an image"
    suffix = Path(name).suffix.lower()
    if suffix in IGNORED_SUFFIXES:
        return f"not a DICOM or NIfTI file by its name ({suffix})"
    return None


def _walk(root: Path) -> list[tuple[str, list[str]]]:
    """(folder relative to root, sorted file names) of every folder, sorted, no symlinked
    folders followed."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = Path(folder).relative_to(root).as_posix()
        names = sorted(f for f in files if (Path(folder) / f).is_file())
        out.append(("" if rel == "." else rel, names))
    return sorted(out)


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _mask_index(masks: Path) -> dict[str, str]:
    """{relative path without NIfTI suffix: mask file relative to masks root}."""
    index: dict[str, str] = {}
    for folder, names in _walk(masks):
        for name in names:
            stem = _nifti_stem(name)
            if stem is not None and not name.startswith("."):
                # .nii.gz sorts before .nii of the same stem: the first one found is kept
                index.setdefault(_join(folder, stem), _join(folder, name))
    return index


def list_studies(images: str | os.PathLike, masks: str | os.PathLike | None = None) -> StudyList:
    """The studies under `images` and their masks under `masks` (module docstring).

    Raises:
      FileNotFoundError: `images` (or `masks`, when given) is not a folder.
    """
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: not a folder")
    if masks is not None and not Path(masks).is_dir():
        raise FileNotFoundError(f"{masks}: not a folder")
    index = _mask_index(Path(masks)) if masks is not None else {}
    studies, ignored = [], []
    for folder, names in _walk(images):
        series = []
        for name in names:
            rel = _join(folder, name)
            stem = _nifti_stem(name)
            reason = _ignored_reason(name)
            if reason is not None:
                ignored.append((rel, reason))
            elif stem is not None:
                key = _join(folder, stem)
                studies.append(
                    FolderStudy(study_id("nifti", rel), "nifti", rel, (rel,), index.get(key))
                )
            else:
                series.append(rel)
        if series:
            rel = folder or "."
            studies.append(
                FolderStudy(study_id("dicom", rel), "dicom", rel, tuple(series), index.get(folder))
            )
    studies.sort(key=lambda s: s.rel)
    used = {s.mask for s in studies if s.mask is not None}
    return StudyList(studies, ignored, sorted(set(index.values()) - used))


def strip_root(text: str, root: Path) -> str:
    """`text` with `root`'s path prefix removed (messages name files relatively)."""
    for prefix in sorted({str(root.resolve()), str(root)}, key=len, reverse=True):
        text = text.replace(prefix.rstrip("/") + "/", "")
    return text


def _corners(geometry: Geometry, shape: tuple[int, int, int]) -> np.ndarray:
    """float64 [Z, 3, 3]: LPS of each slice's voxels (0, 0), (H-1, 0), (0, W-1)."""
    z, h, w = shape
    k = np.arange(z)[:, None]
    rows = np.array([[0, h - 1, 0]])
    cols = np.array([[0, 0, w - 1]])
    return geometry.world_mm(k, rows, cols)


def mask_misalignment_mm(
    image: Geometry, image_shape: tuple, mask: Geometry, mask_shape: tuple
) -> float:
    """Largest distance (mm) between an image voxel and the mask voxel of the same index
    (both canonical; the corners of every slice, which fix the whole grid); inf when
    the shapes differ."""
    if tuple(image_shape) != tuple(mask_shape):
        return float("inf")
    diff = _corners(image, image_shape) - _corners(mask, mask_shape)
    return float(np.max(np.linalg.norm(diff, axis=-1)))


def _read_image(study: FolderStudy, images: Path, report: FolderStudyReport) -> CTVolume:
    if study.kind == "nifti":
        vol = nifti_reader.read_nifti_volume(images / study.files[0])
        report.reoriented = vol.reorientation
        report.rounded_voxels = vol.rounded_voxels
        return CTVolume(study.study_id, vol.data, vol.geometry, kind="nifti")
    volume = dicom.read_dicom_files([images / f for f in study.files], study.study_id)
    src = volume.source
    report.dropped_files = [(strip_root(d.path, images), d.reason) for d in src.dropped]
    report.reoriented = src.reorientation.describe()
    report.z_gaps_mm = [float(g) for g in src.z_gaps]
    report.lossy_files = [(strip_root(p, images), r) for p, r in src.lossy_files]
    volume.source = None  # file paths stay out of everything downstream
    return volume


def _read_mask(
    study: FolderStudy, volume: CTVolume, masks: Path, report: FolderStudyReport
) -> np.ndarray | None:
    if study.mask is None:
        report.labels_left_out = "no mask matches this study's name"
        return None
    try:
        mask = nifti_reader.read_nifti_volume(masks / study.mask, labels=True)
    except nifti_reader.NiftiReadError as e:
        report.labels_left_out = f"mask {strip_root(str(e), masks)}"
        return None
    off = mask_misalignment_mm(volume.geometry, volume.hu.shape, mask.geometry, mask.data.shape)
    if off > ALIGN_TOL_MM:
        what = (
            f"shape {mask.data.shape} (canonical) differs from the image's {volume.hu.shape}"
            if off == float("inf")
            else f"voxels lie up to {off:.4g} mm from the image's (tolerance {ALIGN_TOL_MM} mm)"
        )
        report.labels_left_out = f"mask {study.mask}: {what}"
        return None
    values, counts = np.unique(mask.data[mask.data > 0], return_counts=True)
    report.label_voxels = {str(int(v)): int(n) for v, n in zip(values, counts, strict=True)}
    return mask.data


def load_study(
    study: FolderStudy, images: str | os.PathLike, masks: str | os.PathLike | None = None
) -> tuple[CTVolume, FolderStudyReport]:
    """Reads one study (and its mask, when `masks` is given) as a canonical `CTVolume`.

    Returns:
      The volume (``kind`` "dicom" or "nifti", ``labels`` uint8 [Z, H, W] from the mask
      or None, ``source`` None) and what loading did.

    Raises:
      dicom.DicomError, nifti_reader.NiftiReadError: the image cannot be read (the
        message names the file). A bad mask raises nothing: it is left out, with the
        reason in the report.
    """
    images = Path(images)
    report = FolderStudyReport()
    volume = _read_image(study, images, report)
    if masks is not None:
        volume.labels = _read_mask(study, volume, Path(masks), report)
    return volume, report
