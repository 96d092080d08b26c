"""The COCA release (Stanford AIMI): find its patients and load them as `Study` objects.

Layout and traps are documented in ``docs/coca_format.md``; in short::

    <root>/Gated_release_final/patient/<pid>/<series folder>/*.dcm
    <root>/Gated_release_final/calcium_xml/<pid>.xml        (Apple plist 1.0)
    <root>/deidentified_nongated/<id>/<id>/*.dcm
    <root>/deidentified_nongated/scores.xlsx                (column "filename ", trailing space)

Calcium labels come from `calcium_xml` (polygon of ``Point_px`` & HU >= 130, ROIs of a
vessel unioned, first vessel kept on conflicts, Center-z mismatch -> labels left out).
Decisions here:

- Patient folders and XML files are matched on the integer id, the ``.xml`` suffix in
  any case (``7``, ``007``, ``7.XML``, ``07.xml`` are patient 7). Two folders or two XML
  files for one patient raise `CocaError` naming both.
- A gated patient without an XML file gets all-zero labels (a zero score), counted.
- When the patient folder holds several series, the one whose z positions match the
  XML's ImageIndex / Center (and whose field holds the outlines' Centers) is used, even
  when another series is longer; ``StudyReport.series_note`` says so, and says when the
  folder mixes studies or frames of reference.
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

from dinolg_jax.data import calcium_xml, dicom
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
    "calcium_xml_path",
    "gated_inputs",
    "gated_study_id",
    "list_gated_patients",
    "list_nongated_studies",
    "load_gated_study",
    "load_nongated_scores",
    "load_nongated_study",
    "nongated_folder_id",
    "nongated_study_id",
    "parse_calcium_xml",
    "patient_folder",
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
      hu_suspect: (path relative to the release root, reason) of slices whose HU cannot be
        trusted (a rescale differing from the series', a constant image).
      series_note: how the kept series was chosen when not simply the longest, and
        whether the folder mixes studies / frames of reference; "" otherwise.
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
    hu_suspect: list[tuple[str, str]] = field(default_factory=list)
    series_note: str = ""


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


_PID = re.compile(r"[0-9]+")


def _pid_of_folder(p: Path) -> int | None:
    return int(p.name) if p.is_dir() and _PID.fullmatch(p.name) else None


def _pid_of_xml(p: Path) -> int | None:
    ok = p.is_file() and p.suffix.lower() == ".xml" and _PID.fullmatch(p.stem)
    return int(p.stem) if ok else None


def _entries_of(folder: Path, pid: int, pid_of: Any) -> list[Path]:
    """The entries of `folder` that name patient `pid` (by `pid_of`), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if pid_of(p) == pid)


def _one_entry(folder: Path, pid: int, pid_of: Any, what: str) -> Path | None:
    found = _entries_of(folder, pid, pid_of)
    if len(found) > 1:
        raise CocaError(
            f"gated patient {pid}: {len(found)} {what} ({', '.join(p.name for p in found)} "
            f"in {folder}); keep one"
        )
    return found[0] if found else None


def patient_folder(root: str | Path, pid: int) -> Path | None:
    """The DICOM folder of gated patient `pid` (``7`` or ``007``), or None.

    Raises:
      CocaError: two folders name the patient.
    """
    folder = Path(root) / GATED_DIR / "patient"
    return _one_entry(folder, int(pid), _pid_of_folder, "DICOM folders")


def calcium_xml_path(root: str | Path, pid: int) -> Path | None:
    """The calcium XML of gated patient `pid` (``7.xml``, ``07.XML`` ...), or None.

    Raises:
      CocaError: two XML files name the patient.
    """
    folder = Path(root) / GATED_DIR / "calcium_xml"
    return _one_entry(folder, int(pid), _pid_of_xml, "calcium XML files")


def gated_inputs(root: str | Path, pid: int) -> list[Path]:
    """Every file that loading gated patient `pid` may read: the files under each folder
    naming it, then each XML naming it (all of them, also when two clash), sorted."""
    base = Path(root) / GATED_DIR
    files = [
        f
        for folder in _entries_of(base / "patient", int(pid), _pid_of_folder)
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    ]
    return files + _entries_of(base / "calcium_xml", int(pid), _pid_of_xml)


def list_gated_patients(root: str | Path) -> GatedPatients:
    """Finds the gated patients of a release and what each of them has."""
    base = _require_dir(Path(root) / GATED_DIR, "gated folder")
    dicom_pids, ignored = set(), []
    patient_dir = base / "patient"
    if patient_dir.is_dir():
        for p in patient_dir.iterdir():
            if (pid := _pid_of_folder(p)) is not None:
                dicom_pids.add(pid)
            else:
                ignored.append(p.name)
    xml_pids = set()
    xml_dir = base / "calcium_xml"
    if xml_dir.is_dir():
        for p in xml_dir.iterdir():
            if (pid := _pid_of_xml(p)) is not None:
                xml_pids.add(pid)
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
    report.hu_suspect = [(_relative(p, root), why) for p, why in src.hu_suspect]
    report.series_note = src.series_note
    volume.study_id, volume.kind, volume.report = study_id, kind, report
    return volume, report


def _fits_annotations(rois: list[dict[str, Any]]) -> dicom.Fits | None:
    """A series test from the XML: every checked ROI's ImageIndex inside the series, its
    Center z within half a slice of that slice, its Center (x, y) inside the field."""
    used = [r for r in rois if len(r["points_px"]) >= 3 and calcium_xml.artery_label(r["name"])]
    if not used:
        return None

    def fits(cand: dicom.SeriesCandidate) -> bool:
        z = cand.z_mm
        half = (float(np.median(np.diff(z))) if len(z) > 1 else 0.0) / 2
        x0, x1, y0, y1 = cand.field_xy_mm()
        margin = max(cand.pixel_mm)
        for r in used:
            k, (cx, cy, cz) = r["image_index"], r["center"]
            if not 0 <= k < len(z) or abs(cz - z[k]) > half:
                return False
            if not (x0 - margin <= cx <= x1 + margin and y0 - margin <= cy <= y1 + margin):
                return False
        return True

    return fits


def load_gated_study(root: str | Path, pid: int | str) -> Study:
    """Loads gated patient `pid`: the series its XML annotates (else its longest), z
    ascending, with calcium labels.

    Args:
      root: release root (holding ``Gated_release_final``).
      pid: integer patient id (folder name).

    Returns:
      A `Study`; ``labels`` are all zero when the patient has no XML, None when a
      Center-z mismatch or a malformed XML left them out (``report.labels_left_out``
      says why).

    Raises:
      CocaError: no DICOM folder for `pid`, or two folders / two XML files for it.
      dicom.DicomError: an unreadable series.
    """
    root = Path(root)
    pid = int(pid)
    folder = patient_folder(root, pid)
    if folder is None:
        raise CocaError(
            f"gated patient {pid}: no DICOM folder {root / GATED_DIR / 'patient' / str(pid)}"
        )
    xml = calcium_xml_path(root, pid)
    rois, xml_error = None, ""
    if xml is not None:
        try:
            rois = parse_calcium_xml(xml)
        except CocaError as e:  # a malformed XML costs this patient's labels, not its scan
            xml_error = f"unusable calcium XML: {e}"
    fits = _fits_annotations(rois) if rois else None
    study, report = _study_from_volume(
        dicom.read_series(folder, fits=fits), gated_study_id(pid), "gated", root
    )
    if xml is None:
        study.labels = np.zeros(study.hu.shape, np.uint8)
        return study
    report.has_xml = True
    if rois is None:
        report.labels_left_out = xml_error
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


def _number(value: Any, where: str, formula: Any = None) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        if isinstance(formula, str) and formula.startswith("="):
            raise CocaError(
                f"{where}: formula {formula[:40]!r} has no cached value (the file was saved "
                "by a program that does not compute formulas); open and save it in a "
                "spreadsheet program, or type the number"
            )
        return 0.0
    try:
        out = float(value)
    except (TypeError, ValueError) as e:
        raise CocaError(f"{where}: not a number: {value!r}") from e
    if not math.isfinite(out):
        raise CocaError(f"{where}: not finite: {value!r}")
    if out < 0:
        raise CocaError(f"{where}: negative score {out:g} (an Agatston score is >= 0)")
    return out


def _sheet_rows(path: Path, *, data_only: bool) -> list[tuple]:
    """The first sheet's rows: cached values (`data_only`) or formulas as written."""
    import openpyxl

    try:  # openpyxl raises zipfile, XML, KeyError, ... types for a damaged file
        book = openpyxl.load_workbook(path, read_only=True, data_only=data_only)
        try:
            return list(book.worksheets[0].iter_rows(values_only=True)) if book.worksheets else []
        finally:
            book.close()
    except Exception as e:
        size = path.stat().st_size
        raise CocaError(
            f"{path}: not a readable .xlsx workbook ({size} bytes; {type(e).__name__}: {e}); "
            "it must be the release's Excel file (not CSV), complete"
        ) from e


def load_nongated_scores(root: str | Path) -> dict[str, dict[str, Any]]:
    """Reads ``deidentified_nongated/scores.xlsx``: per-vessel Agatston of non-gated scans.

    Returns:
      ``{sid: {"RCA", "LAD", "LCA", "LCX", "total": float, "total_mismatch": bool}}``
      keyed by the sheet's id as given (e.g. ``"12A"``; `nongated_folder_id` maps it to
      its folder). ``total`` is kept as given; ``total_mismatch`` flags rows where it
      differs from the vessel sum by more than 0.01. Empty cells read as 0.

    Raises:
      CocaError: not a readable .xlsx (0 bytes, a CSV renamed, truncated), no sheet,
        missing columns, a non-numeric or negative score, a formula cell without a cached
        value, a study id that is not one, or two rows for one study (``12A`` and ``12``
        name the same folder); the message names the file and the row(s).
    """
    path = Path(root) / NONGATED_DIR / "scores.xlsx"
    if not path.is_file():
        raise CocaError(f"no score sheet at {path}")
    rows = _sheet_rows(path, data_only=True)
    if not rows:
        raise CocaError(f"{path}: empty sheet")
    header = [str(c).strip() if c is not None else "" for c in rows[0]]
    wanted = ("filename", *VESSELS, "total")
    missing = [c for c in wanted if c not in header]
    if missing:
        raise CocaError(f"{path.name}: missing columns {missing} (header {rows[0]!r})")
    col = {c: header.index(c) for c in wanted}
    formulas: list[tuple] | None = None  # read only when a score cell is empty

    def cell(table: list[tuple], n: int, c: str) -> Any:
        row = table[n - 1] if n - 1 < len(table) else ()
        return row[col[c]] if col[c] < len(row) else None

    out: dict[str, dict[str, Any]] = {}
    row_of: dict[str, tuple[int, str]] = {}  # folder id -> (row, id as written)
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
        fid = nongated_folder_id(sid)
        if fid in row_of:
            m, first = row_of[fid]
            raise CocaError(
                f"{path.name} rows {m} and {n}: study {fid} appears twice (ids {first!r} and "
                f"{sid!r}); which score is right is unknown: keep one row"
            )
        row_of[fid] = (n, sid)
        entry: dict[str, Any] = {}
        for v in (*VESSELS, "total"):
            value = cell(rows, n, v)
            if (value is None or str(value).strip() == "") and formulas is None:
                formulas = _sheet_rows(path, data_only=False)
            formula = cell(formulas, n, v) if formulas is not None else None
            entry[v] = _number(value, f"{path.name} row {n} {v}", formula)
        entry["total_mismatch"] = abs(sum(entry[v] for v in VESSELS) - entry["total"]) > 0.01
        out[sid] = entry
    return out
