"""Agatston coronary calcium score, volume and mass score, risk categories and CAC-DRS.

Convention (see ``shared/docs/agatston.md``; every result records the one it used):

1. Candidate calcium: voxels with ``hu >= threshold_hu`` (130 HU at 120 kVp, 147 at 100 kVp).
2. Lesions: on each axial slice and for each vessel label separately, the 2D connected
   components of ``(labels == v) & candidate``; 4-connectivity by default, 8 on request.
   Components never join across slices or across vessels.
3. A lesion counts when ``area_mm2 >= min_area_mm2`` (compared with a 1e-9 relative
   tolerance, so that e.g. 4 pixels of 0.5 x 0.5 mm count as exactly 1 mm^2).
4. Lesion score = area_mm2 x weight(max HU of the lesion): 1 below 200 HU (i.e. 130-199 at
   the standard threshold; a lower threshold also gets weight 1), 2 for 200-299, 3 for
   300-399, 4 for >= 400. Non-integer HU are compared directly (199.5 HU -> weight 1).
5. Vessel score = sum of its lesion scores x slice_thickness_mm / 3 (the thickness factor
   normalises to the 3 mm slices of the original method; ``thickness_normalisation=False``
   gives the raw sum). Total = sum of the four vessel scores.
6. Volume score (mm^3) = sum over lesions of area_mm2 x slice_thickness_mm (no /3 factor).
   Mass score (mg) = c x sum(area_mm2 x slice_thickness_mm x mean HU) / 1000 with the
   calibration factor c in mg/(cm^3 HU) (the volume is converted from mm^3 to cm^3). When
   c is a 3-vector, as DICOM (0018,9352) "Calcium Scoring Mass Factor Device" stores it for
   (small, medium, large) patients, the medium (second) value is used. Without c the mass
   is ``None``.

Risk categories bin the score the way it is reported clinically, as an integer: the score
is rounded half up (``floor(score + 0.5)``) and compared with the inclusive integer upper
bounds of the scheme, so 10.4 -> 10 -> "1-10" and 10.5 -> 11 -> "11-100". The one
exception: a positive score never rounds down to 0 (0.3 -> 1), because "0" means that no
calcium was found. CAC-DRS uses the same rule for its A grade.

Vectorised: the volume is cropped to the labelled slices and the in-plane bounding box of
the labels (vessel masks are sparse, so bone and the rest of the slice are never touched),
the candidate mask of the crop is labelled per vessel with ``scipy.ndimage.label`` and a 3D
structure whose z-neighbours are zero (so components stay within one slice), and the
per-lesion area / max / mean / centroid come from ``np.bincount`` and ``reduceat``. The only
Python loop is over the four vessels. ``tools/bench_agatston.py`` measures the speed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

VESSELS: tuple[str, ...] = ("RCA", "LAD", "LCA", "LCX")  # label values 1..4

# scheme name -> category names, lowest first.
RISK_SCHEMES: dict[str, tuple[str, ...]] = {
    "standard5": ("0", "1-10", "11-100", "101-400", ">400"),
    "paper4": ("low", "moderate", "high", "very high"),
    "cacdrs": ("A0", "A1", "A2", "A3"),
}
# scheme name -> inclusive integer upper bound of every category but the last.
_UPPER_BOUNDS: dict[str, tuple[int, ...]] = {
    "standard5": (0, 10, 100, 400),
    "paper4": (10, 100, 400),
    "cacdrs": (0, 99, 299),
}

_WEIGHT_EDGES_HU = (200.0, 300.0, 400.0)  # weight = 1 + number of edges <= max HU
_AREA_RTOL = 1e-9
_MASS_FACTOR_INDEX = 1  # medium patient size in a (small, medium, large) 3-vector


@dataclass(frozen=True)
class Lesion:
    """One scored lesion: a 2D connected component on one slice within one vessel.

    Attributes:
        slice: index of the slice along z (0 for a single [H, W] slice).
        vessel: one of ``VESSELS``.
        area_mm2: area of the component, mm^2.
        max_hu: maximum HU of its pixels.
        mean_hu: mean HU of its pixels.
        weight: Agatston density weight 1..4 from ``max_hu``.
        score: its contribution to the total: area_mm2 x weight x thickness factor
            (slice_thickness_mm / 3, or 1 without thickness normalisation).
        row: centroid row, pixels.
        col: centroid column, pixels.
    """

    slice: int
    vessel: str
    area_mm2: float
    max_hu: float
    mean_hu: float
    weight: int
    score: float
    row: float
    col: float


@dataclass(frozen=True)
class AgatstonResult:
    """Scores of one study.

    Attributes:
        total: Agatston score, sum of ``per_vessel``.
        per_vessel: {"RCA", "LAD", "LCA", "LCX"} -> Agatston score.
        volume_mm3: volume score, mm^3.
        volume_per_vessel: volume score per vessel, mm^3.
        mass_mg: mass score in mg, or None when no calibration factor was given.
        lesions: counted lesions, ordered by (slice, vessel, raster order).
        convention: the options used (threshold, connectivity, minimum area, thickness
            factor, spacing, mass factor).
    """

    total: float
    per_vessel: dict[str, float]
    volume_mm3: float
    volume_per_vessel: dict[str, float]
    mass_mg: float | None
    lesions: tuple[Lesion, ...]
    convention: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict (plain floats, ints, strings, lists)."""
        return {
            "total": float(self.total),
            "per_vessel": {k: float(v) for k, v in self.per_vessel.items()},
            "volume_mm3": float(self.volume_mm3),
            "volume_per_vessel": {k: float(v) for k, v in self.volume_per_vessel.items()},
            "mass_mg": None if self.mass_mg is None else float(self.mass_mg),
            "lesions": [
                {
                    "slice": int(les.slice),
                    "vessel": les.vessel,
                    "area_mm2": float(les.area_mm2),
                    "max_hu": float(les.max_hu),
                    "mean_hu": float(les.mean_hu),
                    "weight": int(les.weight),
                    "score": float(les.score),
                    "row": float(les.row),
                    "col": float(les.col),
                }
                for les in self.lesions
            ],
            "convention": dict(self.convention),
        }


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return value


def _resolve_mass_factor(mass_factor: Any) -> tuple[float | None, str | None]:
    if mass_factor is None:
        return None, None
    arr = np.asarray(mass_factor, dtype=np.float64)
    if arr.ndim == 0:
        return _check_positive("mass_factor", float(arr)), "scalar"
    if arr.shape == (3,):
        value = _check_positive("mass_factor (medium)", float(arr[_MASS_FACTOR_INDEX]))
        return value, "medium of (small, medium, large) from a 3-vector"
    raise ValueError(f"mass_factor must be a scalar or a 3-vector, got shape {arr.shape}")


def _structure(connectivity: int) -> np.ndarray:
    """3x3x3 structure joining in-plane neighbours only (z-neighbours are zero)."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    return s


def _validate_volumes(hu: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checks and returns (hu [Z, H, W], labels [Z, H, W], labelled [Z] bool)."""
    hu = np.asarray(hu)
    labels = np.asarray(labels)
    if hu.ndim not in (2, 3):
        raise ValueError(f"hu must be [H, W] or [Z, H, W], got shape {hu.shape}")
    if labels.shape != hu.shape:
        raise ValueError(f"labels shape {labels.shape} != hu shape {hu.shape}")
    if hu.dtype == bool or not (
        np.issubdtype(hu.dtype, np.integer) or np.issubdtype(hu.dtype, np.floating)
    ):
        raise ValueError(f"hu must be an integer or float HU array, got dtype {hu.dtype}")
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array (0..4), got dtype {labels.dtype}")
    if hu.ndim == 2:
        hu, labels = hu[None], labels[None]
    flat = labels.reshape(labels.shape[0], -1)
    if flat.size == 0:
        return hu, labels, np.zeros(labels.shape[0], dtype=bool)
    slice_max = flat.max(axis=1)  # [Z], also finds the slices with any label
    hi = int(slice_max.max())
    unsigned = labels.dtype == bool or np.issubdtype(labels.dtype, np.unsignedinteger)
    lo = 0 if unsigned else int(flat.min())
    if hi > len(VESSELS) or lo < 0:
        raise ValueError(
            f"labels must lie in 0..{len(VESSELS)} (0 bg, 1 RCA, 2 LAD, 3 LCA, 4 LCX), "
            f"got range [{lo}, {hi}]"
        )
    return hu, labels, slice_max > 0


def _components(
    cand: np.ndarray, lab: np.ndarray, structure: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Connected components of ``cand`` that never join different vessel labels.

    One ``ndimage.label`` call over all vessels; the rare components in which two vessels
    touch are relabelled per vessel inside their bounding box.

    Args:
        cand: [Z, H, W] bool candidate voxels (all inside some vessel label).
        lab: [Z, H, W] vessel labels 1..4 at the candidate voxels.
        structure: 3x3x3 structure without z-neighbours.

    Returns:
        (z, r, c, ids, n): the candidate voxels' coordinates in raster order, their
        component id in 0..n-1, and the number of components n.
    """
    comp, n = ndimage.label(cand, structure=structure)
    z, r, c = np.nonzero(cand)
    if n == 0:
        return z, r, c, np.zeros(0, np.int64), 0
    ids = comp[z, r, c].astype(np.int64) - 1
    vessel = lab[z, r, c].astype(np.int64) - 1
    n_v = len(VESSELS)
    present = np.bincount(ids * n_v + vessel, minlength=n * n_v).reshape(n, n_v) > 0
    mixed = present.sum(axis=1) > 1
    if mixed.any():
        pm = np.flatnonzero(mixed[ids])  # voxels of mixed components
        lo = [int(x[pm].min()) for x in (z, r, c)]
        hi = [int(x[pm].max()) + 1 for x in (z, r, c)]
        sub_lab = np.zeros([b - a for a, b in zip(lo, hi, strict=True)], np.int64)
        sub_lab[z[pm] - lo[0], r[pm] - lo[1], c[pm] - lo[2]] = vessel[pm] + 1
        for v in range(1, n_v + 1):
            sub_comp, n_new = ndimage.label(sub_lab == v, structure=structure)
            if n_new:
                pv = pm[vessel[pm] == v - 1]
                ids[pv] = sub_comp[z[pv] - lo[0], r[pv] - lo[1], c[pv] - lo[2]] - 1 + n
                n += n_new
        _, ids = np.unique(ids, return_inverse=True)  # drop the ids of mixed components
        n = int(ids.max()) + 1
    return z, r, c, ids, n


def agatston(
    hu: Any,
    labels: Any,
    pixel_mm: Sequence[float],
    slice_thickness_mm: float,
    *,
    threshold_hu: float = 130,
    connectivity: int = 4,
    min_area_mm2: float = 1.0,
    thickness_normalisation: bool = True,
    mass_factor: float | Sequence[float] | None = None,
) -> AgatstonResult:
    """Scores one study (or one slice) with the convention in the module docstring.

    Args:
        hu: [Z, H, W] or [H, W] Hounsfield units (integer or float).
        labels: same shape, integer; 0 background, 1 RCA, 2 LAD, 3 LCA, 4 LCX.
        pixel_mm: (row, col) pixel spacing, mm.
        slice_thickness_mm: slice thickness, mm.
        threshold_hu: candidate threshold, HU (inclusive).
        connectivity: 4 or 8 (in-plane).
        min_area_mm2: minimum lesion area, mm^2 (0 keeps every lesion).
        thickness_normalisation: multiply scores by slice_thickness_mm / 3.
        mass_factor: calibration factor c, mg/(cm^3 HU), scalar or a DICOM (0018,9352)
            (small, medium, large) 3-vector (the medium value is used); None: no mass.

    Returns:
        AgatstonResult.

    Raises:
        ValueError: on a shape mismatch, labels outside 0..4, non-positive spacing or
            thickness, a negative or non-finite minimum area or threshold, or a
            connectivity other than 4 / 8.
    """
    hu, labels, labelled = _validate_volumes(hu, labels)
    pix = np.asarray(pixel_mm, dtype=np.float64).reshape(-1)
    if pix.shape != (2,):
        raise ValueError(f"pixel_mm must be (row, col), got {pixel_mm!r}")
    pr = _check_positive("pixel_mm[0]", pix[0])
    pc = _check_positive("pixel_mm[1]", pix[1])
    thick = _check_positive("slice_thickness_mm", slice_thickness_mm)
    threshold_hu = float(threshold_hu)
    if not math.isfinite(threshold_hu):
        raise ValueError(f"threshold_hu must be finite, got {threshold_hu!r}")
    min_area_mm2 = float(min_area_mm2)
    if not math.isfinite(min_area_mm2) or min_area_mm2 < 0:
        raise ValueError(f"min_area_mm2 must be finite and >= 0, got {min_area_mm2!r}")
    structure = _structure(connectivity)
    c_mass, mass_source = _resolve_mass_factor(mass_factor)
    factor = thick / 3.0 if thickness_normalisation else 1.0
    pixel_area = pr * pc

    convention = {
        "threshold_hu": threshold_hu,
        "connectivity": int(connectivity),
        "min_area_mm2": min_area_mm2,
        "thickness_normalisation": bool(thickness_normalisation),
        "thickness_factor": factor,
        "slice_thickness_mm": thick,
        "pixel_mm": [pr, pc],
        "weights": "1: <200 HU, 2: 200-299, 3: 300-399, 4: >=400 (max HU of the lesion)",
        "mass_factor": c_mass,
        "mass_factor_source": mass_source,
    }

    # Crop to the labelled slices and the in-plane bounding box of the labels (masks are
    # sparse), then find the candidate voxels inside the crop only.
    empty = dict.fromkeys(VESSELS, 0.0)
    no_mass = 0.0 if c_mass is not None else None
    zs = np.flatnonzero(labelled)
    if zs.size == 0:
        return AgatstonResult(0.0, dict(empty), 0.0, dict(empty), no_mass, (), convention)
    span = labels[zs[0] : zs[-1] + 1]
    rows = np.flatnonzero(span.max(axis=(0, 2)))
    cols = np.flatnonzero(span.max(axis=(0, 1)))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    lab_c = labels[zs, r0:r1, c0:c1]
    hu_c = hu[zs, r0:r1, c0:c1]
    cand_c = (lab_c != 0) & (hu_c >= threshold_hu)

    # Components of the candidates, one lesion id per voxel in raster order.
    z, r, c, ids, n_total = _components(cand_c, lab_c, structure)
    if n_total == 0:
        return AgatstonResult(0.0, dict(empty), 0.0, dict(empty), no_mass, (), convention)
    vals = hu_c[z, r, c].astype(np.float64)
    vessel_vox = lab_c[z, r, c].astype(np.int64) - 1

    # Per-component statistics, grouped by id with a stable sort (raster order within).
    order = np.argsort(ids, kind="stable")
    ids, z, r, c, vals = ids[order], z[order], r[order], c[order], vals[order]
    counts = np.bincount(ids, minlength=n_total)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    max_hu = np.maximum.reduceat(vals, starts)
    mean_hu = np.bincount(ids, weights=vals, minlength=n_total) / counts
    row_c = np.bincount(ids, weights=r, minlength=n_total) / counts + r0
    col_c = np.bincount(ids, weights=c, minlength=n_total) / counts + c0
    first = order[starts]  # raster position of each component's first voxel
    vessel_of = vessel_vox[first]
    slice_of = zs[z[starts]]

    area = counts * pixel_area
    keep = area >= min_area_mm2 * (1.0 - _AREA_RTOL)
    weight = 1 + np.searchsorted(np.asarray(_WEIGHT_EDGES_HU), max_hu, side="right")
    score = area * weight * factor
    vol = area * thick

    sel = np.flatnonzero(keep)
    sel = sel[np.lexsort((first[sel], vessel_of[sel], slice_of[sel]))]
    per_vessel = np.bincount(vessel_of[sel], weights=score[sel], minlength=len(VESSELS))
    vol_vessel = np.bincount(vessel_of[sel], weights=vol[sel], minlength=len(VESSELS))
    mass = None
    if c_mass is not None:
        mass = float(c_mass * np.sum(vol[sel] * mean_hu[sel]) / 1000.0)

    lesions = tuple(
        Lesion(
            slice=int(slice_of[i]),
            vessel=VESSELS[vessel_of[i]],
            area_mm2=float(area[i]),
            max_hu=float(max_hu[i]),
            mean_hu=float(mean_hu[i]),
            weight=int(weight[i]),
            score=float(score[i]),
            row=float(row_c[i]),
            col=float(col_c[i]),
        )
        for i in sel
    )
    per_vessel_d = {name: float(per_vessel[k]) for k, name in enumerate(VESSELS)}
    vol_d = {name: float(vol_vessel[k]) for k, name in enumerate(VESSELS)}
    return AgatstonResult(
        total=float(sum(per_vessel_d.values())),
        per_vessel=per_vessel_d,
        volume_mm3=float(sum(vol_d.values())),
        volume_per_vessel=vol_d,
        mass_mg=mass,
        lesions=lesions,
        convention=convention,
    )


def _check_scheme(scheme: str) -> None:
    if scheme not in RISK_SCHEMES:
        raise ValueError(f"unknown risk scheme {scheme!r}; known: {sorted(RISK_SCHEMES)}")


def reported_score(score: float) -> int:
    """The integer a score is binned as: rounded half up, a positive score at least 1.

    Raises:
        ValueError: for a negative or non-finite score.
    """
    score = float(score)
    if not math.isfinite(score) or score < 0:
        raise ValueError(f"an Agatston score must be finite and >= 0, got {score!r}")
    n = math.floor(score + 0.5)
    return max(n, 1) if score > 0 else 0


def category_index(score: float, scheme: str = "standard5") -> int:
    """Index of the score's category in ``RISK_SCHEMES[scheme]`` (0 = lowest).

    Args:
        score: Agatston score (>= 0), binned as ``reported_score`` describes.
        scheme: "standard5", "paper4" or "cacdrs".
    """
    _check_scheme(scheme)
    n = reported_score(score)
    return sum(1 for bound in _UPPER_BOUNDS[scheme] if n > bound)


def risk_category(score: float, scheme: str = "standard5") -> str:
    """Risk category name of a score.

    "standard5": "0", "1-10", "11-100", "101-400", ">400"; "paper4" (the paper's Table 2):
    "low" (0-10), "moderate" (11-100), "high" (101-400), "very high" (>400); "cacdrs":
    "A0".."A3". Upper bounds are inclusive and apply to ``reported_score(score)``.
    """
    index = category_index(score, scheme)
    return RISK_SCHEMES[scheme][index]


def cac_drs(per_vessel: Mapping[str, float], total: float) -> str:
    """CAC-DRS grade like "A2/N3"; "A0" when the total is zero.

    A0 = 0, A1 = 1-99, A2 = 100-299, A3 >= 300 (binned like ``risk_category``); N = number
    of vessels (of RCA, LAD, LCA, LCX) with a positive score.

    Raises:
        ValueError: on unknown vessel names, negative scores, or a total that is zero
            while a vessel has calcium (or positive while none has).
    """
    unknown = set(per_vessel) - set(VESSELS)
    if unknown:
        raise ValueError(f"unknown vessels {sorted(unknown)}; expected a subset of {VESSELS}")
    for name, value in per_vessel.items():
        if not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"score of {name} must be finite and >= 0, got {value!r}")
    grade = category_index(total, "cacdrs")
    n = sum(1 for value in per_vessel.values() if float(value) > 0)
    if (grade == 0) != (n == 0):
        raise ValueError(f"total {total!r} is inconsistent with per-vessel scores {per_vessel!r}")
    return "A0" if grade == 0 else f"A{grade}/N{n}"
