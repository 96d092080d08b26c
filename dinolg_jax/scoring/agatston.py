"""Agatston coronary calcium score, volume and mass score, risk categories and CAC-DRS.

Convention (see ``docs/agatston.md``; every result records the one it used):

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

Sparse: the cost follows the labelled voxels, not the image (vessel masks cover a few
hundred pixels of a study; bone, noise and the rest of the slice are never touched). One
pass over the labels finds the labelled voxels (read as 8-byte words, `_labelled_voxels`);
their HU are gathered, the candidates among them kept, and joined into lesions by looking
each candidate's in-plane neighbours up in the sorted index list, same vessel only, and
`scipy.sparse.csgraph.connected_components` (`_components`); the per-lesion area / max /
mean / centroid come from ``np.bincount`` and ``reduceat``. No Python loop over slices,
vessels or lesions until the results are built. ``tools/bench_agatston.py`` measures the
speed beside a straightforward ``scipy.ndimage`` reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

VESSELS: tuple[str, ...] = ("RCA", "LAD", "LCA", "LCX")  # label values 1..4
# The keyword options of `agatston` that make a scoring convention (the report states them).
CONVENTION_OPTIONS: tuple[str, ...] = (
    "threshold_hu",
    "connectivity",
    "min_area_mm2",
    "thickness_normalisation",
)

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


def _validate_volumes(hu: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checks shapes and dtypes; returns (hu [Z, H, W], labels [Z, H, W])."""
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
    return hu, labels


_BLOCK_WORDS = 4096  # 8-byte words per block of the label scan (32 KiB)


def _nonzero_words(words: np.ndarray) -> np.ndarray:
    """Ascending indices of the nonzero entries of a uint64 array, sparse input in mind.

    ``np.flatnonzero`` costs ~1-2 ns per word; a max over blocks of 4096 words runs at
    memory speed (~0.05 ns per byte), so only the words of nonzero blocks are looked at
    one by one.
    """
    n_blocks = len(words) // _BLOCK_WORDS
    head = n_blocks * _BLOCK_WORDS
    grid = words[:head].reshape(n_blocks, _BLOCK_WORDS)
    blocks = np.flatnonzero(grid.max(axis=1)) if n_blocks else np.zeros(0, np.int64)
    row, col = np.nonzero(grid[blocks])
    return np.concatenate([blocks[row] * _BLOCK_WORDS + col, head + np.flatnonzero(words[head:])])


def _labelled_voxels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raster (C-order) indices and values of the nonzero labels: (int64 [k], int64 [k]).

    The one pass over the whole volume: the labels are read as 8-byte words
    (`_nonzero_words`) and only the nonzero words element by element, so a sparse uint8
    volume costs ~0.05 ns per voxel. Raises ValueError for labels outside 0..4.
    """
    flat = labels.reshape(-1)  # a view for C-contiguous input, else one copy
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    size = flat.dtype.itemsize
    if size in (1, 2, 4, 8) and flat.nbytes % 8 == 0 and flat.flags.c_contiguous:
        per = 8 // size
        words = _nonzero_words(flat.view(np.uint64))
        idx = (words[:, None] * per + np.arange(per)).reshape(-1)
        idx = idx[flat[idx] != 0]
    else:
        idx = np.flatnonzero(flat)
    values = flat[idx].astype(np.int64)
    if len(values):
        lo, hi = int(values.min()), int(values.max())
        if hi > len(VESSELS) or lo < 0:
            lo = min(lo, 0) if len(values) < len(flat) else lo
            raise ValueError(
                f"labels must lie in 0..{len(VESSELS)} (0 bg, 1 RCA, 2 LAD, 3 LCA, 4 LCX), "
                f"got range [{lo}, {hi}]"
            )
    return idx, values


def _components(
    idx: np.ndarray, vessel: np.ndarray, shape: tuple[int, int, int], connectivity: int
) -> tuple[np.ndarray, int]:
    """Connected components of a sparse set of voxels, within one slice and one vessel.

    Two candidates are joined when they are in-plane neighbours (4- or 8-connected) with
    the same vessel label: the edges come from looking every candidate's forward
    neighbours up in the sorted index list (`np.searchsorted`), and the components from
    `scipy.sparse.csgraph.connected_components`. Cost: O(k log k) in the k candidates.

    Args:
        idx: int64 [k] raster indices of the candidate voxels, ascending.
        vessel: [k] their vessel labels.
        shape: (Z, H, W) of the volume.
        connectivity: 4 or 8.

    Returns:
        (ids int [k] component of each candidate in 0..n-1, n).
    """
    k = len(idx)
    _, height, width = shape
    col = idx % width
    row = (idx // width) % height
    steps = [(0, 1), (1, 0)] + ([(1, -1), (1, 1)] if connectivity == 8 else [])
    src, dst = [], []
    for dr, dc in steps:
        ok = (col + dc >= 0) & (col + dc < width) & (row + dr < height)
        target = idx + (dr * width + dc)
        pos = np.minimum(np.searchsorted(idx, target), k - 1)
        ok &= (idx[pos] == target) & (vessel[pos] == vessel)
        src.append(np.flatnonzero(ok))
        dst.append(pos[ok])
    src, dst = np.concatenate(src), np.concatenate(dst)
    order = np.argsort(src, kind="stable")  # CSR rows: edges grouped by source
    indptr = np.concatenate(([0], np.cumsum(np.bincount(src, minlength=k))))
    graph = sparse.csr_matrix((np.ones(len(src), np.int8), dst[order], indptr), shape=(k, k))
    n, ids = csgraph.connected_components(graph, directed=False)
    return ids, int(n)


def _checked_options(
    pixel_mm: Sequence[float],
    slice_thickness_mm: float,
    threshold_hu: float,
    min_area_mm2: float,
    connectivity: int,
) -> tuple[float, float, float, float, float]:
    """(row mm, col mm, slice thickness mm, threshold HU, minimum area mm^2) as floats.

    Raises:
        ValueError: for a pixel_mm that is not (row, col), a non-positive spacing or
            thickness, a non-finite threshold, a negative or non-finite minimum area, or a
            connectivity other than 4 / 8 (checked in that order).
    """
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
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    return pr, pc, thick, threshold_hu, min_area_mm2


def _candidates(
    hu: np.ndarray, labels: np.ndarray, threshold_hu: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labelled voxels at or above the threshold, in raster order.

    Only the labelled voxels are looked at (vessel masks are sparse): their HU, and the
    candidates among them.

    Args:
        hu: [Z, H, W] HU.
        labels: [Z, H, W] vessel labels 0..4.
        threshold_hu: candidate threshold, HU (inclusive).

    Returns:
        (raster indices int64 [k], vessel 0..3 int64 [k], HU float64 [k]).
    """
    idx, vessel_vox = _labelled_voxels(labels)
    if hu.flags.c_contiguous:
        vals = hu.reshape(-1)[idx]
    else:
        vals = hu[np.unravel_index(idx, hu.shape)]
    cand = vals >= threshold_hu
    return idx[cand], vessel_vox[cand] - 1, vals[cand].astype(np.float64)


class _ComponentStats(NamedTuple):
    """Per-component statistics, arrays [n] indexed by component id 0..n-1."""

    counts: np.ndarray  # int: voxels (pixels) in the component
    max_hu: np.ndarray  # float64: HU
    mean_hu: np.ndarray  # float64: HU
    row: np.ndarray  # float64: centroid row, pixels
    col: np.ndarray  # float64: centroid column, pixels
    first: np.ndarray  # int: candidate index (raster order) of its first voxel
    vessel: np.ndarray  # int: 0..3, index into VESSELS
    slice: np.ndarray  # int: z


def _component_stats(
    idx: np.ndarray,
    vessel_vox: np.ndarray,
    vals: np.ndarray,
    shape: tuple[int, int, int],
    connectivity: int,
) -> _ComponentStats:
    """Joins the k candidates (``_candidates``'s arrays) into components and measures them.

    Grouped by component id with a stable sort (raster order within a component); the
    statistics come from ``np.bincount`` and ``np.maximum.reduceat``.
    """
    ids, n_total = _components(idx, vessel_vox, shape, connectivity)
    plane = shape[1] * shape[2]
    z, rem = np.divmod(idx, plane)
    r, c = np.divmod(rem, shape[2])

    order = np.argsort(ids, kind="stable")
    ids, z, r, c, vals = ids[order], z[order], r[order], c[order], vals[order]
    counts = np.bincount(ids, minlength=n_total)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    max_hu = np.maximum.reduceat(vals, starts)
    mean_hu = np.bincount(ids, weights=vals, minlength=n_total) / counts
    row_c = np.bincount(ids, weights=r, minlength=n_total) / counts
    col_c = np.bincount(ids, weights=c, minlength=n_total) / counts
    first = order[starts]  # raster position of each component's first voxel
    return _ComponentStats(
        counts, max_hu, mean_hu, row_c, col_c, first, vessel_vox[first], z[starts]
    )


def _lesion_scores(
    comp: _ComponentStats,
    pixel_area: float,
    min_area_mm2: float,
    factor: float,
    thick: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps 3-6 of the convention for every component.

    Args:
        comp: the components' statistics.
        pixel_area: mm^2.
        min_area_mm2: minimum lesion area, mm^2.
        factor: thickness factor (slice_thickness_mm / 3, or 1).
        thick: slice thickness, mm.

    Returns:
        (area mm^2 [n], weight 1..4 [n], score [n], volume mm^3 [n], sel): sel, the ids of
        the counted lesions ordered by (slice, vessel, raster order).
    """
    area = comp.counts * pixel_area
    keep = area >= min_area_mm2 * (1.0 - _AREA_RTOL)
    weight = 1 + np.searchsorted(np.asarray(_WEIGHT_EDGES_HU), comp.max_hu, side="right")
    score = area * weight * factor
    vol = area * thick
    sel = np.flatnonzero(keep)
    sel = sel[np.lexsort((comp.first[sel], comp.vessel[sel], comp.slice[sel]))]
    return area, weight, score, vol, sel


def _lesion_tuple(
    comp: _ComponentStats,
    sel: np.ndarray,
    area: np.ndarray,
    weight: np.ndarray,
    score: np.ndarray,
) -> tuple[Lesion, ...]:
    """The counted lesions ``sel`` (component ids, in report order) as `Lesion`s."""
    return tuple(
        Lesion(
            slice=int(comp.slice[i]),
            vessel=VESSELS[comp.vessel[i]],
            area_mm2=float(area[i]),
            max_hu=float(comp.max_hu[i]),
            mean_hu=float(comp.mean_hu[i]),
            weight=int(weight[i]),
            score=float(score[i]),
            row=float(comp.row[i]),
            col=float(comp.col[i]),
        )
        for i in sel
    )


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
    hu, labels = _validate_volumes(hu, labels)
    pr, pc, thick, threshold_hu, min_area_mm2 = _checked_options(
        pixel_mm, slice_thickness_mm, threshold_hu, min_area_mm2, connectivity
    )
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

    empty = dict.fromkeys(VESSELS, 0.0)
    no_mass = 0.0 if c_mass is not None else None
    idx, vessel_vox, vals = _candidates(hu, labels, threshold_hu)
    if len(idx) == 0:
        return AgatstonResult(0.0, dict(empty), 0.0, dict(empty), no_mass, (), convention)
    comp = _component_stats(idx, vessel_vox, vals, labels.shape, int(connectivity))
    area, weight, score, vol, sel = _lesion_scores(comp, pixel_area, min_area_mm2, factor, thick)

    per_vessel = np.bincount(comp.vessel[sel], weights=score[sel], minlength=len(VESSELS))
    vol_vessel = np.bincount(comp.vessel[sel], weights=vol[sel], minlength=len(VESSELS))
    mass = None
    if c_mass is not None:
        mass = float(c_mass * np.sum(vol[sel] * comp.mean_hu[sel]) / 1000.0)
    per_vessel_d = {name: float(per_vessel[k]) for k, name in enumerate(VESSELS)}
    vol_d = {name: float(vol_vessel[k]) for k, name in enumerate(VESSELS)}
    return AgatstonResult(
        total=float(sum(per_vessel_d.values())),
        per_vessel=per_vessel_d,
        volume_mm3=float(sum(vol_d.values())),
        volume_per_vessel=vol_d,
        mass_mg=mass,
        lesions=_lesion_tuple(comp, sel, area, weight, score),
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
