"""One DICOM file of a CT series: its whitelisted header, its checks and its HU pixels.

``data/dicom.py`` assembles series from these; this module owns what concerns a single
file: which tags are ever parsed (``_HEADER_TAGS``: geometry, pixel description,
acquisition and the UIDs a DICOM SEG needs; never names, IDs, dates or institutions),
the error classes naming the file, the per-file validation (CT, single frame, axial,
every geometry tag present, decodable transfer syntax, lossy or not) and the exact HU
conversion (see ``data/dicom.py``'s docstring for the conventions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator, Sequence
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

AXIAL_TOLERANCE_DEG = 1.0
# Largest difference between two slices' ImageOrientationPatient still called equal.
ORIENTATION_TOL = 1e-3
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
# Transfer syntaxes that guarantee lossless coding; any other compressed one may be lossy.
_LOSSLESS_SYNTAXES = _NATIVE_SYNTAXES | {
    pydicom.uid.JPEGLossless,
    pydicom.uid.JPEGLosslessSV1,
    pydicom.uid.JPEGLSLossless,
    pydicom.uid.JPEG2000Lossless,
    pydicom.uid.JPEG2000MCLossless,
    pydicom.uid.HTJ2KLossless,
    pydicom.uid.HTJ2KLosslessRPCL,
    pydicom.uid.RLELossless,
}
MASS_FACTOR_TAG = 0x00189352  # CalciumScoringMassFactorDevice, FL, VM 3
PIXEL_DATA_TAG = 0x7FE00010
# The only tags ever parsed: geometry, grouping, pixel description, acquisition.
_HEADER_TAGS: list[int | str] = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
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
    "LossyImageCompression",
    MASS_FACTOR_TAG,
    PIXEL_DATA_TAG,
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
    """In-plane geometry (PixelSpacing, Rows/Columns) differs inside the series."""


class MixedOrientationError(MixedSpacingError):
    """One slice's ImageOrientationPatient differs from the rest of its series."""


class DuplicateSliceError(DicomError):
    """Two files of the series at the same z hold different pixels."""


class MissingTagError(DicomError):
    """A required tag is missing or has an unreadable value."""


class UnsupportedTransferSyntaxError(DicomError):
    """A compressed transfer syntax that no installed pydicom plugin decodes."""


class PixelDataError(DicomError):
    """Pixel data present but unusable: undecodable, wrong size, or HU outside int16."""


class EmptySeriesError(DicomError):
    """No DICOM file was found, or no slice is left to build a volume."""


@dataclasses.dataclass
class SliceInfo:
    """Validated per-file geometry of a kept-series candidate."""

    path: str
    ipp: tuple[float, float, float]
    iop: tuple[float, ...]
    spacing: tuple[float, float]
    shape: tuple[int, int]
    instance: int | None
    lossy: str  # "" or why the pixels went through lossy compression
    rescale: tuple[float, float] = (1.0, 0.0)  # RescaleSlope, RescaleIntercept

    @property
    def z(self) -> float:
        return self.ipp[2]


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Relaxed value validation (real UIDs are non-standard) and no warning noise."""
    with pydicom.config.disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def fmt_mm(z: float) -> str:
    return repr(round(float(z), 4))


def _tag_name(tag: int | str) -> str:
    if isinstance(tag, str):
        return tag
    keyword = pydicom.datadict.keyword_for_tag(tag)
    return f"{keyword} {pydicom.tag.Tag(tag)}" if keyword else str(pydicom.tag.Tag(tag))


def tag_value(ds: Dataset, path: str, tag: int | str) -> Any:
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


def tag_floats(
    ds: Dataset, path: str, tag: int | str, count: int | None, required: bool
) -> tuple[float, ...] | None:
    value = tag_value(ds, path, tag)
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


def tag_int(ds: Dataset, path: str, tag: str) -> int | None:
    value = tag_value(ds, path, tag)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise MissingTagError(path, f"{tag} has an unreadable value {value!r}") from e


def tag_text(ds: Dataset, path: str, tag: str) -> str | None:
    value = tag_value(ds, path, tag)
    return None if value is None else str(value).strip() or None


def read_header(path: str) -> Dataset:
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


def validate_slice(path: str, ds: Dataset) -> SliceInfo:
    """Check one kept-series header: CT, single frame, axial, all geometry tags."""
    modality = tag_text(ds, path, "Modality")
    if modality is None:
        raise MissingTagError(path, "missing required tag Modality")
    if modality.upper() != "CT":
        raise NotCTError(path, f"Modality is {modality!r}, expected 'CT'")
    syntax = check_decodable(path, ds)
    lossy = ""
    if syntax not in _LOSSLESS_SYNTAXES:
        lossy = f"lossy transfer syntax '{syntax.name}' ({syntax})"
    elif str(tag_text(ds, path, "LossyImageCompression") or "") == "01":
        lossy = "LossyImageCompression 01 (lossy compression applied before)"
    frames = tag_int(ds, path, "NumberOfFrames")
    if frames is not None and frames > 1:
        raise PixelDataError(path, f"{frames} frames; only single-frame CT slices are supported")
    ipp = tag_floats(ds, path, "ImagePositionPatient", 3, required=True)
    iop = tag_floats(ds, path, "ImageOrientationPatient", 6, required=True)
    spacing = tag_floats(ds, path, "PixelSpacing", 2, required=True)
    if min(spacing) <= 0:
        raise MissingTagError(path, f"PixelSpacing must be positive, got {spacing}")
    slope = tag_floats(ds, path, "RescaleSlope", 1, required=True)[0]
    intercept = tag_floats(ds, path, "RescaleIntercept", 1, required=True)[0]
    if slope <= 0:
        raise PixelDataError(
            path,
            f"RescaleSlope is {slope:g}: "
            + (
                f"every pixel would read {intercept:g} HU"
                if slope == 0
                else "CT numbers would be inverted"
            )
            + "; the slice cannot give HU",
        )
    rows, cols = tag_int(ds, path, "Rows"), tag_int(ds, path, "Columns")
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
    return SliceInfo(
        path=path,
        ipp=(ipp[0], ipp[1], ipp[2]),
        iop=iop,
        spacing=(spacing[0], spacing[1]),
        shape=(rows, cols),
        instance=tag_int(ds, path, "InstanceNumber"),
        lossy=lossy,
        rescale=(slope, intercept),
    )


def check_decodable(path: str, ds: Dataset) -> pydicom.uid.UID:
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


def read_hu(path: str, expected_shape: tuple[int, int]) -> np.ndarray:
    """Read one file's pixels and convert them to int16 HU [H, W]."""
    try:
        ds = pydicom.dcmread(path, specific_tags=_HEADER_TAGS)
    except Exception as e:
        raise NotDicomError(path, f"unreadable on second read ({type(e).__name__}: {e})") from e
    syntax = check_decodable(path, ds)
    if syntax in _NATIVE_SYNTAXES:
        bits = tag_int(ds, path, "BitsAllocated") or 0
        samples = tag_int(ds, path, "SamplesPerPixel") or 1
        need = expected_shape[0] * expected_shape[1] * samples * bits // 8
        have = len(ds.PixelData) if PIXEL_DATA_TAG in ds else 0
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
    slope = tag_floats(ds, path, "RescaleSlope", 1, required=True)[0]
    intercept = tag_floats(ds, path, "RescaleIntercept", 1, required=True)[0]
    if slope <= 0:
        raise PixelDataError(path, f"RescaleSlope is {slope:g}; the slice cannot give HU")
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
