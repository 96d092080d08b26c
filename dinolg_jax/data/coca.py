"""The COCA release (Stanford AIMI): find its patients and load them as `Study` objects.

Layout and traps are documented in ``docs/coca_format.md``; in short::

    <root>/Gated_release_final/patient/<pid>/<series folder>/*.dcm
    <root>/Gated_release_final/calcium_xml/<pid>.xml        (Apple plist 1.0)
    <root>/deidentified_nongated/<id>/<id>/*.dcm
    <root>/deidentified_nongated/scores.xlsx                (column "filename ", trailing space)

Calcium labels come from `calcium_xml` (polygon of ``Point_px`` & HU >= 130, ROIs of a
vessel unioned, first vessel kept on conflicts, Center-z mismatch -> labels left out).
Decisions here:

- A gated patient without an XML file gets all-zero labels (a zero score), counted.
- A series stored flipped or with swapped axes is read in the canonical layout
  (``data/dicom.py``); the XML's ``Point_px`` refer to the stored pixels, so they are
  mapped with the same permutation (``Reorientation.points``) before rasterising.
  ``ImageIndex`` counts slices z ascending, which the reader keeps, so it is unchanged.
  The report says what was reoriented.
- A study is a `CTVolume` (``data/volume.py``); `Study` is its name here.

Nothing from a DICOM header that identifies a person reaches a `Study` or its report:
studies are named by dataset-local ids (``gated-0007``, ``nongated-12``) and file paths
are reported relative to the release root.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dinolg_jax.data import dicom
from dinolg_jax.data.calcium_xml import (  # re-exported: part of this module's API
    ROI_NAMES,
    THRESHOLD_HU,
    VESSELS,
    CocaError,
    RoiReport,
    SelfCheck,
    SkippedRoi,
    parse_calcium_xml,
    rasterise_rois,
)
from dinolg_jax.data.volume import CTVolume

__all__ = [
    "GATED_DIR",
    "NONGATED_DIR",
    "ROI_NAMES",
    "THRESHOLD_HU",
    "VESSELS",
    "CocaError",
    "GatedPatients",
    "RoiReport",
    "SelfCheck",
    "SkippedRoi",
    "Study",
    "StudyReport",
    "gated_study_id",
    "list_gated_patients",
    "list_nongated_studies",
    "load_gated_study",
    "load_nongated_scores",
    "load_nongated_study",
    "nongated_folder_id",
    "nongated_study_id",
    "parse_calcium_xml",
    "rasterise_rois",
    "strip_root",
]

GATED_DIR = "Gated_release_final"
NONGATED_DIR = "deidentified_nongated"


@dataclass(kw_only=True)
class StudyReport(RoiReport):
    """What happened while loading one study (no PHI: ids, relative paths, counts).

    The `RoiReport` fields (skipped ROIs, self-check, labels left out) come first.

    Attributes:
      study_id: dataset-local id.
      num_slices: slices in the kept series.
      dropped_files: (path relative to the release root, reason) of DICOM files not used.
      z_gaps_mm: z-steps that differ from the median step by more than half (missing slices).
      has_xml: gated only: whether a calcium XML exists.
      reoriented: how the stored slices were permuted to the canonical layout
        (e.g. "rows and columns flipped"), "" when stored canonical.
      lossy_files: (path relative to the release root, reason) of slices whose pixels went
        through lossy compression (their HU are not the scanner's).
    """

    study_id: str
    kind: str
    num_slices: int = 0
    series_count: int = 1
    dropped_files: list[tuple[str, str]] = field(default_factory=list)
    z_gaps_mm: list[float] = field(default_factory=list)
    has_xml: bool = False
    reoriented: str = ""
    lossy_files: list[tuple[str, str]] = field(default_factory=list)


Study = CTVolume  # a COCA study: a CTVolume with ``kind``, ``labels`` and ``report`` set


@dataclass
class GatedPatients:
    """Gated patients in a release, by what they have (sorted integer pids).

    Attributes:
      with_dicom: patients with a DICOM folder (loadable).
      annotated: with DICOM and a calcium XML.
      no_xml: with DICOM but no XML (zero labels).
      xml_only: with an XML but no DICOM folder (skipped).
      ignored: entries of the patient folder that are not integer pids.
    """

    with_dicom: list[int]
    annotated: list[int]
    no_xml: list[int]
    xml_only: list[int]
    ignored: list[str]


def gated_study_id(pid: int) -> str:
    """Dataset-local id of gated patient `pid`, e.g. ``gated-0007``."""
    return f"gated-{int(pid):04d}"


def nongated_folder_id(sid: str | int) -> str:
    """Folder id of a non-gated study: ``"12A"`` (score-sheet form) and ``"12"`` -> ``"12"``."""
    s = str(sid).strip()
    if s.startswith("nongated-"):
        s = s[len("nongated-") :]
    m = re.fullmatch(r"(\d+)[A-Za-z]*", s)
    if not m:
        raise CocaError(f"not a non-gated study id: {sid!r} (expected digits, e.g. '12A')")
    return str(int(m.group(1)))


def nongated_study_id(sid: str | int) -> str:
    """Dataset-local id of a non-gated study, e.g. ``nongated-12``."""
    return f"nongated-{nongated_folder_id(sid)}"


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise CocaError(f"{what} not found: {path} (is this a COCA release root?)")
    return path


def list_gated_patients(root: str | Path) -> GatedPatients:
    """Finds the gated patients of a release and what each of them has."""
    base = _require_dir(Path(root) / GATED_DIR, "gated folder")
    dicom_pids, ignored = set(), []
    patient_dir = base / "patient"
    if patient_dir.is_dir():
        for p in patient_dir.iterdir():
            if p.is_dir() and p.name.isdigit():
                dicom_pids.add(int(p.name))
            else:
                ignored.append(p.name)
    xml_pids = set()
    xml_dir = base / "calcium_xml"
    if xml_dir.is_dir():
        for p in xml_dir.iterdir():
            if p.suffix.lower() == ".xml" and p.stem.isdigit():
                xml_pids.add(int(p.stem))
            else:
                ignored.append(f"calcium_xml/{p.name}")
    return GatedPatients(
        with_dicom=sorted(dicom_pids),
        annotated=sorted(dicom_pids & xml_pids),
        no_xml=sorted(dicom_pids - xml_pids),
        xml_only=sorted(xml_pids - dicom_pids),
        ignored=sorted(ignored),
    )


def list_nongated_studies(root: str | Path) -> list[str]:
    """Folder ids (``"12"``) of the non-gated studies, numerically sorted."""
    base = _require_dir(Path(root) / NONGATED_DIR, "non-gated folder")
    ids = [p.name for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(ids, key=int)


def _relative(path: str | Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return Path(path).name


def strip_root(text: str, root: str | Path) -> str:
    """`text` with the release root's path prefix removed (messages name files relatively)."""
    for prefix in {str(Path(root).resolve()), str(Path(root))}:
        text = text.replace(prefix.rstrip("/") + "/", "")
    return text


def _study_from_volume(
    volume: CTVolume, study_id: str, kind: str, root: Path
) -> tuple[Study, StudyReport]:
    src = volume.source
    report = StudyReport(study_id=study_id, kind=kind, num_slices=int(volume.hu.shape[0]))
    report.series_count = int(src.series_count)
    report.dropped_files = [
        (_relative(d.path, root), strip_root(str(d.reason), root)) for d in src.dropped
    ]
    report.z_gaps_mm = [float(g) for g in src.z_gaps]
    report.reoriented = src.reorientation.describe()
    report.lossy_files = [(_relative(p, root), why) for p, why in src.lossy_files]
    volume.study_id, volume.kind, volume.report = study_id, kind, report
    return volume, report


def load_gated_study(root: str | Path, pid: int | str) -> Study:
    """Loads gated patient `pid`: its longest series, z ascending, with calcium labels.

    Args:
      root: release root (holding ``Gated_release_final``).
      pid: integer patient id (folder name).

    Returns:
      A `Study`; ``labels`` are all zero when the patient has no XML, None when a
      Center-z mismatch or a malformed XML left them out (``report.labels_left_out``
      says why).

    Raises:
      CocaError: no DICOM folder for `pid`.
      dicom.DicomError: an unreadable series.
    """
    root = Path(root)
    pid = int(pid)
    folder = root / GATED_DIR / "patient" / str(pid)
    if not folder.is_dir():
        raise CocaError(f"gated patient {pid}: no DICOM folder {folder}")
    study, report = _study_from_volume(
        dicom.read_series(folder), gated_study_id(pid), "gated", root
    )
    xml = root / GATED_DIR / "calcium_xml" / f"{pid}.xml"
    if not xml.is_file():
        study.labels = np.zeros(study.hu.shape, np.uint8)
        return study
    report.has_xml = True
    try:
        rois = parse_calcium_xml(xml)
    except CocaError as e:  # a malformed XML costs this patient's labels, not its scan
        report.labels_left_out = f"unusable calcium XML: {e}"
        return study  # labels None
    turn = study.source.reorientation
    if not turn.is_identity:  # Point_px refer to the stored pixels
        stored_shape = turn.canonical_shape(study.hu.shape[1:])  # a swap is its own inverse
        for roi in rois:
            roi["points_px"] = turn.points(roi["points_px"], stored_shape)
    study.labels = rasterise_rois(
        rois,
        study.hu,
        study.z_mm,
        study.pixel_mm,
        study.slice_thickness_mm,
        report,
    )
    return study


def load_nongated_study(root: str | Path, sid: str | int) -> Study:
    """Loads non-gated study `sid` (``"12A"``, ``"12"`` or ``"nongated-12"``); no labels.

    Raises:
      CocaError: a malformed id or no folder for it.
      dicom.DicomError: an unreadable series.
    """
    root = Path(root)
    fid = nongated_folder_id(sid)
    outer = root / NONGATED_DIR / fid
    folder = outer / fid if (outer / fid).is_dir() else outer
    if not folder.is_dir():
        raise CocaError(f"non-gated study {sid!r}: no folder {outer}")
    study, _ = _study_from_volume(
        dicom.read_series(folder), nongated_study_id(fid), "nongated", root
    )
    return study


def _number(value: Any, where: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0.0
    try:
        out = float(value)
    except (TypeError, ValueError) as e:
        raise CocaError(f"{where}: not a number: {value!r}") from e
    if not math.isfinite(out):
        raise CocaError(f"{where}: not finite: {value!r}")
    return out


def load_nongated_scores(root: str | Path) -> dict[str, dict[str, Any]]:
    """Reads ``deidentified_nongated/scores.xlsx``: per-vessel Agatston of non-gated scans.

    Returns:
      ``{sid: {"RCA", "LAD", "LCA", "LCX", "total": float, "total_mismatch": bool}}``
      keyed by the sheet's id as given (e.g. ``"12A"``; `nongated_folder_id` maps it to
      its folder). ``total`` is kept as given; ``total_mismatch`` flags rows where it
      differs from the vessel sum by more than 0.01. Empty cells read as 0.

    Raises:
      CocaError: not a readable .xlsx (0 bytes, a CSV renamed, truncated), no sheet,
        missing columns, a non-numeric score, a study id that is not one, or a repeated
        id; the message names the file and the row.
    """
    import openpyxl

    path = Path(root) / NONGATED_DIR / "scores.xlsx"
    if not path.is_file():
        raise CocaError(f"no score sheet at {path}")
    try:  # openpyxl raises zipfile, XML, KeyError, ... types for a damaged file
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            rows = list(book.worksheets[0].iter_rows(values_only=True)) if book.worksheets else []
        finally:
            book.close()
    except Exception as e:
        size = path.stat().st_size
        raise CocaError(
            f"{path}: not a readable .xlsx workbook ({size} bytes; {type(e).__name__}: {e}); "
            "it must be the release's Excel file (not CSV), complete"
        ) from e
    if not rows:
        raise CocaError(f"{path}: empty sheet")
    header = [str(c).strip() if c is not None else "" for c in rows[0]]
    wanted = ("filename", *VESSELS, "total")
    missing = [c for c in wanted if c not in header]
    if missing:
        raise CocaError(f"{path.name}: missing columns {missing} (header {rows[0]!r})")
    col = {c: header.index(c) for c in wanted}
    out: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows[1:], start=2):
        name = row[col["filename"]] if col["filename"] < len(row) else None
        if name is None or not str(name).strip():
            continue
        sid = str(name).strip()
        if isinstance(name, float) and name.is_integer():
            sid = str(int(name))
        if not re.fullmatch(r"\d+[A-Za-z]*", sid):
            raise CocaError(
                f"{path} row {n}: study id {sid[:40]!r} is not a non-gated study id "
                "(expected digits, e.g. '12A')"
            )
        if sid in out:
            raise CocaError(f"{path.name} row {n}: id {sid!r} appears twice")
        entry: dict[str, Any] = {
            v: _number(row[col[v]] if col[v] < len(row) else None, f"{path.name} row {n} {v}")
            for v in (*VESSELS, "total")
        }
        entry["total_mismatch"] = abs(sum(entry[v] for v in VESSELS) - entry["total"]) > 0.01
        out[sid] = entry
    return out
