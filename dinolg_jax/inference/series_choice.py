"""Which series of a study folder to score: the non-contrast axial one closest to 3 mm.

A clinic's study folder holds several series: scouts (localizers), the calcium-score
recon, thin and thick recons, a contrast angiogram, dose reports and secondary captures.
Agatston is defined on non-contrast axial slices of 3 mm, so :func:`choose_series` picks
by metadata alone (no pixel is read), in this order:

1. **Left out**: files whose SOP class is not a CT image (dose reports, structured
   reports, secondary captures, presentation states) or whose Modality is not CT; a
   series whose ImageType holds LOCALIZER, or with fewer than ``MIN_SLICES`` distinct z
   positions (a scout); a series whose ImageOrientationPatient is not axial (slice
   normal more than ``AXIAL_TOL_DEG`` from the patient z axis: coronal / sagittal
   reformats).
2. **Contrast**: a series with a non-empty ContrastBolusAgent (0018,0010) is kept only
   when no non-contrast candidate remains (the contrast warning then says so).
3. **Closest to 3 mm**: smallest ``|thickness - 3|``, thickness being SliceThickness, or
   the median z step when the header has none; ties go to an ORIGINAL image type, then
   to the most slices, then to the smallest SeriesInstanceUID (deterministic).

``series_uid`` forces one series (``--series_uid`` / ``config.source.series_uid``); a
UID that is not in the folder is an error naming how many series there are.

Only referencing, geometry and acquisition tags are read (``_TAGS``); names, IDs, dates
and institutions never are, so the reason written to logs and results carries none.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
import pydicom.uid

from dinolg_jax.data import dicom
from dinolg_jax.data.dicom_slice import quiet_pydicom
from dinolg_jax.data.volume import CTVolume

TARGET_THICKNESS_MM = 3.0
MIN_SLICES = 5  # fewer distinct z positions: a scout or a single-slice capture
AXIAL_TOL_DEG = 10.0
_CT_IMAGE_CLASSES = frozenset(
    {pydicom.uid.CTImageStorage, pydicom.uid.EnhancedCTImageStorage, "1.2.840.10008.5.1.4.1.1.2.2"}
)
_TAGS = [
    "SOPClassUID",
    "Modality",
    "ImageType",
    "SeriesInstanceUID",
    "SeriesNumber",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "ContrastBolusAgent",
]


class SeriesChoiceError(dicom.DicomError):
    """No series of the folder can be scored, or the forced one is not there."""


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """One series of a folder, as its headers describe it.

    Attributes:
      uid: SeriesInstanceUID ("" when the files carry none).
      number: SeriesNumber, or None.
      files: its image files, sorted.
      num_slices: distinct z positions.
      thickness_mm: SliceThickness, else the median z step, else None.
      image_type: ImageType values of its first file (upper case).
      contrast: a ContrastBolusAgent is recorded.
      excluded: why it cannot be scored ("" when it can).
    """

    uid: str
    number: int | None
    files: tuple[str, ...]
    num_slices: int
    thickness_mm: float | None
    image_type: tuple[str, ...]
    contrast: bool
    excluded: str = ""

    def describe(self) -> str:
        """One line: series number, slices, thickness, image type, contrast."""
        thick = "thickness unknown" if self.thickness_mm is None else f"{self.thickness_mm:g} mm"
        kind = "/".join(self.image_type) or "no ImageType"
        agent = "contrast agent recorded" if self.contrast else "no contrast agent"
        return f"series {self.number} ({self.num_slices} slices, {thick}, {kind}, {agent})"


@dataclasses.dataclass(frozen=True)
class SeriesChoice:
    """The series chosen and why (``CTVolume.report`` of a DICOM-folder study).

    Attributes:
      series_uid: SeriesInstanceUID of the chosen series.
      chosen: the chosen series.
      reason: one line: what was chosen, by which rule, and what was left out.
      candidates: every series found, in folder order.
    """

    series_uid: str
    chosen: SeriesInfo
    reason: str
    candidates: tuple[SeriesInfo, ...]

    def to_dict(self) -> dict:
        """JSON-safe: the chosen UID and the reason."""
        return {"series_uid": self.series_uid, "reason": self.reason}


def _header(path: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except pydicom.errors.InvalidDicomError as e:
        raise dicom.NotDicomError(path, "not a DICOM file (no 'DICM' file meta header)") from e
    except Exception as e:  # EOFError, OSError, struct.error, ValueError ...
        raise dicom.NotDicomError(path, f"unreadable DICOM ({type(e).__name__}: {e})") from e


def _floats(ds: pydicom.Dataset, keyword: str) -> list[float] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        seq = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        return [float(v) for v in seq]
    except (TypeError, ValueError):
        return None


def _is_axial(iop: list[float] | None) -> bool:
    if iop is None or len(iop) != 6:
        return False
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    norm = float(np.linalg.norm(normal))
    if norm == 0:
        return False
    return abs(normal[2]) / norm >= math.cos(math.radians(AXIAL_TOL_DEG))


def scan_series(files: Sequence[str | os.PathLike]) -> list[SeriesInfo]:
    """The series among ``files`` with what :func:`choose_series` decides on.

    Files that are not CT images are left out of every series (dose reports, secondary
    captures, ...); a file that is not DICOM raises ``dicom.NotDicomError`` naming it.
    """
    groups: dict[tuple[str, int | None], list[tuple[str, pydicom.Dataset]]] = {}
    with quiet_pydicom():
        for path in sorted(str(p) for p in files):
            ds = _header(path)
            sop = str(ds.get("SOPClassUID", ""))
            if sop not in _CT_IMAGE_CLASSES or str(ds.get("Modality", "")).upper() != "CT":
                continue
            number = ds.get("SeriesNumber")
            number = None if number in (None, "") else int(number)
            groups.setdefault((str(ds.get("SeriesInstanceUID", "")), number), []).append((path, ds))
    out = []
    for (uid, number), members in groups.items():
        first = members[0][1]
        image_type = tuple(str(v).upper() for v in _values(first.get("ImageType")))
        positions = [_floats(ds, "ImagePositionPatient") for _, ds in members]
        zs = sorted({round(p[2], 3) for p in positions if p and len(p) == 3})
        thick = _floats(first, "SliceThickness")
        if thick and thick[0] > 0:
            thickness = float(thick[0])
        elif len(zs) >= 2:
            thickness = float(np.median(np.diff(zs)))
        else:
            thickness = None
        agent = first.get("ContrastBolusAgent")
        excluded = ""
        if "LOCALIZER" in image_type or len(zs) < MIN_SLICES:
            excluded = "scout"
        elif not _is_axial(_floats(first, "ImageOrientationPatient")):
            excluded = "not axial"
        info = SeriesInfo(
            uid=uid,
            number=number,
            files=tuple(p for p, _ in members),
            num_slices=len(zs),
            thickness_mm=thickness,
            image_type=image_type,
            contrast=bool(agent is not None and str(agent).strip()),
            excluded=excluded,
        )
        out.append(info)
    return out


def _values(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split("\\") if v]
    return list(value)


def _rank(s: SeriesInfo) -> tuple:
    gap = math.inf if s.thickness_mm is None else abs(s.thickness_mm - TARGET_THICKNESS_MM)
    return (gap, "ORIGINAL" not in s.image_type, -s.num_slices, s.uid, s.files[0])


def choose_series(series: Sequence[SeriesInfo], series_uid: str = "") -> SeriesChoice:
    """The series to score (module docstring) and the reason, as one line.

    Raises:
      SeriesChoiceError: no scorable series, or ``series_uid`` is not among them.
    """
    if not series:
        raise SeriesChoiceError("<folder>", "no CT image series found")
    where = os.path.commonpath([os.path.dirname(f) for s in series for f in s.files]) or "."
    if series_uid:
        forced = [s for s in series if s.uid == series_uid]
        if not forced:
            raise SeriesChoiceError(
                where, f"no series with SeriesInstanceUID {series_uid} ({len(series)} found)"
            )
        s = forced[0]
        reason = f"{s.describe()}: forced by series_uid"
        if s.excluded:
            reason += f" (would have been left out: {s.excluded})"
        return SeriesChoice(s.uid, s, reason, tuple(series))
    usable = [s for s in series if not s.excluded]
    plain = [s for s in usable if not s.contrast]
    if not usable:
        why = "; ".join(f"{s.describe()}: {s.excluded}" for s in series)
        raise SeriesChoiceError(where, f"no axial CT series to score ({why})")
    pool = plain or usable
    best = min(pool, key=_rank)
    rule = (
        f"closest to {TARGET_THICKNESS_MM:g} mm of {len(pool)} non-contrast axial series"
        if plain
        else f"all {len(pool)} axial series have contrast; closest to {TARGET_THICKNESS_MM:g} mm"
    )
    left = []
    for s in series:
        if s is best:
            continue
        if s.excluded:
            left.append(f"series {s.number} {s.excluded}")
        elif s.contrast and plain:
            left.append(f"series {s.number} contrast")
        else:
            thick = "?" if s.thickness_mm is None else f"{s.thickness_mm:g} mm"
            left.append(f"series {s.number} {thick}")
    reason = f"{best.describe()}: {rule}"
    if left:
        reason += f"; left out: {', '.join(left)}"
    return SeriesChoice(best.uid, best, reason, tuple(series))


def read_chosen_series(
    folder: str | os.PathLike, study_id: str | None = None, series_uid: str = ""
) -> CTVolume:
    """Reads the series :func:`choose_series` picks in ``folder`` (recursively, ``*.dcm``).

    Returns:
      The canonical volume (``data.dicom.read_dicom_files`` of the chosen files) with
      ``report`` = the :class:`SeriesChoice`.

    Raises:
      FileNotFoundError: not a folder; DicomError: no file, no scorable series, or any
      reading error of the chosen series (naming the file).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    files = sorted(str(p) for p in root.glob("**/*.dcm") if p.is_file())
    if not files:
        raise dicom.EmptySeriesError(root, "no files match '**/*.dcm'")
    choice = choose_series(scan_series(files), series_uid)
    volume = dicom.read_dicom_files(
        choice.chosen.files, root.name if study_id is None else study_id
    )
    return dataclasses.replace(volume, report=choice)
