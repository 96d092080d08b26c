"""Flipped and swapped copies of a phantom study: same world-space labels, same Agatston.

``flip_study`` rewrites a phantom-written patient (its DICOM pixels,
ImageOrientationPatient, ImagePositionPatient, PixelSpacing and its calcium XML's
``Point_px``) as a scanner storing the same anatomy flipped or swapped would; reading
the copy must give back the canonical study voxel for voxel.
"""

from __future__ import annotations

import plistlib
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dinolg_jax.data import coca, orientation
from dinolg_jax.inference import nifti
from dinolg_jax.phantom import coca_release
from dinolg_jax.scoring import agatston

# name -> (new ImageOrientationPatient, pixel permutation, point map (x, y, W, H) -> (x', y'))
FLIPS = {
    "rot180": ((-1, 0, 0, 0, -1, 0), lambda a: a[::-1, ::-1],
               lambda x, y, w, h: (w - 1 - x, h - 1 - y)),
    "mirror": ((-1, 0, 0, 0, 1, 0), lambda a: a[:, ::-1], lambda x, y, w, h: (w - 1 - x, y)),
    "swapped": ((0, 1, 0, 1, 0, 0), lambda a: a.T, lambda x, y, w, h: (y, x)),
}  # fmt: skip
_POINT = re.compile(r"\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\)")


def flip_study(src: Path, dst: Path, pid: int, how: str) -> None:
    """Writes patient ``pid`` of release ``src`` into release ``dst``, stored ``how``."""
    iop, permute, move = FLIPS[how]
    base = Path(coca.GATED_DIR)
    shutil.copytree(src / base / "patient" / str(pid), dst / base / "patient" / str(pid))
    for path in sorted((dst / base / "patient" / str(pid)).rglob("*.dcm")):
        with pydicom.config.disable_value_validation():
            ds = pydicom.dcmread(path)
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            stored = ds.pixel_array
            h, w = stored.shape
            rs, cs = (float(v) for v in ds.PixelSpacing)
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            # The new first voxel is the old voxel that the permutation moves to (0, 0).
            c0, r0 = move(0.0, 0.0, w, h) if how != "swapped" else (0.0, 0.0)
            ds.ImagePositionPatient = [x + c0 * cs, y + r0 * rs, z]
            ds.ImageOrientationPatient = list(iop)
            new = np.ascontiguousarray(permute(stored))
            ds.Rows, ds.Columns = new.shape
            if how == "swapped":
                ds.PixelSpacing = [cs, rs]
            ds.PixelData = new.tobytes()
            ds.save_as(path, enforce_file_format=True)
    xml = src / base / "calcium_xml" / f"{pid}.xml"
    data = plistlib.loads(xml.read_bytes())
    size = (w, h)
    for image in data["Images"]:
        for roi in image.get("ROIs", []):
            points = []
            for text in roi.get("Point_px", []):
                px, py = (float(v) for v in _POINT.fullmatch(text.strip()).groups())
                nx, ny = move(px, py, *size)
                points.append(f"({nx:f}, {ny:f})")
            roi["Point_px"] = points
    (dst / base / "calcium_xml").mkdir(parents=True, exist_ok=True)
    (dst / base / "calcium_xml" / f"{pid}.xml").write_bytes(plistlib.dumps(data))


@pytest.fixture(scope="module")
def calcified(tmp_path_factory):
    """A phantom release and one of its patients with calcium on several slices."""
    root = tmp_path_factory.mktemp("release")
    truth = coca_release.make_release(root, n_gated=4, n_nongated=0, seed=5, size=64, slices=(6, 8))
    pid = next(
        int(p)
        for p, t in truth["gated"].items()
        if t["has_dicom"] and t["has_xml"] and t["total"] > 0
    )
    return root, pid, truth["gated"][str(pid)]


def _world_labels(study: coca.Study) -> set[tuple]:
    k, r, c = np.nonzero(study.labels)
    world = np.round(study.geometry.world_mm(k, r, c), 3)
    return {(*map(float, p), int(v)) for p, v in zip(world, study.labels[k, r, c], strict=True)}


@pytest.mark.parametrize("how", list(FLIPS))
def test_flipped_copy_gives_same_world_labels_and_agatston(tmp_path, calcified, how) -> None:
    root, pid, truth = calcified
    flip_study(root, tmp_path, pid, how)
    a = coca.load_gated_study(root, pid)
    b = coca.load_gated_study(tmp_path, pid)
    expected = orientation.reorientation_for(FLIPS[how][0])
    assert b.source.reorientation == expected and not expected.is_identity
    assert a.report.reoriented == "" and b.report.reoriented == expected.describe()
    # The copy is read back voxel for voxel: HU, labels and where each voxel is.
    np.testing.assert_array_equal(b.hu, a.hu)
    np.testing.assert_allclose(b.geometry.positions_mm, a.geometry.positions_mm, atol=1e-6)
    assert b.geometry.col_dir == (1.0, 0.0, 0.0) and b.geometry.row_dir == (0.0, 1.0, 0.0)
    assert b.labels.any() and _world_labels(b) == _world_labels(a)
    # The XML points were mapped with the pixels: every ROI still matches its statistics.
    sc = b.report.self_check
    assert sc.n_checked == truth["n_rois"] and sc.n_exact == sc.n_checked
    sa = agatston.agatston(a.hu, a.labels, a.pixel_mm, a.slice_thickness_mm)
    sb = agatston.agatston(b.hu, b.labels, b.pixel_mm, b.slice_thickness_mm)
    assert sb.total == sa.total == truth["total"] > 0
    assert sb.per_vessel == sa.per_vessel
    np.testing.assert_allclose(
        nifti.ras_affine(b.geometry, allow_uneven_z=True),
        nifti.ras_affine(a.geometry, allow_uneven_z=True),
        atol=1e-6,
    )


def test_reorientation_inverts_and_maps_points() -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 9, (2, 5, 3))
    for iop in [f[0] for f in FLIPS.values()]:
        turn = orientation.reorientation_for(iop)
        canon = turn.apply(stored)
        np.testing.assert_array_equal(turn.invert(canon), stored)
        # A stored pixel centre (x = col, y = row) maps onto the canonical pixel holding it.
        for r, c in [(0, 0), (4, 2), (1, 2)]:
            x, y = turn.points(np.array([[c, r]], float), (5, 3))[0]
            assert canon[1, int(y), int(x)] == stored[1, r, c]
            rs, cs = turn.stored_index(np.array(y), np.array(x), (5, 3))
            assert (int(rs), int(cs)) == (r, c)
    with pytest.raises(orientation.OrientationError, match="oblique"):
        orientation.reorientation_for((0.9, 0.43589, 0, -0.43589, 0.9, 0))
    with pytest.raises(orientation.OrientationError, match="degenerate"):
        orientation.reorientation_for((1, 0, 0, 1, 0, 0))
