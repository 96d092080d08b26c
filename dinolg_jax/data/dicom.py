"""Read one axial CT series from a folder of DICOM files into a canonical `CTVolume`.

Conventions (see ``docs/coca_format.md``):

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
  file is reported in ``SeriesSource.dropped``.
* Every slice of the kept series must have the same ImageOrientationPatient (within
  ``AXIAL_TOLERANCE_DEG``; a slice rotated 180 degrees in-plane keeps the slice normal
  but not the orientation): otherwise :class:`MixedOrientationError` names the odd
  file. The orientation must be axial with in-plane axes along the patient x / y axes:
  flipped or swapped axes are reoriented to the canonical layout (``data/orientation.py``;
  column +x, row +y) with the geometry updated so every voxel keeps its world position;
  oblique or tilted in-plane axes raise :class:`NonAxialError` naming the series.
* Slices are sorted by ImagePositionPatient z ascending (index 0 = most inferior),
  never by file name, InstanceNumber or SliceLocation. Files of the kept series at the
  same z (within ``DUPLICATE_Z_TOL_MM``) are kept once (smallest path) only when their
  HU are identical; otherwise :class:`DuplicateSliceError` names both files.
* HU = stored value * RescaleSlope + RescaleIntercept, per slice. With integer slope
  and intercept (every CT scanner in COCA) this is exact integer arithmetic; otherwise
  it is computed in float64 and rounded half-to-even to whole HU. The result must fit
  int16, else :class:`PixelDataError`.
* ``slice_thickness_mm`` is the median z-step; the header's SliceThickness is kept
  separately. Steps that differ from the median by more than half of it (a missing
  slice gives ~2x) are listed in ``z_gaps``; the volume is still returned, so callers
  decide (the converter reports them).
* A RescaleSlope of 0 or below is refused (:class:`PixelDataError`: every pixel would read
  the intercept). Slices whose (RescaleSlope, RescaleIntercept) differ from the series'
  most common pair, and slices whose HU are all one value, are flagged, not refused:
  listed with the file and the reason in ``SeriesSource.hu_suspect`` (the converter keeps
  such a study out of every split).
* ``fits`` (optional) says which candidate series match something the caller knows
  (e.g. a calcium XML's ImageIndex and Center): a fitting series is kept before a longer
  one that does not fit, and ``SeriesSource.series_note`` says so; when none fits, the
  usual longest one is kept. The note also says when the folder's series come from more
  than one StudyInstanceUID / FrameOfReferenceUID.
* Lossy compression is flagged, not refused: a slice stored in a lossy transfer syntax
  (JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000 and HTJ2K that allow lossy
  coding, ...) or whose LossyImageCompression is "01" is listed in
  ``SeriesSource.lossy_files`` and sets ``CTVolume.lossy_compression``: its HU are not
  the scanner's.

Only geometry, acquisition and referencing tags are parsed (``dcmread(specific_tags=...)``);
names, IDs, dates and institutions are never read, so they cannot leak into the result.
The Study/Series/SOP Instance and Frame of Reference UIDs are read only to let a DICOM
SEG reference its source (``SeriesReference``); they never enter records or reports.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom.uid
from pydicom.dataset import Dataset

from dinolg_jax.data import orientation as orientation_lib
from dinolg_jax.data.dicom_slice import (  # re-exported: the errors are this module's API
    AXIAL_TOLERANCE_DEG,
    DUPLICATE_Z_TOL_MM,
    MASS_FACTOR_TAG,
    ORIENTATION_TOL,
    PIXEL_DATA_TAG,
    SPACING_TOL_MM,
    DicomError,
    DuplicateSliceError,
    EmptySeriesError,
    MissingTagError,
    MixedOrientationError,
    MixedSpacingError,
    NonAxialError,
    NotCTError,
    NotDicomError,
    PixelDataError,
    SliceInfo,
    UnsupportedTransferSyntaxError,
    fmt_mm,
    quiet_pydicom,
    read_header,
    read_hu,
    tag_floats,
    tag_int,
    tag_text,
    tag_value,
    validate_slice,
)
from dinolg_jax.data.volume import CTVolume, Geometry

__all__ = [
    "AXIAL_TOLERANCE_DEG",
    "DUPLICATE_Z_TOL_MM",
    "ORIENTATION_TOL",
    "SPACING_TOL_MM",
    "DicomError",
    "DroppedFile",
    "DuplicateSliceError",
    "EmptySeriesError",
    "MissingTagError",
    "MixedOrientationError",
    "MixedSpacingError",
    "NonAxialError",
    "NotCTError",
    "NotDicomError",
    "PixelDataError",
    "SeriesCandidate",
    "SeriesReference",
    "SeriesSource",
    "UnsupportedTransferSyntaxError",
    "read_dicom_files",
    "read_series",
]


@dataclasses.dataclass(frozen=True)
class DroppedFile:
    """A file that was read but is not part of the returned volume."""

    path: str
    reason: str  # e.g. "duplicate z=-120.0 mm", "scout (1 slice)", "no SeriesInstanceUID"


@dataclasses.dataclass(frozen=True)
class SeriesCandidate:
    """One series of a folder before its pixels are read, for a ``fits`` callback.

    Attributes:
      positions_mm: float64 [Z, 3] ImagePositionPatient of its distinct z positions, z
        ascending (the canonical slice order, so index k is ImageIndex k).
      orientation: stored ImageOrientationPatient (6 values).
      pixel_mm: PixelSpacing (row, col), mm.
      shape: (Rows, Columns).
      num_files: files in the series.
    """

    positions_mm: np.ndarray
    orientation: tuple[float, ...]
    pixel_mm: tuple[float, float]
    shape: tuple[int, int]
    num_files: int

    @property
    def z_mm(self) -> np.ndarray:
        """[Z] slice positions along z, ascending."""
        return self.positions_mm[:, 2]

    def field_xy_mm(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) of the pixel centres of the first slice, mm."""
        o = np.asarray(self.orientation, np.float64)
        corners = [
            self.positions_mm[0] + o[:3] * self.pixel_mm[1] * c + o[3:] * self.pixel_mm[0] * r
            for r in (0, self.shape[0] - 1)
            for c in (0, self.shape[1] - 1)
        ]
        xs, ys = [p[0] for p in corners], [p[1] for p in corners]
        return min(xs), max(xs), min(ys), max(ys)


Fits = Callable[[SeriesCandidate], bool]


@dataclasses.dataclass(frozen=True)
class SeriesReference:
    """What a DICOM SEG needs to reference its source series (UIDs and stored geometry).

    Attributes:
      study_uid, series_uid, frame_of_reference_uid: the series' UIDs.
      sop_class_uids, sop_instance_uids: of each kept slice, z ascending.
      positions_mm: float64 [Z, 3] stored ImagePositionPatient, z ascending.
      orientation: stored ImageOrientationPatient (6 values).
      pixel_mm: stored PixelSpacing (row, col).
      shape: stored (Rows, Columns).
      header_thickness_mm: SliceThickness, or None.
    """

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    sop_class_uids: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]
    positions_mm: np.ndarray
    orientation: tuple[float, ...]
    pixel_mm: tuple[float, float]
    shape: tuple[int, int]
    header_thickness_mm: float | None


@dataclasses.dataclass(frozen=True)
class SeriesSource:
    """Where a volume read by this module came from (``CTVolume.source``).

    Attributes:
      files: source file of each slice, z ascending.
      instance_numbers: InstanceNumber of each slice (None when absent), z ascending.
      dropped: files read but left out, with the reason.
      series_count: number of series found (files without SeriesInstanceUID in a
        folder where others have one are not counted as a series).
      z_gaps: z-steps (mm) differing from the median step by more than half of it.
      reorientation: the pixel permutation applied to reach the canonical layout.
      stored_orientation: ImageOrientationPatient as stored.
      lossy_files: (file, reason) of slices whose pixels went through lossy compression.
      hu_suspect: (file, reason) of slices whose HU cannot be trusted: a rescale that
        differs from the rest of the series, or a constant image.
      series_note: "" or how the kept series was chosen when that was not simply the
        longest, and whether the folder mixes studies / frames of reference.
      reference: for DICOM SEG; None when the files lack a UID it needs.
      reference_missing: which UIDs are missing when ``reference`` is None.
    """

    files: tuple[str, ...]
    instance_numbers: tuple[int | None, ...]
    dropped: tuple[DroppedFile, ...]
    series_count: int
    z_gaps: tuple[float, ...] = ()
    reorientation: orientation_lib.Reorientation = dataclasses.field(
        default_factory=orientation_lib.Reorientation
    )
    stored_orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    lossy_files: tuple[tuple[str, str], ...] = ()
    hu_suspect: tuple[tuple[str, str], ...] = ()
    series_note: str = ""
    reference: SeriesReference | None = None
    reference_missing: str = ""


def _series_uid(ds: Dataset, path: str) -> str | None:
    return tag_text(ds, path, "SeriesInstanceUID")


def _is_scout(headers: list[tuple[str, Dataset]]) -> bool:
    if len(headers) == 1:
        return True
    for path, ds in headers:
        image_type = tag_value(ds, path, "ImageType")
        if image_type is not None and "LOCALIZER" in [str(v).upper() for v in image_type]:
            return True
    return False


def _distinct_z(headers: list[tuple[str, Dataset]]) -> int:
    zs = []
    for path, ds in headers:
        try:
            ipp = tag_floats(ds, path, "ImagePositionPatient", 3, required=False)
        except MissingTagError:
            ipp = None
        if ipp is not None:
            zs.append(ipp[2])
    zs.sort()
    return sum(1 for i, z in enumerate(zs) if i == 0 or z - zs[i - 1] >= DUPLICATE_Z_TOL_MM)


def _candidate(members: list[tuple[str, Dataset]]) -> SeriesCandidate | None:
    """The series' geometry from its headers; None when a geometry tag is missing."""
    try:
        by_z: dict[float, tuple[float, ...]] = {}
        for path, ds in members:
            ipp = tag_floats(ds, path, "ImagePositionPatient", 3, required=True)
            by_z.setdefault(round(ipp[2] / DUPLICATE_Z_TOL_MM), ipp)
        path, ds = members[0]
        iop = tag_floats(ds, path, "ImageOrientationPatient", 6, required=True)
        spacing = tag_floats(ds, path, "PixelSpacing", 2, required=True)
        rows, cols = tag_int(ds, path, "Rows"), tag_int(ds, path, "Columns")
    except DicomError:
        return None
    if rows is None or cols is None:
        return None
    positions = np.asarray([by_z[k] for k in sorted(by_z)], np.float64)
    return SeriesCandidate(
        positions, tuple(iop), (spacing[0], spacing[1]), (rows, cols), len(members)
    )


def _uid_note(groups: list[list[tuple[str, Dataset]]]) -> str:
    """Says when the folder's (non-scout) series come from several studies / frames."""
    parts = []
    for key, what in (
        ("StudyInstanceUID", "studies"),
        ("FrameOfReferenceUID", "frames of reference"),
    ):
        uids = {tag_text(ds, p, key) for g in groups if not _is_scout(g) for p, ds in g}
        uids.discard(None)
        if len(uids) > 1:
            parts.append(f"{len(uids)} {what}")
    return f"the folder holds series of {' and '.join(parts)}" if parts else ""


def _group(
    headers: list[tuple[str, Dataset]], fits: Fits | None = None
) -> tuple[list[tuple[str, Dataset]], list[DroppedFile], int, str]:
    """Split files into series; return the kept series, dropped files, series count and
    the note on how it was chosen (``SeriesSource.series_note``)."""
    dropped: list[DroppedFile] = []
    images = []
    for path, ds in headers:
        if PIXEL_DATA_TAG in ds:
            images.append((path, ds))
            continue
        sop = tag_text(ds, path, "SOPClassUID")
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
        number = tag_int(ds, path, "SeriesNumber")
        groups.setdefault((uid or "", -1 if number is None else number), []).append((path, ds))

    def rank(members: list[tuple[str, Dataset]]) -> tuple:
        return (-_distinct_z(members), -len(members), min(p for p, _ in members))

    ordered = sorted(groups.values(), key=rank)
    notes = []
    fitting: dict[int, bool] = {}
    if fits is not None and len(ordered) > 1:
        for i, members in enumerate(ordered):
            cand = _candidate(members)
            fitting[i] = cand is not None and bool(fits(cand))
        if not fitting[0] and any(fitting.values()):
            first_fit = min(i for i, f in fitting.items() if f)
            longest = ordered[0]
            ordered.insert(0, ordered.pop(first_fit))
            notes.append(
                f"kept the {len(ordered[0])}-file series that matches the annotations, not "
                f"the longest ({len(longest)} files, e.g. {Path(min(p for p, _ in longest)).name})"
            )
    kept = ordered[0]
    for i, members in enumerate(ordered[1:], start=1):
        n = len(members)
        noun = "slice" if n == 1 else "slices"
        if _is_scout(members):
            reason = f"scout ({n} {noun})"
        elif rank(members)[:2] == rank(kept)[:2]:
            reason = f"duplicate series ({n} {noun}, as long as the kept one)"
        elif notes and i == 1:
            reason = f"other series ({n} {noun}; does not match the annotations)"
        else:
            reason = f"other series ({n} {noun})"
        dropped.extend(DroppedFile(p, reason) for p, _ in members)
    if note := _uid_note(list(groups.values())):
        notes.append(note)
    return kept, dropped, len(groups), "; ".join(notes)


def _series_name(slices: list[SliceInfo]) -> str:
    folder = os.path.commonpath([os.path.dirname(s.path) for s in slices])
    return f"the series in {folder or '.'}"


def _check_geometry(slices: list[SliceInfo]) -> None:
    """Same shape and spacing everywhere; one orientation (the odd slice is named)."""
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
    groups: list[list[SliceInfo]] = []
    for s in slices:  # sorted by path: groups in order of first appearance
        for g in groups:
            if max(abs(a - b) for a, b in zip(s.iop, g[0].iop, strict=True)) <= ORIENTATION_TOL:
                g.append(s)
                break
        else:
            groups.append([s])
    if len(groups) > 1:
        main = max(groups, key=len)  # the first of the largest groups on ties
        odd = min((s for g in groups if g is not main for s in g), key=lambda s: s.path)
        n_odd = len(slices) - len(main)
        raise MixedOrientationError(
            odd.path,
            f"ImageOrientationPatient {list(odd.iop)} differs from {list(main[0].iop)} of "
            f"{len(main)} other slice(s) of {_series_name(slices)} (e.g. "
            f"{Path(main[0].path).name}); {n_odd} slice(s) disagree: the series is refused",
        )


def _unique_z(slices: list[SliceInfo], dropped: list[DroppedFile]) -> tuple[list[SliceInfo], dict]:
    """Sort by z; keep one file per z, refusing duplicates whose HU differ.

    Returns:
      The kept slices (z ascending) and {path: HU [H, W]} of every slice read here.
    """
    clusters: list[list[SliceInfo]] = []
    for s in sorted(slices, key=lambda s: (s.z, s.path)):
        if clusters and s.z - clusters[-1][0].z < DUPLICATE_Z_TOL_MM:
            clusters[-1].append(s)
        else:
            clusters.append([s])
    unique, pixels = [], {}
    for cluster in clusters:
        first = min(cluster, key=lambda c: c.path)
        unique.append(first)
        if len(cluster) == 1:
            continue
        pixels[first.path] = read_hu(first.path, first.shape)
        for c in sorted(cluster, key=lambda c: c.path):
            if c is first:
                continue
            hu = read_hu(c.path, c.shape)
            if not np.array_equal(hu, pixels[first.path]):
                n = int(np.count_nonzero(hu != pixels[first.path]))
                raise DuplicateSliceError(
                    c.path,
                    f"same z={fmt_mm(c.z)} mm as {first.path} but different pixels ({n} of "
                    f"{hu.size} differ): which one is right is unknown, the series is refused",
                )
            dropped.append(
                DroppedFile(
                    c.path,
                    f"duplicate z={fmt_mm(c.z)} mm, identical pixels "
                    f"(kept {Path(first.path).name})",
                )
            )
    return unique, pixels


def _reference(
    unique: list[SliceInfo], header_ds: dict[str, Dataset], thickness: float | None
) -> tuple[SeriesReference | None, str]:
    """The SEG reference of the kept slices, or None and the missing UIDs."""
    first = header_ds[unique[0].path]
    uids = {
        k: tag_text(first, unique[0].path, k)
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
    }
    per_slice = [
        (
            tag_text(header_ds[s.path], s.path, "SOPClassUID"),
            tag_text(header_ds[s.path], s.path, "SOPInstanceUID"),
        )
        for s in unique
    ]
    missing = [k for k, v in uids.items() if v is None]
    if any(c is None for c, _ in per_slice):
        missing.append("SOPClassUID")
    if any(i is None for _, i in per_slice):
        missing.append("SOPInstanceUID")
    if missing:
        return None, ", ".join(missing)
    ref = SeriesReference(
        study_uid=str(uids["StudyInstanceUID"]),
        series_uid=str(uids["SeriesInstanceUID"]),
        frame_of_reference_uid=str(uids["FrameOfReferenceUID"]),
        sop_class_uids=tuple(str(c) for c, _ in per_slice),
        sop_instance_uids=tuple(str(i) for _, i in per_slice),
        positions_mm=np.asarray([s.ipp for s in unique], np.float64),
        orientation=tuple(unique[0].iop),
        pixel_mm=unique[0].spacing,
        shape=unique[0].shape,
        header_thickness_mm=thickness,
    )
    return ref, ""


def _hu_suspect(unique: list[SliceInfo], hu: np.ndarray) -> tuple[tuple[str, str], ...]:
    """(file, reason) of slices whose rescale differs from the series' or whose HU are
    constant (``hu`` int16 [Z, H, W] in the order of ``unique``)."""
    counts = Counter(s.rescale for s in unique)
    common = max(counts, key=lambda k: (counts[k], -[s.rescale for s in unique].index(k)))
    out = []
    for i, s in enumerate(unique):
        reasons = []
        if s.rescale != common:
            reasons.append(
                f"RescaleSlope/Intercept {s.rescale[0]:g}/{s.rescale[1]:g} differ from "
                f"{common[0]:g}/{common[1]:g} of {counts[common]} other slice(s)"
            )
        lo, hi = int(hu[i].min()), int(hu[i].max())
        if lo == hi:
            reasons.append(f"constant slice (every pixel {lo} HU)")
        if reasons:
            out.append((s.path, "; ".join(reasons)))
    return tuple(out)


def read_dicom_files(
    paths: Sequence[str | os.PathLike], study_id: str = "", *, fits: Fits | None = None
) -> CTVolume:
    """Read an explicit list of DICOM files as one CT series (see module docstring).

    Args:
      paths: DICOM files; all of them are read and grouped into series.
      study_id: the de-identified id given to the volume (no header value is used).
      fits: optional test of a `SeriesCandidate`: a series that passes it is kept
        before a longer one that does not (module docstring).

    Returns:
      The longest series as a canonical :class:`~dinolg_jax.data.volume.CTVolume` with
      ``kind = "dicom"``; ``source`` is a :class:`SeriesSource` (files, the other files
      in ``dropped``, the reorientation applied, lossy files, the SEG reference).

    Raises:
      DicomError: one of its subclasses, naming the file and the problem.
    """
    files = sorted(dict.fromkeys(str(p) for p in paths))
    if not files:
        raise EmptySeriesError("<no files>", "no DICOM files given")
    with quiet_pydicom():
        headers = [(p, read_header(p)) for p in files]
        kept, dropped, series_count, note = _group(headers, fits)
        slices = [validate_slice(p, ds) for p, ds in kept]  # kept is sorted by path
        header_ds = dict(kept)
        _check_geometry(slices)
        try:
            turn = orientation_lib.reorientation_for(slices[0].iop, AXIAL_TOLERANCE_DEG)
        except orientation_lib.OrientationError as e:
            raise NonAxialError(slices[0].path, f"{_series_name(slices)}: {e}") from e

        unique, pixels = _unique_z(slices, dropped)
        shape = unique[0].shape
        hu = np.empty((len(unique), *shape), np.int16)
        for i, s in enumerate(unique):
            hu[i] = pixels[s.path] if s.path in pixels else read_hu(s.path, shape)

        first_ds = header_ds[unique[0].path]
        thickness = tag_floats(first_ds, unique[0].path, "SliceThickness", 1, required=False)
        kvp = tag_floats(first_ds, unique[0].path, "KVP", 1, required=False)
        mass = tag_floats(first_ds, unique[0].path, MASS_FACTOR_TAG, None, required=False)
        header_thickness = thickness[0] if thickness else None
        reference, missing = _reference(unique, header_ds, header_thickness)

    z_mm = np.asarray([s.z for s in unique], np.float64)
    gaps: tuple[float, ...] = ()
    if len(unique) >= 2:
        steps = np.diff(z_mm)
        step = float(np.median(steps))
        gaps = tuple(float(d) for d in steps if abs(d - step) > 0.5 * step)
    elif header_thickness is not None and header_thickness > 0:
        step = header_thickness
    else:
        raise MissingTagError(unique[0].path, "single slice without a positive SliceThickness")
    iop = unique[0].iop
    stored = Geometry(
        positions_mm=np.asarray([s.ipp for s in unique], np.float64),
        col_dir=iop[:3],
        row_dir=iop[3:],
        pixel_mm=unique[0].spacing,
        slice_thickness_mm=step,
        header_thickness_mm=header_thickness,
    )
    lossy = tuple((s.path, s.lossy) for s in unique if s.lossy)
    source = SeriesSource(
        files=tuple(s.path for s in unique),
        instance_numbers=tuple(s.instance for s in unique),
        dropped=tuple(sorted(dropped, key=lambda d: d.path)),
        series_count=series_count,
        z_gaps=gaps,
        reorientation=turn,
        stored_orientation=tuple(iop),
        lossy_files=lossy,
        hu_suspect=_hu_suspect(unique, hu),
        series_note=note,
        reference=reference,
        reference_missing=missing,
    )
    return CTVolume(
        study_id=study_id,
        hu=turn.apply(hu),
        geometry=turn.geometry(stored, shape),
        kvp=kvp[0] if kvp else None,
        mass_factor=mass,
        kind="dicom",
        lossy_compression=bool(lossy),
        source=source,
    )


def read_series(
    folder: str | os.PathLike,
    *,
    pattern: str = "**/*.dcm",
    study_id: str | None = None,
    fits: Fits | None = None,
) -> CTVolume:
    """Read the CT series in ``folder`` (every file matching ``pattern``, recursively).

    Args:
      folder: a series or patient folder; series folder names are never interpreted.
      pattern: glob pattern relative to ``folder``.
      study_id: the volume's id; None = the folder's name.
      fits: see `read_dicom_files`.

    Returns:
      The longest series, canonical layout, z ascending; see :func:`read_dicom_files`.

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
    return read_dicom_files(files, root.name if study_id is None else study_id, fits=fits)
