"""Synthetic chest CT anatomy for the COCA-format phantom (no calcium; see calcium.py).

Everything is drawn in millimetres in a patient frame whose origin is the body centre:
x towards the patient's left (image columns), y posterior (image rows), z superior.
A scan is a stack of axial slices, index 0 the most inferior, so the volume is z
ascending exactly like the series the COCA reader reconstructs. Gated scans have a
cardiac field of view (165-240 mm, centred near the heart, the chest wall cut off
laterally), or with ``cardiac_fov_mm`` a targeted reconstruction: a smaller field centred
on the heart, as scanners reconstruct for cardiac CT; non-gated scans show the whole
chest (330-440 mm). The field is fixed in mm, so the pixel spacing is field / size and
the anatomy fills the image at any size.

Per slice, painted in this order (HU, before noise):
  air -1000; body ellipse of subcutaneous fat (-100) around a muscle layer (45); the
  thoracic cavity filled with lung (about -880 anterior to -820 posterior) with small
  vessels; liver (58) and spleen (50) domes on inferior slices; mediastinal fat (-90),
  oesophagus, trachea and great vessels on superior slices; the heart (40), an
  ellipsoid whose centre moves towards the patient's left and anterior as z descends,
  wrapped in pericardial fat (-90) that carries the four coronary arteries (lumen 35);
  descending aorta, ascending aorta with its arch, pulmonary trunk (35-45); bone above
  130 HU that is never labelled: vertebral body (cortex 650-1000, marrow 200-320),
  posterior elements, sternum and ribs whose sections rotate with z; sometimes a
  calcified spot on the descending aortic wall (220-700 HU, never labelled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

VESSELS: tuple[str, ...] = ("RCA", "LAD", "LCA", "LCX")  # label values 1..4

# Artery path over the heart surface: (u_start, u_end), (angle_start, angle_end) in
# degrees, u = (z - heart centre z) / heart z radius; angle 0 = patient left, -90 =
# anterior, +-180 = patient right.
PATHS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "LCA": ((0.64, 0.52), (-118.0, -82.0)),  # left main: short, superior
    "LAD": ((0.52, -0.75), (-82.0, -15.0)),
    "LCX": ((0.50, 0.05), (-70.0, 75.0)),
    "RCA": ((0.58, -0.65), (-132.0, -228.0)),
}


@dataclass
class Scan:
    """Geometry and anatomy parameters of one synthetic scan (all lengths in mm).

    Attributes:
        kind: "gated" (cardiac field of view, 2.5-3 mm) or "nongated" (whole chest, 5 mm).
        size: image rows = columns.
        pixel_mm: in-plane spacing (rows and columns), mm.
        thickness_mm: slice thickness = z step, mm.
        z_mm: [Z] frame z of each slice, ascending.
        x0_mm, y0_mm: frame coordinates of the centre of pixel (0, 0).
        noise_hu: standard deviation of the added noise, HU.
        p: anatomy parameters (name -> float).
        rib_phase: per-side rib angle phase, degrees.
        aortic_calc: slices -> (angle, semi-axes, peak) of the aortic wall spot.
    """

    kind: str
    size: int
    pixel_mm: float
    thickness_mm: float
    z_mm: np.ndarray
    x0_mm: float
    y0_mm: float
    noise_hu: float
    p: dict[str, float]
    rib_phase: float
    aortic_calc: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)


def sample_scan(
    rng: np.random.Generator,
    kind: str,
    size: int,
    n_slices: int,
    thickness_mm: float,
    *,
    aortic_calcium_p: float = 0.45,
    cardiac_fov_mm: tuple[float, float] | None = None,
) -> Scan:
    """Draws one patient's geometry and anatomy.

    Args:
        rng: the patient's generator.
        kind: "gated" or "nongated".
        size: image side, pixels (the field of view is fixed in mm, so the spacing is
            field / size and the anatomy fills the image whatever the size).
        n_slices: number of slices.
        thickness_mm: slice thickness and z step, mm.
        aortic_calcium_p: probability of a calcified spot on the aortic wall.
        cardiac_fov_mm: gated scans only: (min, max) field of a targeted reconstruction,
            mm. The field maps the cardiac field's draw linearly onto this range and is
            centred on the heart's mid-slice centre, give or take 4 mm per axis; the
            generator draws the same numbers as without it, so a patient keeps its
            anatomy. None: the cardiac field (165-240 mm).

    Raises:
        ValueError: unknown kind, size < 16, no slices or a bad ``cardiac_fov_mm``.
    """
    if kind not in ("gated", "nongated"):
        raise ValueError(f"kind must be 'gated' or 'nongated', got {kind!r}")
    if size < 16 or n_slices < 1:
        raise ValueError(f"size must be >= 16 and n_slices >= 1, got {size}, {n_slices}")
    if cardiac_fov_mm is not None and not 0 < cardiac_fov_mm[0] <= cardiac_fov_mm[1]:
        raise ValueError(f"cardiac_fov_mm must be (min, max) with 0 < min <= max: {cardiac_fov_mm}")
    u = rng.uniform
    a, b = u(140, 185), u(95, 130)
    fat, muscle = u(8, 28), u(7, 14)
    ac, bc = a - fat - muscle - 4, b - fat - muscle - 10
    p = {"a": a, "b": b, "fat": fat, "muscle": muscle, "ac": ac, "bc": bc, "cy": -6.0}
    p["rv"] = u(15, 19)  # vertebral body radius
    p["yv"] = p["cy"] + bc - 0.4 * p["rv"]
    p["rx"], p["ry"], p["rz"] = u(48, 60), u(38, 48), u(55, 68)  # heart radii
    p["phi"] = math.radians(u(-48, -28))  # heart long axis, left-anterior
    p["hx"] = u(14, 30)
    p["hy"] = p["cy"] - bc + p["ry"] + u(12, 20)
    p["pf"] = u(5.0, 8.0)  # pericardial fat thickness
    p["rd"] = u(10, 13.5)  # descending aorta radius
    p["ra"] = u(13, 17)  # ascending aorta radius
    p["lung_hu"] = u(-880, -830)
    p["cortex"], p["marrow"] = u(650, 1000), u(200, 320)  # bone HU
    # field of view: cardiac for gated scans, whole chest for non-gated ones.
    if kind == "gated":
        fov = float(np.round(u(165, 240)))
        jx, jy = u(-8, 8), u(-8, 8)
        if cardiac_fov_mm is None:
            cx, cy = p["hx"] * 0.55 + jx, p["hy"] + 0.45 * p["ry"] + jy
        else:
            lo, hi = cardiac_fov_mm
            fov = float(np.round(lo + (fov - 165.0) / 75.0 * (hi - lo)))
            cx, cy = p["hx"] + 0.5 * jx, p["hy"] + 0.5 * jy
        cover = n_slices * thickness_mm
        if cover >= 2 * p["rz"] + 10:
            z_bottom = -p["rz"] - u(0, min(15.0, cover - 2 * p["rz"] - 5))
        else:
            z_bottom = -0.45 * cover
    else:
        fov = float(np.round(u(330, 440)))
        cx, cy = u(-10, 10), u(-10, 10)
        z_bottom = -u(0.35, 0.45) * n_slices * thickness_mm
    pixel_mm = round(fov / size, 6)
    z_mm = z_bottom + thickness_mm * np.arange(n_slices, dtype=np.float64)
    scan = Scan(
        kind=kind,
        size=size,
        pixel_mm=pixel_mm,
        thickness_mm=thickness_mm,
        z_mm=z_mm,
        x0_mm=cx - (size - 1) / 2 * pixel_mm,
        y0_mm=cy - (size - 1) / 2 * pixel_mm,
        noise_hu=float(u(10, 20)),
        p=p,
        rib_phase=float(u(0, 360)),
    )
    if rng.random() < aortic_calcium_p:  # aortic wall spot: a distractor
        k0, n = int(rng.integers(0, n_slices)), int(rng.integers(1, 5))
        gam = math.radians(u(-60, 120))
        for k in range(k0, min(k0 + n, n_slices)):
            scan.aortic_calc[k] = (gam, u(1.5, 3.0), u(0.9, 1.5), u(220, 700))
    return scan


def heart_at(scan: Scan, k: int) -> tuple[float, float, float, float, float]:
    """Heart cross-section on slice k: (cx, cy, A, B, u), A/B its in-plane semi-axes."""
    p = scan.p
    u = float(scan.z_mm[k]) / p["rz"]
    s = math.sqrt(max(0.0, 1.0 - u * u))
    return p["hx"] - 12.0 * u, p["hy"] + 6.0 * u, p["rx"] * s, p["ry"] * s, u


def vessel_point(scan: Scan, vessel: str, k: int, tau: float) -> tuple[float, float] | None:
    """Frame (x, y) mm of `vessel` at path fraction `tau` on slice k, or None off the heart."""
    cx, cy, a, b, _ = heart_at(scan, k)
    if a < 0.35 * scan.p["rx"]:
        return None
    (_, _), (al0, al1) = PATHS[vessel]
    beta = math.radians(al0 + (al1 - al0) * tau) - scan.p["phi"]
    d = 0.5 * scan.p["pf"]
    xr, yr = (a + d) * math.cos(beta), (b + d) * math.sin(beta)
    c, s = math.cos(scan.p["phi"]), math.sin(scan.p["phi"])
    return cx + xr * c - yr * s, cy + xr * s + yr * c


def tau_on_slice(scan: Scan, vessel: str, k: int) -> float | None:
    """Path fraction of `vessel` on slice k (clipped to [0, 1]), or None off its z range."""
    (u0, u1), _ = PATHS[vessel]
    u = float(scan.z_mm[k]) / scan.p["rz"]
    tau = (u - u0) / (u1 - u0)
    half = 0.5 * scan.thickness_mm / scan.p["rz"] / abs(u1 - u0)  # slab half-width
    if tau < -half or tau > 1 + half:
        return None
    return min(max(tau, 0.0), 1.0)


def paint(
    img: np.ndarray,
    scan: Scan,
    cx: float,
    cy: float,
    a: float,
    b: float,
    value: float | np.ndarray,
    angle: float = 0.0,
    below: float | None = None,
) -> None:
    """Sets the pixels of an ellipse (frame mm) to `value`, touching only its bounding box.

    `below`: only pixels currently below this HU are painted (e.g. lung-only vessels).
    A [H, 1] array `value` is broadcast over the rows of the box.
    """
    sp, n = scan.pixel_mm, scan.size
    r = max(a, b)
    c0, c1 = int((cx - r - scan.x0_mm) / sp) - 1, int((cx + r - scan.x0_mm) / sp) + 2
    r0, r1 = int((cy - r - scan.y0_mm) / sp) - 1, int((cy + r - scan.y0_mm) / sp) + 2
    c0, c1, r0, r1 = max(c0, 0), min(c1, n), max(r0, 0), min(r1, n)
    if c0 >= c1 or r0 >= r1 or a <= 0 or b <= 0:
        return
    xx = (scan.x0_mm + sp * np.arange(c0, c1, dtype=np.float32) - cx)[None, :]
    yy = (scan.y0_mm + sp * np.arange(r0, r1, dtype=np.float32) - cy)[:, None]
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        xx, yy = xx * c + yy * s, yy * c - xx * s
    m = (xx / a) ** 2 + (yy / b) ** 2 <= 1.0
    win = img[r0:r1, c0:c1]
    if below is not None:
        m &= win < below
    if isinstance(value, np.ndarray):
        value = np.broadcast_to(value[r0:r1], win.shape)[m]
    win[m] = value


def anatomy_slice(scan: Scan, k: int, rng: np.random.Generator) -> np.ndarray:
    """Noise-free HU of slice k without plaques: float32 [H, W]."""
    p, n = scan.p, scan.size
    z = float(scan.z_mm[k])
    img = np.full((n, n), -1000.0, np.float32)
    a, b, cy, ac, bc = p["a"], p["b"], p["cy"], p["ac"], p["bc"]
    paint(img, scan, 0.0, 0.0, a, b, -100.0)  # subcutaneous fat
    paint(img, scan, 0.0, 0.0, a - p["fat"], b - p["fat"], 45.0)  # muscle
    ys = scan.y0_mm + scan.pixel_mm * np.arange(n, dtype=np.float32)
    lung = (p["lung_hu"] + 45.0 * (ys - cy) / bc)[:, None]  # denser posteriorly
    paint(img, scan, 0.0, cy, ac, bc, lung)
    rz, yv, rv = p["rz"], p["yv"], p["rv"]
    for side, dz in ((-1.0, 0.0), (1.0, -18.0)):  # liver (right), spleen (left) domes
        zc, rzl = -0.6 * rz - 55.0 + dz, 75.0
        s = 1.0 - ((z - zc) / rzl) ** 2
        if s > 0:
            f, organ_hu = math.sqrt(s), 58.0 if side < 0 else 50.0
            xo, ao, bo = side * 0.38 * ac, 0.72 * ac * f, 0.85 * bc * f
            paint(img, scan, xo, cy + 0.1 * bc, ao, bo, organ_hu, below=-500)
    for _ in range(int(rng.integers(10, 22))):  # lung vessels
        t, r = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0.05, 0.9))
        d = rng.uniform(0.6, 2.2)
        v = float(rng.uniform(-120, 30))
        paint(img, scan, ac * r * math.cos(t), cy + bc * r * math.sin(t), d, d, v, below=-500)
    paint(img, scan, 0.0, cy - 0.35 * bc, 24.0, 0.62 * bc, -90.0, below=-500)  # mediastinum
    paint(img, scan, 0.0, yv, rv + 10.0, rv + 8.0, 40.0)  # posterior mediastinum
    paint(img, scan, 4.0, yv - rv - 8.0, 6.0, 5.0, 35.0)  # oesophagus
    u = z / rz
    if u > 1.35:  # trachea
        paint(img, scan, -2.0, yv - rv - 22.0, 11.0, 10.0, 30.0)
        paint(img, scan, -2.0, yv - rv - 22.0, 9.0, 8.0, -1000.0)
    cx_h, cy_h, ah, bh, _ = heart_at(scan, k)
    if ah > 1.0:
        paint(img, scan, cx_h, cy_h, ah + p["pf"], bh + p["pf"], -90.0, p["phi"])
        paint(img, scan, cx_h, cy_h, ah, bh, 40.0, p["phi"])
        for vessel in VESSELS:
            tau = tau_on_slice(scan, vessel, k)
            pt = None if tau is None else vessel_point(scan, vessel, k, tau)
            if pt is not None:
                paint(img, scan, pt[0], pt[1], 1.7, 1.7, 35.0)
    xa, ya = p["hx"] - 32.0, p["hy"] - 10.0
    if 0.3 < u < 1.6:  # ascending aorta with its fat rim, pulmonary trunk
        paint(img, scan, xa, ya, p["ra"] + 2.5, p["ra"] + 2.5, -90.0)
        paint(img, scan, xa, ya, p["ra"], p["ra"], 45.0)
        if 0.6 < u < 1.3:
            paint(img, scan, xa + 27.0, ya - 10.0, 15.0, 15.0, -90.0)
            paint(img, scan, xa + 27.0, ya - 10.0, 12.5, 12.5, 35.0)
    xd, yd = 0.6 * rv + p["rd"] + 2.0, yv - 0.9 * rv
    if 1.6 <= u < 2.05:  # aortic arch
        for t in np.linspace(0.0, 1.0, 9):
            paint(img, scan, xa + t * (xd - xa), ya + t * (yd - ya), p["rd"], p["rd"], 45.0)
    elif u >= 2.05:  # great vessels above the arch
        for t, r in ((0.1, 7.0), (0.45, 5.5), (0.75, 6.0)):
            paint(img, scan, xa + t * (xd - xa), ya + t * (yd - ya) - 8.0, r, r, 40.0)
    paint(img, scan, xd, yd, p["rd"], p["rd"], 45.0)  # descending aorta
    if k in scan.aortic_calc:
        gam, sa, sb, pk = scan.aortic_calc[k]
        paint(
            img,
            scan,
            xd + p["rd"] * math.cos(gam),
            yd + p["rd"] * math.sin(gam),
            sa,
            sb,
            pk,
            gam + math.pi / 2,
        )
    # bone (never labelled): spine, sternum, ribs
    cortex, marrow = p["cortex"], p["marrow"]
    for sx in (-1.0, 1.0):
        paint(img, scan, sx * (rv + 12.0), yv + rv + 10.0, 24.0, 19.0, 45.0)  # paraspinal
        paint(img, scan, sx * 16.0, yv + rv + 8.0, 9.0, 4.0, 0.9 * cortex)  # transverse
    paint(img, scan, 0.0, yv + rv + 8.0, 12.0, 11.0, 0.85 * cortex)  # vertebral arch
    paint(img, scan, 0.0, yv + rv + 24.0, 4.0, 10.0, 0.85 * cortex)  # spinous process
    paint(img, scan, 0.0, yv + rv + 7.0, 7.0, 7.0, 20.0)  # spinal canal
    paint(img, scan, 0.0, yv, 1.1 * rv, rv, cortex)  # vertebral body
    paint(img, scan, 0.0, yv, 1.1 * rv - 2.0, rv - 2.0, marrow)
    ys_ = cy - bc - 5.0
    paint(img, scan, 0.0, ys_, 13.0, 6.0, 0.9 * cortex)  # sternum
    paint(img, scan, 0.0, ys_, 11.0, 4.0, marrow)
    for i in range(14):  # ribs: sections that rotate with z as the ribs slope
        psi = math.radians((scan.rib_phase + 0.9 * z + 26.0 * i) % 360.0)
        deg = math.degrees(psi)
        if abs(deg - 270.0) < 28.0 or abs(deg - 90.0) < 24.0:  # sternum, spine
            continue
        x, y = (ac + 6.0) * math.cos(psi), cy + (bc + 6.0) * math.sin(psi)
        tang = math.atan2(bc * math.cos(psi), -ac * math.sin(psi))
        paint(img, scan, x, y, 6.0, 3.5, cortex, tang)
        paint(img, scan, x, y, 4.0, 1.8, marrow, tang)
    return img
