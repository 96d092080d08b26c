"""Coronary calcium for the COCA-format phantom: plaques, annotator outlines and labels.

Each plaque is an elliptical core whose profile crosses 130 HU on the core ellipse (a
flat top at 165 to 1300 HU falling to the surrounding fat), centred on one artery's
path (`anatomy.PATHS`) on one to three consecutive slices, and outlined by a
jittered-ellipse polygon about 1.4-1.9 times the core, so the outline's rim pixels stay
below 130 HU. The label of a slice is what the COCA reader reconstructs from the written
outlines: ``skimage.draw.polygon`` of the float vertices (rows = y, cols = x)
intersected with the stored HU >= 130 (`roi_pixels`). Outlines of different arteries
never overlap, and a plaque whose outline would enclose other tissue above 100 HU
(bone, the aortic spot) is dropped.

How much calcium a patient gets comes from a risk category (the paper's Table 2 bins,
plus a calcium-free group): plaques are added until an estimate of the Agatston score
reaches a target drawn inside the category, away from its bounds, so the exact score
(computed from the rendered volume by `dinolg_jax.scoring.agatston`) lands in it for
nearly every patient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.draw import polygon as fill_polygon

from dinolg_jax.phantom.anatomy import PATHS, VESSELS, Scan, anatomy_slice, vessel_point

ROI_NAMES: dict[str, str] = {
    "RCA": "Right Coronary Artery",
    "LAD": "Left Anterior Descending Artery",
    "LCA": "Left Coronary Artery",
    "LCX": "Left Circumflex Artery",
}
THRESHOLD_HU = 130
# pid % 20 -> risk category of a gated patient: 2 zero, 2 low, 6 moderate, 5 high,
# 5 very high, in rough proportion to the paper's Table 2 (56/147/122/118 of 443).
# fmt: off
CATEGORY_PATTERN: tuple[str, ...] = (
    "moderate", "high", "zero", "very_high", "moderate", "high", "low", "very_high",
    "moderate", "high", "moderate", "very_high", "zero", "high", "moderate", "low",
    "very_high", "moderate", "high", "very_high",
)
# fmt: on
# Estimated-score targets per category, kept off the category bounds (10, 100, 400).
_TARGETS: dict[str, tuple[float, float]] = {
    "low": (2.0, 8.0),
    "moderate": (15.0, 85.0),
    "high": (120.0, 360.0),
    "very_high": (460.0, 2000.0),
}
_VESSEL_P = {"RCA": 0.3, "LAD": 0.4, "LCA": 0.1, "LCX": 0.2}
_SPAN_P = (0.6, 0.3, 0.1)  # a plaque covers 1, 2 or 3 slices


@dataclass
class Plaque:
    """One calcified object on one slice, before rendering.

    Attributes:
        vessel: one of `VESSELS`.
        slice: z-ascending slice index.
        center_px: (row, col) of the core centre, pixels.
        axes_px: core semi-axes (a, b), pixels; the core is where the profile >= 130 HU.
        angle: core orientation, radians.
        peak_hu: plateau HU of the core.
        outline_px: float [P, 2] open outline (x = col, y = row) drawn by the annotator.
    """

    vessel: str
    slice: int
    center_px: tuple[float, float]
    axes_px: tuple[float, float]
    angle: float
    peak_hu: float
    outline_px: np.ndarray


def _weight(hu: float) -> int:
    return 1 + int(hu >= 200) + int(hu >= 300) + int(hu >= 400)


def _outline(
    rng: np.random.Generator,
    center_rc: tuple[float, float],
    axes: tuple[float, float],
    angle: float,
) -> np.ndarray:
    """Freehand-like open outline around a core: float [P, 2] as (x = col, y = row).

    Vertices sit on pixel centres give or take ~0.004 px, like the real annotations.
    """
    grow = rng.uniform(1.4, 1.9)
    ra, rb = max(axes[0] * grow, axes[0] + 1.2), max(axes[1] * grow, axes[1] + 1.2)
    n = int(np.clip(2 * math.pi * math.sqrt((ra * ra + rb * rb) / 2) / 1.4, 8, 90))
    t = np.sort(rng.uniform(0, 2 * math.pi, n)) + rng.uniform(0, 2 * math.pi)
    jit = 1.0 + rng.uniform(-0.08, 0.08, n)
    xe, ye = ra * np.cos(t) * jit, rb * np.sin(t) * jit
    c, s = math.cos(angle), math.sin(angle)
    col = center_rc[1] + xe * c - ye * s
    row = center_rc[0] + xe * s + ye * c
    pts = np.round(np.stack([col, row], axis=1))
    keep = np.ones(len(pts), bool)
    keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    keep[-1] &= bool(np.any(pts[-1] != pts[0]))
    pts = pts[keep]
    off = rng.uniform(0.002, 0.006, pts.shape) * rng.choice([-1.0, 1.0], pts.shape)
    return pts + off


def _core_pixels(center_rc: tuple[float, float], axes: tuple[float, float], angle: float) -> int:
    """Number of pixel centres inside a core ellipse (as `_paint_plaque` draws it)."""
    r = max(axes) + 1.0
    rows = np.arange(math.floor(center_rc[0] - r), math.ceil(center_rc[0] + r) + 1)
    cols = np.arange(math.floor(center_rc[1] - r), math.ceil(center_rc[1] + r) + 1)
    yy, xx = (rows - center_rc[0])[:, None], (cols - center_rc[1])[None, :]
    c, s = math.cos(angle), math.sin(angle)
    xr, yr = xx * c + yy * s, yy * c - xx * s
    return int(np.count_nonzero((xr / axes[0]) ** 2 + (yr / axes[1]) ** 2 <= 1.0))


def plan_plaques(rng: np.random.Generator, scan: Scan, category: str) -> tuple[list[Plaque], float]:
    """Draws plaques until the estimated Agatston score reaches the category's target.

    Args:
        rng: the patient's generator.
        scan: its geometry.
        category: "zero", "low", "moderate", "high" or "very_high".

    Returns:
        (plaques, target score); no plaques and target 0 for "zero".

    Raises:
        ValueError: for an unknown category.
    """
    if category == "zero":
        return [], 0.0
    if category not in _TARGETS:
        raise ValueError(f"unknown category {category!r}; known: zero, {sorted(_TARGETS)}")
    plaques: list[Plaque] = []
    lo, hi = _TARGETS[category]
    target = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    px2 = scan.pixel_mm**2
    min_axis = 0.75  # px: the core always covers its centre pixel
    factor = scan.thickness_mm / 3.0
    names = list(_VESSEL_P)
    probs = np.array([_VESSEL_P[v] for v in names])
    est, tries = 0.0, 0
    while est < target and tries < 300:
        tries += 1
        vessel = names[int(rng.choice(len(names), p=probs))]
        tau = float(rng.uniform(0, 1))
        (u0, u1), _ = PATHS[vessel]
        z = (u0 + (u1 - u0) * tau) * scan.p["rz"]
        k0 = int(np.argmin(np.abs(scan.z_mm - z)))
        if abs(scan.z_mm[k0] - z) > scan.thickness_mm:
            continue
        span = 1 if vessel == "LCA" else int(rng.choice(3, p=_SPAN_P)) + 1
        remaining = target - est
        big = category in ("high", "very_high")
        area = math.exp(rng.uniform(math.log(2.0 if big else 1.2), math.log(90.0 if big else 20.0)))
        peak = math.exp(rng.uniform(math.log(165.0), math.log(1300.0 if big else 700.0)))
        new: list[Plaque] = []
        contrib = 0.0
        for j in range(span):
            k = k0 + j
            if k >= len(scan.z_mm):
                break
            a_mm2 = area if j == 0 else area * rng.uniform(0.3, 0.7)
            pk = peak if j == 0 else max(165.0, peak * rng.uniform(0.6, 0.9))
            per_mm2 = _weight(pk) * factor
            if contrib + a_mm2 * per_mm2 > 1.15 * remaining:  # shrink to fit the target
                a_mm2 = (1.15 * remaining - contrib) / per_mm2
                if a_mm2 < max(1.0, px2):
                    break
            pt = vessel_point(scan, vessel, k, tau)
            if pt is None:
                break
            elong = rng.uniform(1.0, 2.2)
            ax = max(math.sqrt(a_mm2 * elong / math.pi / px2), min_axis)
            bx = max(math.sqrt(a_mm2 / elong / math.pi / px2), min_axis)
            row = (pt[1] - scan.y0_mm) / scan.pixel_mm + rng.uniform(-0.3, 0.3) * bx
            col = (pt[0] - scan.x0_mm) / scan.pixel_mm + rng.uniform(-0.3, 0.3) * bx
            ang = float(rng.uniform(0, math.pi))
            outline = _outline(rng, (row, col), (ax, bx), ang)
            if outline.min() < 1 or outline.max() > scan.size - 2 or len(outline) < 3:
                break
            core_mm2 = _core_pixels((row, col), (ax, bx), ang) * px2  # what will be >= 130
            score = core_mm2 * per_mm2 if core_mm2 >= 1.0 - 1e-9 else 0.0
            if contrib + score > 1.3 * remaining:  # coarse pixels: one too many
                break
            new.append(Plaque(vessel, k, (row, col), (ax, bx), ang, pk, outline))
            contrib += score
        if new and not _overlaps(plaques, new, scan.size):
            plaques.extend(new)
            est += contrib
    return plaques, target


def _poly_mask(outline: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    return fill_polygon(outline[:, 1], outline[:, 0], (size, size))


def _overlaps(plaques: list[Plaque], new: list[Plaque], size: int) -> bool:
    """Whether a new plaque's outline touches another artery's outline on its slice."""
    for q in new:
        rr, cc = _poly_mask(q.outline_px, size)
        mine = set(zip(rr.tolist(), cc.tolist(), strict=True))
        for o in plaques:
            if o.slice == q.slice and o.vessel != q.vessel:
                r2, c2 = _poly_mask(o.outline_px, size)
                if mine.intersection(zip(r2.tolist(), c2.tolist(), strict=True)):
                    return True
    return False


def roi_pixels(hu_slice: np.ndarray, outline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reader's rule: polygon of the float outline (rows = y, cols = x) with HU >= 130.

    Args:
        hu_slice: int16 [H, W] stored HU.
        outline: float [P, 2] as (x = col, y = row).

    Returns:
        (rows, cols) of the ROI's pixels.
    """
    rr, cc = fill_polygon(outline[:, 1], outline[:, 0], hu_slice.shape)
    keep = hu_slice[rr, cc] >= THRESHOLD_HU
    return rr[keep], cc[keep]


def _paint_plaque(img: np.ndarray, q: Plaque) -> None:
    """Raises the HU of a plaque core: plateau `peak_hu`, exactly 130 on the core ellipse."""
    bg = -90.0
    k = math.log((q.peak_hu - bg) / (THRESHOLD_HU - bg))
    r = 2.3 * max(q.axes_px) + 2.0
    n = img.shape[0]
    r0, r1 = max(int(q.center_px[0] - r), 0), min(int(q.center_px[0] + r) + 2, n)
    c0, c1 = max(int(q.center_px[1] - r), 0), min(int(q.center_px[1] + r) + 2, n)
    yy = np.arange(r0, r1, dtype=np.float32)[:, None] - q.center_px[0]
    xx = np.arange(c0, c1, dtype=np.float32)[None, :] - q.center_px[1]
    c, s = math.cos(q.angle), math.sin(q.angle)
    xr, yr = xx * c + yy * s, yy * c - xx * s
    rho2 = (xr / q.axes_px[0]) ** 2 + (yr / q.axes_px[1]) ** 2
    v = bg + (q.peak_hu - bg) * np.exp(-k * rho2 * rho2)
    np.maximum(img[r0:r1, c0:c1], v, out=img[r0:r1, c0:c1])


def render(
    scan: Scan, plaques: list[Plaque], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[Plaque]]:
    """Renders the scan and its labels; drops plaques that would enclose other tissue.

    Returns:
        (hu int16 [Z, H, W] z ascending, labels uint8 [Z, H, W], the plaques kept:
        those that contribute at least one labelled pixel).
    """
    z, n = len(scan.z_mm), scan.size
    hu = np.empty((z, n, n), np.int16)
    labels = np.zeros((z, n, n), np.uint8)
    by_slice: dict[int, list[Plaque]] = {}
    for q in plaques:
        by_slice.setdefault(q.slice, []).append(q)
    kept: list[Plaque] = []
    for k in range(z):
        img = anatomy_slice(scan, k, rng)
        mine = []
        for q in by_slice.get(k, []):
            rr, cc = fill_polygon(q.outline_px[:, 1], q.outline_px[:, 0], (n, n))
            if rr.size and img[rr, cc].max() < 100.0:  # only fat / blood / muscle inside
                mine.append(q)
        for q in mine:
            _paint_plaque(img, q)
        img += rng.standard_normal((n, n), dtype=np.float32) * np.float32(scan.noise_hu)
        hu[k] = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
        for q in mine:
            rr, cc = roi_pixels(hu[k], q.outline_px)
            if rr.size:
                labels[k, rr, cc] = VESSELS.index(q.vessel) + 1
                kept.append(q)
    return hu, labels, kept
