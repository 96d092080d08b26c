"""Read one axial CT series from a folder of DICOM files into a Hounsfield-unit volume.

Conventions (see ``shared/docs/coca_format.md``):

* Every file matching ``pattern`` under the folder is read (recursively); folder names
  are never interpreted.
* A file that is not DICOM, or is truncated (an element or the pixel data runs past
  the end of the file, or an image has no Pixel Data), raises :class:`NotDicomError`
  wherever it lies, even in a series that would have been dropped. DICOM files
  without pixel data whose SOP class is not an image (dose reports, presentation
  states) are dropped.
* Image files are grouped by ``(SeriesInstanceUID, SeriesNumber)``. When no file carries a
  SeriesInstanceUID (COCA's non-gated scans), they are grouped by SeriesNumber alone
  (files without one form a single group). A file without SeriesInstanceUID in a
  folder where others have one is dropped. The longest group (most distinct z
  positions, then most files, then the smallest first file path) is kept; every other
  file is reported in ``CTSeries.dropped``.
* Slices are sorted by ImagePositionPatient z ascending (index 0 = most inferior),
  never by file name, InstanceNumber or SliceLocation. Within the kept series, files
  at the same z (within ``DUPLICATE_Z_TOL_MM``) keep the one with the smallest path.
* HU = stored value * RescaleSlope + RescaleIntercept, per slice. With integer slope
  and intercept (every CT scanner in COCA) this is exact integer arithmetic; otherwise
  it is computed in float64 and rounded half-to-even to whole HU. The result must fit
  int16, else :class:`PixelDataError`.
* ``slice_thickness_mm`` is the median z-step; the header's SliceThickness is kept
  separately. Steps that differ from the median by more than half of it (a missing
  slice gives ~2x) are listed in ``z_gaps``; the volume is still returned, so callers
  decide (the converter reports them).

Only geometry and acquisition tags are parsed (``dcmread(specific_tags=...)``); names,
IDs, dates and institutions are never read, so they cannot leak into the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.config
import pydicom.datadict
import pydicom.errors
import pydicom.tag
import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

# Largest angle between the slice normal and the patient z axis still called axial.
AXIAL_TOLERANCE_DEG = 1.0
# Slices closer than this along z are duplicates of each other.
DUPLICATE_Z_TOL_MM = 1e-3
# In-plane spacing differences below this are equal (DS strings are rounded).
SPACING_TOL_MM = 1e-4

_NATIVE_SYNTAXES = frozenset(
    {
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.ExplicitVRLittleEndian,
        pydicom.uid.ExplicitVRBigEndian,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
    }
)
_MASS_FACTOR_TAG = 0x00189352  # CalciumScoringMassFactorDevice, FL, VM 3
_PIXEL_DATA_TAG = 0x7FE00010
# The only tags ever parsed: geometry, grouping, pixel description, acquisition.
_HEADER_TAGS: list[int | str] = [
    "SOPClassUID",
    "Modality",
    "ImageType",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "KVP",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    _MASS_FACTOR_TAG,
    _PIXEL_DATA_TAG,
]


class DicomError(ValueError):
    """Base class: a DICOM input that cannot give a trustworthy CT volume."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class NotDicomError(DicomError):
    """Not a DICOM file, truncated, or unreadable."""


class NotCTError(DicomError):
    """The kept series is not CT (Modality != CT)."""


class NonAxialError(DicomError):
    """ImageOrientationPatient is not axial within ``AXIAL_TOLERANCE_DEG``."""


class MixedSpacingError(DicomError):
    """In-plane geometry (PixelSpacing, Rows/Columns, orientation) differs inside the series."""


class MissingTagError(DicomError):
    """A required tag is missing or has an unreadable value."""


class UnsupportedTransferSyntaxError(DicomError):
    """A compressed transfer syntax that no installed pydicom plugin decodes."""


class PixelDataError(DicomError):
    """Pixel data present but unusable: undecodable, wrong size, or HU outside int16."""


class EmptySeriesError(DicomError):
    """No DICOM file was found, or no slice is left to build a volume."""


@dataclasses.dataclass(frozen=True)
class DroppedFile:
    """A file that was read but is not part of the returned volume."""

    path: str
    reason: str  # e.g. "duplicate z=-120.0 mm", "scout (1 slice)", "no SeriesInstanceUID"


@dataclasses.dataclass(frozen=True)
class CTSeries:
    """One axial CT series, z ascending. Carries no identifying header value.

    Attributes:
      hu: int16 [Z, H, W], Hounsfield units; index 0 is the most inferior slice.
      z_mm: float64 [Z], ImagePositionPatient z of each slice, ascending, mm.
      pixel_mm: (row, col) pixel spacing, mm.
      slice_thickness_mm: median z-step, mm (header SliceThickness for a single slice).
      header_thickness_mm: SliceThickness as written in the first slice, or None.
      kvp: tube voltage (KVP) of the first slice, or None.
      mass_factor: (0018,9352) CalciumScoringMassFactorDevice of the first slice, or None.
      files: source file of each slice, z ascending.
      instance_numbers: InstanceNumber of each slice (None when absent), z ascending.
      dropped: files read but left out, with the reason.
      series_count: number of series found (files without SeriesInstanceUID in a
        folder where others have one are not counted as a series).
      z_gaps: z-steps (mm) differing from the median step by more than half of it.
    """

    hu: np.ndarray
    z_mm: np.ndarray
    pixel_mm: tuple[float, float]
    slice_thickness_mm: float
    header_thickness_mm: float | None
    kvp: float | None
    mass_factor: tuple[float, ...] | None
    files: tuple[str, ...]
    instance_numbers: tuple[int | None, ...]
    dropped: tuple[DroppedFile, ...]
    series_count: int
    z_gaps: tuple[float, ...] = ()


@dataclasses.dataclass
class _Slice:
    """Validated per-file geometry of a kept-series candidate."""

    path: str
    z: float
    spacing: tuple[float, float]
    shape: tuple[int, int]
    normal: np.ndarray  # [3]
    instance: int | None


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Relaxed value validation (real UIDs are non-standard) and no warning noise."""
    with pydicom.config.disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fmt_mm(z: float) -> str:
    return repr(round(float(z), 4))


def _tag_name(tag: int | str) -> str:
    if isinstance(tag, str):
        return tag
    keyword = pydicom.datadict.keyword_for_tag(tag)
    return f"{keyword} {pydicom.tag.Tag(tag)}" if keyword else str(pydicom.tag.Tag(tag))


def _value(ds: Dataset, path: str, tag: int | str) -> Any:
    """The element's value, or None when absent or empty; unparsable values raise."""
    try:
        elem = ds[tag] if tag in ds else None
        if elem is None:
            return None
        value = elem.value
    except Exception as e:  # pydicom raises many types for malformed values
        raise MissingTagError(path, f"{_tag_name(tag)} has an unreadable value ({e})") from e
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return None
    return value


def _floats(
    ds: Dataset, path: str, tag: int | str, count: int | None, required: bool
) -> tuple[float, ...] | None:
    value = _value(ds, path, tag)
    name = _tag_name(tag)
    if value is None:
        if required:
            raise MissingTagError(path, f"missing required tag {name}")
        return None
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError) as e:
        raise MissingTagError(path, f"{name} has an unreadable value {value!r}") from e
    if (count is not None and len(out) != count) or not all(np.isfinite(out)):
        raise MissingTagError(path, f"{name} should hold {count} finite numbers, got {value!r}")
    return out


def _int(ds: Dataset, path: str, tag: str) -> int | None:
    value = _value(ds, path, tag)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise MissingTagError(path, f"{tag} has an unreadable value {value!r}") from e


def _text(ds: Dataset, path: str, tag: str) -> str | None:
    value = _value(ds, path, tag)
    return None if value is None else str(value).strip() or None


def _read_header(path: str) -> Dataset:
    """Parse the whitelisted tags of one file, pixel data deferred; check it is whole."""
    try:
        ds = pydicom.dcmread(path, defer_size=256, specific_tags=_HEADER_TAGS)
    except pydicom.errors.InvalidDicomError as e:
        raise NotDicomError(path, "not a DICOM file (no 'DICM' file meta header)") from e
    except Exception as e:  # EOFError, OSError, struct.error, ValueError ...
        raise NotDicomError(path, f"unreadable DICOM ({type(e).__name__}: {e})") from e
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise NotDicomError(path, "truncated or malformed: file meta has no TransferSyntaxUID")
    size = os.path.getsize(path)
    for raw in list(ds.values()):  # raw elements: no conversion, no deferred read
        length = getattr(raw, "length", None)
        tell = getattr(raw, "value_tell", None)
        if length is None or tell is None or length == 0xFFFFFFFF:
            continue
        if tell + length > size:
            raise NotDicomError(
                path,
                f"truncated: element {raw.tag} needs {length} bytes but the file ends "
                f"{size - tell} bytes after its start",
            )
    return ds


def _series_uid(ds: Dataset, path: str) -> str | None:
    return _text(ds, path, "SeriesInstanceUID")


def _is_scout(headers: list[tuple[str, Dataset]]) -> bool:
    if len(headers) == 1:
        return True
    for path, ds in headers:
        image_type = _value(ds, path, "ImageType")
        if image_type is not None and "LOCALIZER" in [str(v).upper() for v in image_type]:
            return True
    return False


def _distinct_z(headers: list[tuple[str, Dataset]]) -> int:
    zs = []
    for path, ds in headers:
        try:
            ipp = _floats(ds, path, "ImagePositionPatient", 3, required=False)
        except MissingTagError:
            ipp = None
        if ipp is not None:
            zs.append(ipp[2])
    zs.sort()
    return sum(1 for i, z in enumerate(zs) if i == 0 or z - zs[i - 1] >= DUPLICATE_Z_TOL_MM)


def _group(
    headers: list[tuple[str, Dataset]],
) -> tuple[list[tuple[str, Dataset]], list[DroppedFile], int]:
    """Split files into series; return the kept series, dropped files and series count."""
    dropped: list[DroppedFile] = []
    images = []
    for path, ds in headers:
        if _PIXEL_DATA_TAG in ds:
            images.append((path, ds))
            continue
        sop = _text(ds, path, "SOPClassUID")
        sop_name = pydicom.uid.UID(sop).name if sop else ""
        if not sop or "Image" in sop_name:
            raise NotDicomError(path, "no Pixel Data element (truncated?)")
        dropped.append(DroppedFile(path, f"not an image ({sop_name})"))
    if not images:
        raise EmptySeriesError(headers[0][0], "no file in the series holds an image")
    groups: dict[tuple, list[tuple[str, Dataset]]] = {}
    have_uid = any(_series_uid(ds, p) is not None for p, ds in images)
    for path, ds in images:
        uid = _series_uid(ds, path)
        if have_uid and uid is None:
            dropped.append(DroppedFile(path, "no SeriesInstanceUID"))
            continue
        number = _int(ds, path, "SeriesNumber")
        groups.setdefault((uid or "", -1 if number is None else number), []).append((path, ds))

    def rank(members: list[tuple[str, Dataset]]) -> tuple:
        return (-_distinct_z(members), -len(members), min(p for p, _ in members))

    ordered = sorted(groups.values(), key=rank)
    kept = ordered[0]
    for members in ordered[1:]:
        n = len(members)
        noun = "slice" if n == 1 else "slices"
        if _is_scout(members):
            reason = f"scout ({n} {noun})"
        elif rank(members)[:2] == rank(kept)[:2]:
            reason = f"duplicate series ({n} {noun}, as long as the kept one)"
        else:
            reason = f"other series ({n} {noun})"
        dropped.extend(DroppedFile(p, reason) for p, _ in members)
    return kept, dropped, len(groups)


def _validate(path: str, ds: Dataset) -> _Slice:
    """Check one kept-series header: CT, single frame, axial, all geometry tags."""
    modality = _text(ds, path, "Modality")
    if modality is None:
        raise MissingTagError(path, "missing required tag Modality")
    if modality.upper() != "CT":
        raise NotCTError(path, f"Modality is {modality!r}, expected 'CT'")
    _check_decodable(path, ds)
    frames = _int(ds, path, "NumberOfFrames")
    if frames is not None and frames > 1:
        raise PixelDataError(path, f"{frames} frames; only single-frame CT slices are supported")
    ipp = _floats(ds, path, "ImagePositionPatient", 3, required=True)
    iop = _floats(ds, path, "ImageOrientationPatient", 6, required=True)
    spacing = _floats(ds, path, "PixelSpacing", 2, required=True)
    if min(spacing) <= 0:
        raise MissingTagError(path, f"PixelSpacing must be positive, got {spacing}")
    _floats(ds, path, "RescaleSlope", 1, required=True)
    _floats(ds, path, "RescaleIntercept", 1, required=True)
    rows, cols = _int(ds, path, "Rows"), _int(ds, path, "Columns")
    if rows is None or cols is None:
        raise MissingTagError(path, "missing required tag Rows or Columns")
    row_dir, col_dir = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(row_dir, col_dir)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise NonAxialError(path, f"degenerate ImageOrientationPatient {iop}")
    normal = normal / norm
    angle = float(np.degrees(np.arccos(min(1.0, abs(normal[2])))))
    if angle > AXIAL_TOLERANCE_DEG:
        raise NonAxialError(
            path,
            f"ImageOrientationPatient {list(iop)} is {angle:.1f} deg from axial "
            f"(tolerance {AXIAL_TOLERANCE_DEG} deg)",
        )
    return _Slice(
        path=path,
        z=ipp[2],
        spacing=(spacing[0], spacing[1]),
        shape=(rows, cols),
        normal=normal,
        instance=_int(ds, path, "InstanceNumber"),
    )


def _check_decodable(path: str, ds: Dataset) -> pydicom.uid.UID:
    syntax = pydicom.uid.UID(str(ds.file_meta.TransferSyntaxUID))
    if syntax in _NATIVE_SYNTAXES:
        return syntax
    label = f"'{syntax.name}' ({syntax})" if syntax.name != str(syntax) else f"'{syntax}'"
    try:
        decoder = get_decoder(syntax)
    except (NotImplementedError, ValueError) as e:
        raise UnsupportedTransferSyntaxError(
            path, f"transfer syntax {label} has no pydicom pixel decoder"
        ) from e
    if not decoder.is_available:
        missing = "; ".join(str(m) for m in decoder.missing_dependencies)
        raise UnsupportedTransferSyntaxError(
            path,
            f"transfer syntax {label} needs a pydicom plugin that is not installed "
            f"({missing or 'no plugin available'})",
        )
    return syntax


def _hu_slice(path: str, expected_shape: tuple[int, int]) -> np.ndarray:
    """Read one file's pixels and convert them to int16 HU [H, W]."""
    try:
        ds = pydicom.dcmread(path, specific_tags=_HEADER_TAGS)
    except Exception as e:
        raise NotDicomError(path, f"unreadable on second read ({type(e).__name__}: {e})") from e
    syntax = _check_decodable(path, ds)
    if syntax in _NATIVE_SYNTAXES:
        bits = _int(ds, path, "BitsAllocated") or 0
        samples = _int(ds, path, "SamplesPerPixel") or 1
        need = expected_shape[0] * expected_shape[1] * samples * bits // 8
        have = len(ds.PixelData) if _PIXEL_DATA_TAG in ds else 0
        if have < need:
            raise NotDicomError(path, f"truncated: {have} pixel bytes, {need} expected")
    try:
        stored = ds.pixel_array
    except Exception as e:
        raise PixelDataError(
            path,
            f"cannot decode pixel data in transfer syntax '{syntax.name}' ({syntax}): "
            f"{type(e).__name__}: {e}",
        ) from e
    if stored.shape != expected_shape or stored.dtype.kind not in "iu":
        raise PixelDataError(
            path,
            f"pixel array {stored.dtype}{list(stored.shape)}, expected integer "
            f"{list(expected_shape)} (single-sample greyscale)",
        )
    slope = _floats(ds, path, "RescaleSlope", 1, required=True)[0]
    intercept = _floats(ds, path, "RescaleIntercept", 1, required=True)[0]
    if slope.is_integer() and intercept.is_integer():
        hu = stored.astype(np.int64) * int(slope) + int(intercept)
    else:
        hu = np.rint(stored.astype(np.float64) * slope + intercept)
    lo, hi = hu.min(), hu.max()
    info = np.iinfo(np.int16)
    if lo < info.min or hi > info.max:
        raise PixelDataError(
            path,
            f"HU range [{lo:g}, {hi:g}] (slope {slope:g}, intercept {intercept:g}) "
            "does not fit int16",
        )
    return hu.astype(np.int16)


def _check_geometry(slices: list[_Slice]) -> None:
    ref = slices[0]
    for s in slices[1:]:
        if s.shape != ref.shape:
            raise MixedSpacingError(
                s.path, f"Rows/Columns {s.shape} differ from {ref.shape} in {ref.path}"
            )
        if max(abs(a - b) for a, b in zip(s.spacing, ref.spacing, strict=True)) > SPACING_TOL_MM:
            raise MixedSpacingError(
                s.path, f"PixelSpacing {s.spacing} differs from {ref.spacing} in {ref.path}"
            )
        if float(np.dot(s.normal, ref.normal)) < np.cos(np.radians(AXIAL_TOLERANCE_DEG)):
            raise MixedSpacingError(
                s.path, f"ImageOrientationPatient differs from the one in {ref.path}"
            )


def _drop_duplicate_z(slices: list[_Slice], dropped: list[DroppedFile]) -> list[_Slice]:
    """Sort by z ascending; of slices within DUPLICATE_Z_TOL_MM keep the smallest path."""
    clusters: list[list[_Slice]] = []
    for s in sorted(slices, key=lambda s: (s.z, s.path)):
        if clusters and s.z - clusters[-1][0].z < DUPLICATE_Z_TOL_MM:
            clusters[-1].append(s)
        else:
            clusters.append([s])
    unique = []
    for cluster in clusters:
        first = min(cluster, key=lambda c: c.path)
        unique.append(first)
        reason = f"(kept {Path(first.path).name})"
        dropped.extend(
            DroppedFile(c.path, f"duplicate z={_fmt_mm(c.z)} mm {reason}")
            for c in cluster
            if c is not first
        )
    return unique


def read_dicom_files(paths: Sequence[str | os.PathLike]) -> CTSeries:
    """Read an explicit list of DICOM files as one CT series (see module docstring).

    Args:
      paths: DICOM files; all of them are read and grouped into series.

    Returns:
      The longest series as a :class:`CTSeries`, with the other files in ``dropped``.

    Raises:
      DicomError: one of its subclasses, naming the file and the problem.
    """
    files = sorted(dict.fromkeys(str(p) for p in paths))
    if not files:
        raise EmptySeriesError("<no files>", "no DICOM files given")
    with _quiet_pydicom():
        headers = [(p, _read_header(p)) for p in files]
        kept, dropped, series_count = _group(headers)
        slices = [_validate(p, ds) for p, ds in kept]  # kept is sorted by path
        header_ds = dict(kept)

        unique = _drop_duplicate_z(slices, dropped)
        _check_geometry(unique)

        shape = unique[0].shape
        hu = np.empty((len(unique), *shape), np.int16)
        for i, s in enumerate(unique):
            hu[i] = _hu_slice(s.path, shape)

        first_ds = header_ds[unique[0].path]
        thickness = _floats(first_ds, unique[0].path, "SliceThickness", 1, required=False)
        kvp = _floats(first_ds, unique[0].path, "KVP", 1, required=False)
        mass = _floats(first_ds, unique[0].path, _MASS_FACTOR_TAG, None, required=False)

    z_mm = np.asarray([s.z for s in unique], np.float64)
    header_thickness = thickness[0] if thickness else None
    gaps: tuple[float, ...] = ()
    if len(unique) >= 2:
        steps = np.diff(z_mm)
        step = float(np.median(steps))
        gaps = tuple(float(d) for d in steps if abs(d - step) > 0.5 * step)
    elif header_thickness is not None and header_thickness > 0:
        step = header_thickness
    else:
        raise MissingTagError(unique[0].path, "single slice without a positive SliceThickness")
    return CTSeries(
        hu=hu,
        z_mm=z_mm,
        pixel_mm=unique[0].spacing,
        slice_thickness_mm=step,
        header_thickness_mm=header_thickness,
        kvp=kvp[0] if kvp else None,
        mass_factor=mass,
        files=tuple(s.path for s in unique),
        instance_numbers=tuple(s.instance for s in unique),
        dropped=tuple(sorted(dropped, key=lambda d: d.path)),
        series_count=series_count,
        z_gaps=gaps,
    )


def read_series(folder: str | os.PathLike, *, pattern: str = "**/*.dcm") -> CTSeries:
    """Read the CT series in ``folder`` (every file matching ``pattern``, recursively).

    Args:
      folder: a series or patient folder; series folder names are never interpreted.
      pattern: glob pattern relative to ``folder``.

    Returns:
      The longest series, z ascending; see :func:`read_dicom_files`.

    Raises:
      FileNotFoundError: ``folder`` is not a directory.
      EmptySeriesError: no file matches ``pattern``.
      DicomError: any other problem, as a specific subclass.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    files = sorted(str(p) for p in root.glob(pattern) if p.is_file())
    if not files:
        raise EmptySeriesError(root, f"no files match {pattern!r}")
    return read_dicom_files(files)
