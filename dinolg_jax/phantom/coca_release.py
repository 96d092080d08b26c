"""A synthetic COCA release: the project's embedded default data.

`make_release` writes the layout and formats of ``docs/coca_format.md`` exactly, so the
real reader (`dinolg_jax.data.coca`) is what the tests and the demo exercise::

    <out>/Gated_release_final/patient/<pid>/<protocol folder>/IM-<ssss>-<nnnn>.dcm
    <out>/Gated_release_final/calcium_xml/<pid>.xml          (Apple plist 1.0)
    <out>/deidentified_nongated/<n>/<n>/IM-0001-<nnnn>.dcm
    <out>/deidentified_nongated/scores.xlsx                  (column "filename ")
    <out>/truth.json

Anatomy comes from `anatomy`, plaques and labels from `calcium`, the file formats
from `file_formats`. The label of a slice is what the reader reconstructs
from the written XML (polygon of ``Point_px`` with HU >= 130), and truth.json holds the
Agatston scores of those labels computed by `dinolg_jax.scoring.agatston.agatston`
(its default convention) on the stored HU.

The traps of the real release, by gated patient id (independent of the release size):
- ``pid % 6 == 1``: a duplicate copy of the series in the same folder (same z and
  pixels, other SeriesInstanceUID, files IM-0002-*) and a one-slice scout;
- ``pid % 6 == 4``: a scout and a short extra series (first 5 slices, other UID);
- ``pid % 6 == 2``: a file without SeriesInstanceUID (IM-0009-0001.dcm);
- ``pid % 6 in (2, 5)``: InstanceNumber 1 = most inferior slice (everyone else: most
  superior, so ImageIndex runs against file order);
- ``pid % 8 == 5``: 2.5 mm slices; ``pid % 25 == 3``: a junk-named ROI (around bone);
- empty placeholder ROIs at random (about a fifth of the ROIs);
- calcium-free patients (``pid % 20 in (2, 12)``) have no XML file, and one extra
  patient, ``pid = n_gated``, has an XML file but no DICOM folder (``has_dicom`` false);
- non-gated files have no SeriesInstanceUID / StudyInstanceUID; in scores.xlsx the
  total of study "0A" is not its vessel sum (``total_mismatch``).

Headers carry fake but distinctive names, IDs, dates and institution (truth.json
``phi_markers``) so outputs can be grepped for them. Deterministic: patient `pid`
draws from ``np.random.default_rng([seed, pid])`` (non-gated study n from
``[seed, n, 7]``), so a patient is the same whatever the release size or the number of
workers, and the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import plistlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dinolg_jax.phantom import anatomy, calcium, file_formats
from dinolg_jax.scoring.agatston import agatston, risk_category

GATED_DIR = "Gated_release_final"
NONGATED_DIR = "deidentified_nongated"
PROTOCOLS = (
    "Pro_Gated_CS_3.0_I30f_3_70%",
    "Pro_Gated_Calcium_Score_(CS)_3.0_Qr36_2",
    "PRO_GATED_CALCIUM_SCORE",
    "CaScore_Gated_3.0_B35f_75%",
    "CARDIAC_CALCIUM_SCORE_3MM",
)
PROTOCOL_25 = "SmartScore_Gated_2.5mm_STND"
SCOUT_FOLDER = "Topogram_0.6_T20s"
INSTITUTION = file_formats.INSTITUTION
CONVENTION = {
    "function": "dinolg_jax.scoring.agatston.agatston",
    "threshold_hu": 130,
    "connectivity": 4,
    "min_area_mm2": 1.0,
    "thickness_normalisation": True,
    "labels": "skimage.draw.polygon(Point_px: rows = y, cols = x) & stored HU >= 130",
}


def _scores(hu: np.ndarray, labels: np.ndarray, scan: anatomy.Scan) -> dict[str, Any]:
    res = agatston(hu, labels, (scan.pixel_mm, scan.pixel_mm), scan.thickness_mm)
    out: dict[str, Any] = {v: res.per_vessel[v] for v in anatomy.VESSELS}
    out["total"] = res.total
    out["volume_mm3"] = res.volume_mm3
    out["n_lesions"] = len(res.lesions)
    out["category_paper4"] = risk_category(res.total, scheme="paper4")
    out["category_standard5"] = risk_category(res.total, scheme="standard5")
    flat = labels.reshape(len(labels), -1)
    out["calcified_slices"] = np.flatnonzero(flat.max(axis=1) > 0).tolist()
    out["n_calcium_pixels"] = int(np.count_nonzero(flat))
    return out


def _volume(
    rng: np.random.Generator,
    kind: str,
    size: int,
    slices: tuple[int, int],
    category: str,
    thickness_mm: float,
    cardiac_fov_mm: tuple[float, float] | None = None,
) -> tuple[anatomy.Scan, np.ndarray, np.ndarray, list[calcium.Plaque]]:
    n_slices = int(rng.integers(slices[0], slices[1] + 1))
    scan = anatomy.sample_scan(
        rng,
        kind,
        size,
        n_slices,
        thickness_mm,
        aortic_calcium_p=0.0 if category == "zero" else 0.45,
        cardiac_fov_mm=cardiac_fov_mm,
    )
    plaques, _ = calcium.plan_plaques(rng, scan, category)
    hu, labels, plaques = calcium.render(scan, plaques, rng)
    return scan, hu, labels, plaques


def _xml_images(
    rng: np.random.Generator,
    pid: int,
    scan: anatomy.Scan,
    hu: np.ndarray,
    plaques: list[calcium.Plaque],
    ipp_xy: tuple[float, float],
    z_world: np.ndarray,
) -> tuple[list[dict[str, Any]], int, int]:
    """The XML's ``Images``: one entry per annotated slice (z-ascending ImageIndex).

    Besides the plaques' ROIs: empty placeholders (after about a quarter of the ROIs, and
    sometimes alone on a slice) and, for ``pid % 25 == 3``, a junk-named outline around
    the sternum (bone above 130 HU that a reader must not label).

    Returns:
        (images, number of empty placeholders, number of junk-named ROIs).
    """
    sp, size = scan.pixel_mm, scan.size
    images: dict[int, list[dict[str, Any]]] = {}
    centre_mm = (ipp_xy[0] + sp * (size - 1) / 2, ipp_xy[1] + sp * (size - 1) / 2)

    def add(k: int, name: str, outline: np.ndarray | None) -> None:
        ipp = (ipp_xy[0], ipp_xy[1], float(z_world[k]))
        rois = images.setdefault(k, [])
        rois.append(file_formats.roi_dict(name, outline, hu[k], ipp, sp, len(rois), centre_mm))

    n_empty = n_junk = 0
    for q in plaques:
        add(q.slice, calcium.ROI_NAMES[q.vessel], q.outline_px)
        if rng.random() < 0.25:
            add(q.slice, calcium.ROI_NAMES[anatomy.VESSELS[int(rng.integers(4))]], None)
            n_empty += 1
    if images and rng.random() < 0.3:  # a placeholder alone on an otherwise empty slice
        free = [k for k in range(len(hu)) if k not in images]
        if free:
            add(free[int(rng.integers(len(free)))], calcium.ROI_NAMES["LAD"], None)
            n_empty += 1
    if images and pid % 25 == 3:
        p = scan.p
        row, col = (p["cy"] - p["bc"] - 5.0 - scan.y0_mm) / sp, -scan.x0_mm / sp
        if not (2 < row < size - 3 and 2 < col < size - 3):  # sternum out of view: spine
            row = (p["yv"] - scan.y0_mm) / sp
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        r = 7.0 / sp + 1.0
        outline = np.stack([col + r * np.cos(t), row + 0.6 * r * np.sin(t)], axis=1)
        outline = np.unique(np.clip(np.round(outline), 0, size - 1), axis=0)
        order = np.argsort(np.arctan2(outline[:, 1] - row, outline[:, 0] - col))
        add(min(images), ("Unnamed", "1")[int(rng.integers(2))], outline[order] + 0.004)
        n_junk += 1
    entries = [
        {"ImageIndex": k, "NumberOfROIs": len(images[k]), "ROIs": images[k]} for k in sorted(images)
    ]
    return entries, n_empty, n_junk


def _write_gated_dicom(
    folder: Path,
    pid: int,
    hu: np.ndarray,
    protocol: str,
    series_number: int,
    superior_first: bool,
    uid: Any,
    **kw: Any,
) -> list[str]:
    """Writes the patient's series and its traps; returns the traps' names."""
    traps = []
    main = dict(superior_first=superior_first, **kw)
    file_formats.write_series(
        folder / protocol, hu, series_idx=1, series_uid=uid(3), series_number=series_number, **main
    )
    if pid % 6 == 1:  # a second copy of the series at the same z
        file_formats.write_series(
            folder / protocol,
            hu,
            series_idx=2,
            series_uid=uid(4),
            series_number=series_number + 1,
            **main,
        )
        traps.append("duplicate_series")
    if pid % 6 in (1, 4):  # a one-slice scout
        scout = dict(kw, common=dict(kw["common"], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
        file_formats.write_series(
            folder / SCOUT_FOLDER,
            hu,
            series_idx=3,
            superior_first=True,
            series_uid=uid(5),
            series_number=1,
            slice_ids=[len(hu) // 2],
            **scout,
        )
        traps.append("scout")
    if pid % 6 == 4 and len(hu) > 3:  # a short extra series
        file_formats.write_series(
            folder / f"{protocol}_short",
            hu,
            series_idx=4,
            superior_first=True,
            series_uid=uid(6),
            series_number=series_number + 2,
            slice_ids=list(range(min(5, len(hu) - 1))),
            **kw,
        )
        traps.append("short_series")
    if pid % 6 == 2:  # a stray file without SeriesInstanceUID
        file_formats.write_series(
            folder / protocol,
            hu,
            series_idx=9,
            superior_first=True,
            series_uid=None,
            series_number=99,
            slice_ids=[0],
            **kw,
        )
        traps.append("file_without_series_uid")
    return traps


def _gated_patient(
    out: Path,
    seed: int,
    pid: int,
    size: int,
    slices: tuple[int, int],
    has_dicom: bool,
    cardiac_fov_mm: tuple[float, float] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Generates and writes gated patient `pid`; returns (truth entry, fake PHI)."""
    rng = np.random.default_rng([seed, pid])
    category = calcium.CATEGORY_PATTERN[pid % 20]
    if not has_dicom and category == "zero":
        category = "moderate"  # the XML-only patient needs an XML
    thickness = 2.5 if pid % 8 == 5 else 3.0
    protocol = PROTOCOL_25 if thickness == 2.5 else PROTOCOLS[int(rng.integers(len(PROTOCOLS)))]
    kvp = int(rng.choice([120, 100, 80], p=[0.8, 0.12, 0.08]))
    phi = file_formats.fake_phi(rng, f"{seed:02d}{pid:04d}")
    scan, hu, labels, plaques = _volume(
        rng, "gated", size, slices, category, thickness, cardiac_fov_mm
    )
    wx, wy = float(rng.uniform(-30, 30)), float(rng.uniform(-200, -120))
    ipp_xy = (round(scan.x0_mm + wx, 4), round(scan.y0_mm + wy, 4))
    z0 = math.floor((scan.z_mm[0] + rng.uniform(-260, -140)) * 4) / 4
    z_world = z0 + thickness * np.arange(len(hu))
    superior_first = pid % 6 not in (2, 5)
    traps = [] if superior_first else ["instance_one_inferior"]

    images, n_empty, n_junk = _xml_images(rng, pid, scan, hu, plaques, ipp_xy, z_world)
    if n_junk:
        traps.append("junk_roi")
    if images:
        with open(out / GATED_DIR / "calcium_xml" / f"{pid}.xml", "wb") as f:
            plistlib.dump({"Images": images}, f, fmt=plistlib.FMT_XML, sort_keys=True)
    common = file_formats.common_header(
        rng,
        scan,
        phi,
        kvp=kvp,
        protocol=protocol,
        gated=True,
        study_uid=file_formats.uid(seed, pid, 1, valid=False),
        frame_uid=file_formats.uid(seed, pid, 2, valid=False),
    )
    series_number = int(rng.choice([2, 3, 4, 201]))
    if has_dicom:
        traps += _write_gated_dicom(
            out / GATED_DIR / "patient" / str(pid),
            pid,
            hu,
            protocol,
            series_number,
            superior_first,
            lambda k: file_formats.uid(seed, pid, k, valid=False),
            seed=seed,
            key=pid,
            common=common,
            ipp_xy=ipp_xy,
            z_world=z_world,
        )
    else:
        traps.append("xml_without_dicom")
    truth = _scores(hu, labels, scan)
    truth.update(
        n_rois=len(plaques),
        n_empty_rois=n_empty,
        n_junk_rois=n_junk,
        has_dicom=has_dicom,
        has_xml=bool(images),
        n_slices=len(hu),
        pixel_mm=scan.pixel_mm,
        slice_thickness_mm=thickness,
        kvp=kvp,
        category_drawn=category,
        instance_one="superior" if superior_first else "inferior",
        series_folder=protocol if has_dicom else None,
        traps=traps,
    )
    return truth, phi


def nongated_name(n: int) -> str:
    """Id of non-gated study n in scores.xlsx (``"12A"`` names folder ``12``)."""
    return f"{n}A"


def _nongated_study(
    out: Path, seed: int, n: int, size: int, slices: tuple[int, int]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Generates and writes non-gated study `n` (no UIDs, no labels written)."""
    rng = np.random.default_rng([seed, n, 7])
    category = calcium.CATEGORY_PATTERN[(7 * n + 3) % 20]
    phi = file_formats.fake_phi(rng, f"{seed:02d}N{n:03d}")
    scan, hu, labels, _ = _volume(rng, "nongated", size, slices, category, 5.0)
    ipp_xy = (round(scan.x0_mm + rng.uniform(-20, 20), 4), round(scan.y0_mm - 150.0, 4))
    z0 = math.floor((scan.z_mm[0] + rng.uniform(-400, -250)) * 4) / 4
    z_world = z0 + 5.0 * np.arange(len(hu))
    common = file_formats.common_header(
        rng,
        scan,
        phi,
        kvp=120,
        protocol="CHEST_ROUTINE",
        study_uid=None,
        frame_uid=file_formats.uid(seed, n, 902),
        gated=False,
    )
    superior_first = bool(rng.random() < 0.5)
    file_formats.write_series(
        out / NONGATED_DIR / str(n) / str(n),
        hu,
        series_idx=1,
        seed=seed,
        key=100000 + n,
        common=common,
        ipp_xy=ipp_xy,
        z_world=z_world,
        superior_first=superior_first,
        series_uid=None,
        series_number=2,
    )
    truth = _scores(hu, labels, scan)
    truth.update(
        folder=str(n),
        n_slices=len(hu),
        pixel_mm=scan.pixel_mm,
        slice_thickness_mm=5.0,
        category_drawn=category,
        instance_one="superior" if superior_first else "inferior",
    )
    return truth, phi


def _task(args: tuple) -> tuple[str, Any, dict[str, Any], dict[str, str]]:
    kind, out, seed, key, size, slices, has_dicom, cardiac_fov_mm = args
    if kind == "gated":
        truth, phi = _gated_patient(Path(out), seed, key, size, slices, has_dicom, cardiac_fov_mm)
    else:
        truth, phi = _nongated_study(Path(out), seed, key, size, slices)
    return kind, key, truth, phi


def make_release(
    out: str | os.PathLike,
    *,
    n_gated: int = 8,
    n_nongated: int = 2,
    seed: int = 0,
    size: int = 512,
    slices: tuple[int, int] = (34, 60),
    workers: int = 1,
    cardiac_fov_mm: tuple[float, float] | None = None,
) -> dict:
    """Writes a synthetic COCA release under `out` and returns its truth.

    Re-running into the same `out` replaces the two release folders and truth.json of
    the earlier phantom (nothing else under `out` is touched); a release folder without
    the phantom's truth.json next to it is never deleted.

    Args:
        out: release root.
        n_gated: gated patients with DICOM (pids 0..n_gated-1); one more patient,
            ``pid = n_gated``, gets an XML file and no DICOM folder.
        n_nongated: non-gated studies (folders 0..n_nongated-1, ids "0A", "1A", ...).
        seed: everything is a function of it (same seed -> same bytes).
        size: image rows = columns (the field of view is fixed in mm, so small sizes
            give coarse pixels; 512 is the real size).
        slices: (min, max) slices per series, inclusive.
        workers: processes generating patients in parallel (same bytes for any value).
        cardiac_fov_mm: (min, max) field of view of the gated scans' targeted
            reconstruction, mm (`anatomy.sample_scan`): a heart-centred field, so coarse
            sizes keep the lesions several pixels wide. None: the cardiac field of
            165-240 mm (the release's bytes do not change). Non-gated scans keep theirs.

    Returns:
        The truth dict written to ``<out>/truth.json``: ``seed``, ``convention``,
        ``gated`` {str(pid): scores RCA/LAD/LCA/LCX/total, categories,
        ``calcified_slices`` (z-ascending indices), ``n_rois``, ``has_dicom``,
        ``has_xml``, geometry, traps}, ``nongated`` {id: scores as written to
        scores.xlsx, plus ``xlsx_total`` and ``total_mismatch``}, ``phi_markers``.

    Raises:
        ValueError: on a non-positive count, size < 16 or a bad slice range.
        FileExistsError: `out` holds a release that this module did not write.
    """
    if n_gated < 1 or n_nongated < 0 or workers < 1:
        raise ValueError(
            f"need n_gated >= 1, n_nongated >= 0, workers >= 1; got "
            f"{n_gated}, {n_nongated}, {workers}"
        )
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    lo, hi = (int(s) for s in slices)
    if not 1 <= lo <= hi:
        raise ValueError(f"slices must be (min, max) with 1 <= min <= max, got {slices}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    old = [root / name for name in (GATED_DIR, NONGATED_DIR) if (root / name).exists()]
    if old and not (root / "truth.json").is_file():
        raise FileExistsError(
            f"{root} already holds {[p.name for p in old]} without a phantom truth.json: "
            "refusing to overwrite what may be a real release"
        )
    for path in old:
        shutil.rmtree(path)
    (root / GATED_DIR / "patient").mkdir(parents=True)
    (root / GATED_DIR / "calcium_xml").mkdir(parents=True)
    (root / NONGATED_DIR).mkdir(parents=True)
    fov = None if cardiac_fov_mm is None else tuple(float(v) for v in cardiac_fov_mm)
    tasks = [
        ("gated", str(root), seed, pid, size, (lo, hi), pid < n_gated, fov)
        for pid in range(n_gated + 1)
    ]
    tasks += [
        ("nongated", str(root), seed, n, size, (lo, hi), True, None) for n in range(n_nongated)
    ]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = list(pool.imap(_task, tasks, chunksize=1))
    else:
        results = [_task(t) for t in tasks]

    truth: dict[str, Any] = {
        "seed": seed,
        "size": size,
        "slices": [lo, hi],
        "convention": CONVENTION,
        "gated": {},
        "nongated": {},
    }
    if fov is not None:  # only when set: a default release keeps its bytes
        truth["cardiac_fov_mm"] = list(fov)
    markers: list[str] = [INSTITUTION]
    rows = []
    for kind, key, entry, phi in results:
        for field_ in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate"):
            if phi[field_] not in markers:
                markers.append(phi[field_])
        if kind == "gated":
            truth["gated"][str(key)] = entry
            continue
        name = nongated_name(key)
        for v in (*anatomy.VESSELS, "total"):  # the sheet holds 3 decimals
            entry[v] = round(entry[v], 3)
        written = entry["total"]
        if key == 0:  # as in the real sheet: one total that is not the vessel sum
            written = round(entry["total"] + 12.5, 3)
        entry["xlsx_total"] = written
        entry["total_mismatch"] = key == 0
        truth["nongated"][name] = entry
        rows.append([name, entry["LCA"], entry["LAD"], entry["LCX"], entry["RCA"], written])
    truth["phi_markers"] = markers
    file_formats.write_xlsx(root / NONGATED_DIR / "scores.xlsx", rows)
    tmp = root / "truth.json.tmp"
    tmp.write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    tmp.replace(root / "truth.json")
    return truth
