"""COCA calcium annotations: read the XML plists and rasterise them into label volumes.

A calcium XML (Apple plist 1.0, ``docs/coca_format.md``) holds ``Images``, one per
annotated slice, each with ``ImageIndex`` (0-based position in the series sorted by
ImagePositionPatient z ascending) and ``ROIs`` (``Name``, float ``Point_px`` outline as
``"(x, y)"`` with x = column, y = row, ``Center`` ``"(x, y, z)"`` mm, and the ROI's own
pixel statistics ``Area`` cm^2, ``Mean``/``Min``/``Max`` HU, ...).

Rasterising follows the release's convention: fill the polygon of ``Point_px`` with
``skimage.draw.polygon`` (rows = y, cols = x), keep pixels with HU >= 130. Decisions
where the release is silent:

- ROIs of one vessel on one slice are unioned. A pixel claimed by two different
  vessels keeps the vessel of the first ROI (XML order) and is counted as a conflict.
- An ROI whose ``Center`` z is more than half a slice from ``z_mm[ImageIndex]``, or
  whose ``ImageIndex`` is outside the series, means the annotation belongs to another
  series: the patient's labels are left out (None) and the report says why.
- Artery names are matched through a synonym table (`artery_label`, ``ROI_SYNONYMS``;
  case, punctuation and spacing ignored): ``LAD``, ``Left Main``, ``Circumflex`` ... map to
  the four arteries. The release's junk names (``1``, ``Unnamed``: outlines around bone,
  ``JUNK_NAMES``) are skipped and reported. Any other name, or none, is a lesion whose
  artery is unknown (``Posterior Descending Artery`` may come from the RCA or the LCX):
  the ROI is not rasterised and is listed in ``RoiReport.unreliable``, naming it.
- An ROI without points (or with fewer than 3) whose ``Area`` is 0 is an empty
  placeholder, skipped and reported; one whose ``Area`` is above 0 is a lesion whose
  outline is lost: listed in ``RoiReport.unreliable``. ``NumberOfPoints`` is not trusted:
  an ROI with points is rasterised from its points whatever that field says (0 included).
- A malformed field (a number written as text, ``ROIs`` not a list, an ROI not a dict)
  raises `CocaError` naming the file, image and ROI; `coca.load_gated_study` then leaves
  the patient's labels out with that reason (the scan is still converted).
- Every rasterised ROI is checked against its own ``Area``/``Mean``/``Max`` (`SelfCheck`,
  `self_check_bounds`): exact, or within what rasterising the same outline on the pixel
  grid can legitimately change (``docs/coca_format.md#self-check``). An ROI that keeps 0
  pixels is listed in ``RoiReport.unreliable``. An ROI outside the bounds is listed in
  ``RoiReport.flagged`` when it is the only one and every other checked ROI of the patient
  agrees (the ROI is suspect, not the patient's labels); otherwise every such ROI is
  listed in ``RoiReport.unreliable``. The converter marks a patient with unreliable ROIs
  in the manifest (``data/convert.py`` says what the splits do with them).
"""

from __future__ import annotations

import plistlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from skimage.draw import polygon as fill_polygon

THRESHOLD_HU = 130
VESSELS = ("RCA", "LAD", "LCA", "LCX")  # label values 1..4
ROI_NAMES = {
    "right coronary artery": 1,
    "left anterior descending artery": 2,
    "left coronary artery": 3,
    "left circumflex artery": 4,
}
# Other spellings of the four arteries (normalised by `normalise_name`); docs/coca_format.md.
ROI_SYNONYMS = {
    1: ("rca", "right coronary", "right coronary artery"),
    2: ("lad", "left anterior descending", "left anterior descending coronary artery"),
    3: ("lca", "lm", "lmca", "left main", "left main artery", "left main coronary artery",
        "left main stem", "left coronary"),
    4: ("lcx", "cx", "circumflex", "circumflex artery", "left circumflex",
        "left circumflex coronary artery"),
}  # fmt: skip
_LABEL_OF_NAME = {
    **{name: v for v, names in ROI_SYNONYMS.items() for name in names},
    **ROI_NAMES,
}
# Names the release gives outlines that are not coronary calcium (around bone): skipped.
JUNK_NAMES = frozenset({"1", "unnamed"})
# Exact tier of the self-check: the XML stores float statistics of the same pixels.
AREA_TOL_CM2 = 1e-4
MEAN_TOL_HU = 1e-2
MAX_TOL_HU = 0.5

_FLOATS = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class CocaError(ValueError):
    """A release folder, calcium XML or score sheet that does not follow the COCA format."""


@dataclass
class SkippedRoi:
    """An XML ROI that was not rasterised: ``image_index``, position in its slice, reason."""

    image_index: int
    roi: int
    reason: str


@dataclass
class SelfCheck:
    """Rasterised ROI pixels against the XML's own ``Area``/``Mean``/``Max`` statistics.

    An ROI is exact when its pixel count x spacing^2 / 100 is within ``AREA_TOL_CM2``
    of ``Area`` (well under one pixel), its mean HU within ``MEAN_TOL_HU`` of ``Mean``
    and its max HU within ``MAX_TOL_HU`` of ``Max``. It is tolerated when it is not exact
    but within `self_check_bounds` (what rasterising the same outline can change).
    ``worst_*`` are the largest absolute differences over the checked ROIs (cm^2, HU);
    ``mismatches`` lists the ROIs outside the bounds as dicts (image_index, roi, diffs,
    the area bound in cm^2).
    """

    n_checked: int = 0
    n_exact: int = 0
    n_tolerated: int = 0
    worst_area_cm2: float = 0.0
    worst_mean_hu: float = 0.0
    worst_max_hu: float = 0.0
    mismatches: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class UnreliableRoi:
    """An ROI whose lesion the labels may miss or misplace (unknown artery, lost outline,
    0 pixels, a failed self-check); ``name`` is its ``Name`` as written (truncated)."""

    image_index: int
    roi: int
    reason: str
    name: str = ""


@dataclass
class RoiReport:
    """What rasterising one patient's XML did (no PHI: indices, counts, reasons).

    Attributes:
      labels_left_out: reason the labels were left out (Center z mismatch), else "".
      skipped_rois: empty placeholders, junk names and degenerate outlines.
      rois_total / rois_used: ROIs in the XML / rasterised.
      rois_per_vessel: rasterised ROIs per vessel name.
      conflict_pixels: pixels claimed by two vessels (first ROI kept).
      self_check: the per-ROI statistics check.
      unreliable: ROIs whose lesion the labels may miss (unknown or missing artery name,
        points lost, 0 pixels, self-check failures other than a lone one); non-empty means
        the patient's labels are unreliable.
      flagged: the lone ROI outside the self-check's bounds in a patient whose other
        checked ROIs agree: the ROI is suspect, the patient's labels are kept.
    """

    labels_left_out: str = ""
    skipped_rois: list[SkippedRoi] = field(default_factory=list)
    rois_total: int = 0
    rois_used: int = 0
    rois_per_vessel: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VESSELS, 0))
    conflict_pixels: int = 0
    self_check: SelfCheck = field(default_factory=SelfCheck)
    unreliable: list[UnreliableRoi] = field(default_factory=list)
    flagged: list[UnreliableRoi] = field(default_factory=list)


def _parse_floats(text: Any, n: int, what: str) -> list[float]:
    values = [float(v) for v in _FLOATS.findall(str(text))]
    if len(values) != n:
        raise CocaError(f"{what}: expected {n} numbers in {text!r}")
    return values


def _number(roi: dict[str, Any], key: str, default: float, what: str) -> float:
    """A numeric plist field; text that is not a number raises `CocaError` naming it."""
    value = roi.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CocaError(f"{what}: {key} is a {type(value).__name__}, not a number")
    try:
        out = float(value)
    except ValueError as e:
        raise CocaError(f"{what}: {key} is not a number: {str(value)[:40]!r}") from e
    if not np.isfinite(out):
        raise CocaError(f"{what}: {key} is not finite: {value!r}")
    return out


def parse_calcium_xml(path: str | Path) -> list[dict[str, Any]]:
    """Reads a calcium XML plist into a flat list of ROIs.

    Returns:
      One dict per ROI, in file order: ``image_index`` (int), ``roi`` (position in its
      slice), ``name`` (str), ``points_px`` float64 [P, 2] as (x, y) = (col, row),
      ``center`` (x, y, z) mm, and the XML statistics ``area`` (cm^2), ``mean``,
      ``min``, ``max`` (HU), ``num_points``.

    Raises:
      CocaError: not a plist, no ``Images`` list, or malformed fields.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = plistlib.load(f)
    except Exception as e:  # plistlib raises several types (InvalidFileException, ExpatError)
        raise CocaError(f"{path.name}: not a readable plist ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("Images"), list):
        raise CocaError(f"{path.name}: top-level dict with an 'Images' list expected")
    rois = []
    for image in data["Images"]:
        try:
            index = int(image["ImageIndex"])
            roi_list = image.get("ROIs", [])
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as e:
            raise CocaError(f"{path.name}: image entry without a valid ImageIndex") from e
        if not isinstance(roi_list, list):
            raise CocaError(
                f"{path.name} ImageIndex {index}: ROIs is a {type(roi_list).__name__}, not a list"
            )
        for k, roi in enumerate(roi_list):
            where = f"{path.name} ImageIndex {index} ROI {k}"
            if not isinstance(roi, dict):
                raise CocaError(f"{where}: ROI is a {type(roi).__name__}, not a dict")
            point_list = roi.get("Point_px", [])
            if not isinstance(point_list, list):
                raise CocaError(f"{where}: Point_px is a {type(point_list).__name__}, not a list")
            points = [_parse_floats(p, 2, where) for p in point_list]
            num_points = _number(roi, "NumberOfPoints", len(points), where)
            if not num_points.is_integer():
                raise CocaError(f"{where}: NumberOfPoints is not an integer: {num_points!r}")
            rois.append(
                {
                    "image_index": index,
                    "roi": k,
                    "name": str(roi.get("Name", "")),
                    "points_px": np.asarray(points, np.float64).reshape(-1, 2),
                    "center": tuple(_parse_floats(roi.get("Center", ""), 3, where)),
                    "area": _number(roi, "Area", 0.0, where),
                    "mean": _number(roi, "Mean", 0.0, where),
                    "min": _number(roi, "Min", 0.0, where),
                    "max": _number(roi, "Max", 0.0, where),
                    "num_points": int(num_points),
                }
            )
    return rois


def normalise_name(name: str) -> str:
    """An ROI name in the form the name tables use: lower case, punctuation as spaces."""
    text = re.sub(r"[.']", "", str(name).lower())  # L.A.D. -> lad
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text).split())


def artery_label(name: str) -> int | None:
    """The label (1 RCA, 2 LAD, 3 LCA, 4 LCX) of an ROI name or synonym; None otherwise."""
    return _LABEL_OF_NAME.get(normalise_name(name))


def outline_perimeter_px(points_px: np.ndarray) -> float:
    """Length of the closed outline through `points_px` [P, 2], in pixels."""
    closed = np.vstack([points_px, points_px[:1]])
    return float(np.hypot(*np.diff(closed, axis=0).T).sum())


def self_check_bounds(
    points_px: np.ndarray, xml_max_hu: float, n_pixels: int, px_area_cm2: float
) -> tuple[float, float]:
    """How far a correct rasterisation may differ from the XML's Area and Mean.

    The bound on the pixel count is ``perimeter / 2 + 1`` pixels: Nosarzewska's inequality
    for the pixel centres inside a convex outline of area A and perimeter P (pixel units),
    ``A - P/2 < N <= A + P/2 + 1``, i.e. what counting the outline on the pixel grid can
    change against any Area computed from the outline itself. The mean may then move by
    what that many boundary pixels (each between the threshold and ``Max``) can shift it
    in each of the two pixel sets (``docs/coca_format.md#self-check``).

    Args:
      points_px: float [P, 2] outline (x, y) in pixels.
      xml_max_hu: the XML's Max, HU.
      n_pixels: the smaller of the two pixel counts (rasterised, XML Area / pixel area).
      px_area_cm2: area of one pixel, cm^2.

    Returns:
      (area bound in cm^2, mean bound in HU), never below the exact tier's tolerances.
    """
    bound_px = outline_perimeter_px(points_px) / 2 + 1
    spread = max(xml_max_hu - THRESHOLD_HU, 0.0)
    mean_bound = 2 * bound_px * spread / max(n_pixels, 1)
    return max(bound_px * px_area_cm2, AREA_TOL_CM2), max(mean_bound, MEAN_TOL_HU)


def _roi_name(name: str) -> str:
    return repr(name[:40]) if name.strip() else "no name"


def rasterise_rois(
    rois: list[dict[str, Any]],
    hu: np.ndarray,
    z_mm: np.ndarray,
    pixel_mm: tuple[float, float],
    slice_thickness_mm: float,
    report: RoiReport,
) -> np.ndarray | None:
    """Builds the label volume from parsed ROIs and fills `report` (skips, self-check).

    Args:
      rois: output of `parse_calcium_xml`.
      hu: int16 [Z, H, W], z ascending.
      z_mm: [Z] slice positions, mm.
      pixel_mm: (row, col) spacing, mm.
      slice_thickness_mm: z-step, mm; an ROI's Center z must lie within half of it.
      report: updated in place.

    Returns:
      uint8 [Z, H, W] labels, or None when a Center-z mismatch leaves the labels out.
    """
    nz, h, w = hu.shape
    labels = np.zeros(hu.shape, np.uint8)
    report.rois_total += len(rois)
    px_area_cm2 = pixel_mm[0] * pixel_mm[1] / 100.0
    check = report.self_check
    mismatched = []
    failed: list[UnreliableRoi] = []  # outside the self-check's bounds, with pixels
    for r in rois:
        idx, k, name = r["image_index"], r["roi"], r["name"]
        lost = r["area"] > 0  # the XML measured pixels, so the ROI outlined a lesion
        if len(r["points_px"]) == 0 and not lost:  # NumberOfPoints is not trusted
            report.skipped_rois.append(SkippedRoi(idx, k, "empty placeholder"))
            continue
        if normalise_name(name) in JUNK_NAMES:
            report.skipped_rois.append(SkippedRoi(idx, k, f"junk name {name[:40]!r}"))
            continue
        vessel = artery_label(name)
        if vessel is None:
            report.unreliable.append(
                UnreliableRoi(
                    idx, k, f"artery unknown ({_roi_name(name)}): lesion not labelled", name[:40]
                )
            )
            continue
        if not 0 <= idx < nz:
            mismatched.append(f"ImageIndex {idx} outside the {nz}-slice series")
            continue
        if abs(r["center"][2] - z_mm[idx]) > slice_thickness_mm / 2:
            mismatched.append(
                f"ROI {k} on ImageIndex {idx}: Center z {r['center'][2]:.2f} mm, "
                f"slice z {z_mm[idx]:.2f} mm"
            )
            continue
        if len(r["points_px"]) < 3:
            n = len(r["points_px"])
            if lost:
                report.unreliable.append(
                    UnreliableRoi(
                        idx,
                        k,
                        f"{n} outline point(s) but XML Area {r['area']:.4g} cm^2: lesion lost",
                        name[:40],
                    )
                )
            else:
                report.skipped_rois.append(SkippedRoi(idx, k, "degenerate outline (< 3 points)"))
            continue
        rows, cols = fill_polygon(r["points_px"][:, 1], r["points_px"][:, 0], shape=(h, w))
        keep = hu[idx, rows, cols] >= THRESHOLD_HU
        rows, cols = rows[keep], cols[keep]
        values = hu[idx, rows, cols].astype(np.float64)
        # Self-check against the XML's own statistics of the same pixels.
        area = len(values) * px_area_cm2
        mean = float(values.mean()) if len(values) else 0.0
        vmax = float(values.max()) if len(values) else 0.0
        d_area, d_mean, d_max = abs(area - r["area"]), abs(mean - r["mean"]), abs(vmax - r["max"])
        check.n_checked += 1
        check.worst_area_cm2 = max(check.worst_area_cm2, d_area)
        check.worst_mean_hu = max(check.worst_mean_hu, d_mean)
        check.worst_max_hu = max(check.worst_max_hu, d_max)
        n_min = min(len(values), round(r["area"] / px_area_cm2))
        area_bound, mean_bound = self_check_bounds(r["points_px"], r["max"], n_min, px_area_cm2)
        if len(values) == 0:
            report.unreliable.append(
                UnreliableRoi(
                    idx,
                    k,
                    f"0 pixels >= {THRESHOLD_HU} HU (XML Area {r['area']} cm^2)",
                    name[:40],
                )
            )
        if d_area <= AREA_TOL_CM2 and d_mean <= MEAN_TOL_HU and d_max <= MAX_TOL_HU:
            check.n_exact += 1
        elif d_area <= area_bound and d_mean <= mean_bound and d_max <= MAX_TOL_HU:
            check.n_tolerated += 1
        else:
            if len(values):
                failed.append(
                    UnreliableRoi(
                        idx,
                        k,
                        f"self-check failed: |diff| area {d_area:.4g} cm^2 (bound "
                        f"{area_bound:.4g}), mean {d_mean:.4g} HU (bound {mean_bound:.4g}), "
                        f"max {d_max:.4g} HU",
                        name[:40],
                    )
                )
            check.mismatches.append(
                {
                    "image_index": idx,
                    "roi": k,
                    "area_cm2": d_area,
                    "mean_hu": d_mean,
                    "max_hu": d_max,
                    "area_bound_cm2": area_bound,
                }
            )
        # Union with earlier ROIs of the same vessel; never overwrite another vessel.
        current = labels[idx, rows, cols]
        report.conflict_pixels += int(np.count_nonzero((current != 0) & (current != vessel)))
        labels[idx, rows[current == 0], cols[current == 0]] = vessel
        report.rois_used += 1
        report.rois_per_vessel[VESSELS[vessel - 1]] += 1
    # A lone failure among agreeing ROIs is the ROI's problem; more is the patient's.
    agreeing = check.n_exact + check.n_tolerated
    if len(failed) == 1 and agreeing >= 1 and len(check.mismatches) == 1:
        report.flagged.extend(failed)
    else:
        report.unreliable.extend(failed)
    if mismatched:
        report.labels_left_out = (
            f"Center z mismatch on {len(mismatched)} ROI(s), annotation belongs to another "
            f"series; first: {mismatched[0]}"
        )
        return None
    return labels
