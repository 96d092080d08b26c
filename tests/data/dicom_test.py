"""Tests for dinolg_jax.data.dicom on small hand-built DICOM files."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fake_ct import FAKE_NAME, SERIES_UID, SIZE, make_ct, stored_pixels, write_series
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGLSLossless,
    RLELossless,
    XRayRadiationDoseSRStorage,
)

from dinolg_jax.data import dicom, dicom_slice


def test_z_order_ignores_file_names_and_instance_numbers(tmp_path: Path) -> None:
    zs = [-12.0, -9.0, -6.0, -3.0, 0.0]
    # Files and InstanceNumbers run superior -> inferior; half of them in a subfolder.
    pixels = {}
    for rank, z in enumerate(sorted(zs, reverse=True)):
        sub = "a" if rank % 2 else "b/c"
        pixels[z] = make_ct(tmp_path / sub / f"IM-0001-{rank + 1:04d}.dcm", z=z, instance=rank + 1)
    s = dicom.read_series(tmp_path)
    np.testing.assert_array_equal(s.z_mm, zs)
    assert s.z_mm.dtype == np.float64
    assert s.hu.dtype == np.int16 and s.hu.shape == (5, SIZE, SIZE)
    for i, z in enumerate(zs):
        np.testing.assert_array_equal(s.hu[i], pixels[z].astype(np.int32) - 1024)
    assert s.source.instance_numbers == (5, 4, 3, 2, 1)
    assert [Path(f).name for f in s.source.files] == [
        f"IM-0001-{k:04d}.dcm" for k in (5, 4, 3, 2, 1)
    ]
    assert s.pixel_mm == (0.4, 0.4)
    assert s.slice_thickness_mm == pytest.approx(3.0)
    assert s.source.dropped == () and s.source.series_count == 1 and s.source.z_gaps == ()


def test_exact_hu_uint16_and_int16_overflow(tmp_path: Path) -> None:
    px = np.zeros((SIZE, SIZE), np.uint16)
    px[0, :6] = [0, 1024, 1154, 1153, 4095, 32767 + 1024]
    make_ct(tmp_path / "ok" / "a.dcm", z=0.0, pixels=px)
    s = dicom.read_series(tmp_path / "ok")
    np.testing.assert_array_equal(s.hu[0, 0, :6], [-1024, 0, 130, 129, 3071, 32767])
    assert int(s.hu[0, 5, 5]) == -1024
    assert s.slice_thickness_mm == 3.0  # a single slice falls back to the header value

    px[0, 0] = 32768 + 1024  # HU 32768 does not fit int16
    make_ct(tmp_path / "bad" / "a.dcm", z=0.0, pixels=px)
    with pytest.raises(dicom.PixelDataError, match="does not fit int16"):
        dicom.read_series(tmp_path / "bad")


def test_int16_storage_other_slope_intercept(tmp_path: Path) -> None:
    stored = write_series(
        tmp_path, [0.0, 3.0], pixels=stored_pixels(3, signed=True), slope=2.0, intercept=-1000.0
    )
    s = dicom.read_series(tmp_path)
    expected = stored[0].astype(np.int64) * 2 - 1000
    assert expected.min() < -4000  # negative stored values really occur
    np.testing.assert_array_equal(s.hu[0], expected)


def test_fractional_slope_rounds_half_to_even(tmp_path: Path) -> None:
    px = np.zeros((SIZE, SIZE), np.int16)
    px[0, :5] = [1, 3, 5, -3, 2000]
    make_ct(tmp_path / "a.dcm", z=0.0, pixels=px, slope=0.5, intercept=-10.0)
    s = dicom.read_series(tmp_path)
    # 0.5-10=-9.5 -> -10, 1.5-10=-8.5 -> -8, 2.5-10=-7.5 -> -8, -1.5-10=-11.5 -> -12, 990.
    np.testing.assert_array_equal(s.hu[0, 0, :5], [-10, -8, -8, -12, 990])


def test_longest_series_kept_others_reported(tmp_path: Path) -> None:
    zs = [-15.0, -12.0, -9.0, -6.0, -3.0, 0.0]
    main = write_series(tmp_path / "Pro_Gated_CS_3.0", zs)
    write_series(tmp_path / "copy", zs[1:5], series_uid="1.2.3.77", pixels=stored_pixels(99))
    # A coronal scout: its orientation must not matter since it is dropped.
    make_ct(
        tmp_path / "scout" / "s.dcm",
        z=50.0,
        series_uid="1.2.3.78",
        series_number=1,
        iop=(1, 0, 0, 0, 0, -1),
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    make_ct(tmp_path / "zz_orphan.dcm", z=-6.0, series_uid=None, pixels=stored_pixels(98))
    s = dicom.read_series(tmp_path)
    assert s.source.series_count == 3
    np.testing.assert_array_equal(s.z_mm, zs)
    np.testing.assert_array_equal(s.hu, np.stack(main).astype(np.int32) - 1024)
    assert all("Pro_Gated_CS_3.0" in f for f in s.source.files)
    reasons = {str(Path(d.path).relative_to(tmp_path)): d.reason for d in s.source.dropped}
    assert reasons == {
        **{f"copy/IM-0001-{k:04d}.dcm": "other series (4 slices)" for k in range(1, 5)},
        "scout/s.dcm": "scout (1 slice)",
        "zz_orphan.dcm": "no SeriesInstanceUID",
    }


def test_dose_report_dropped_and_reading_is_quiet(tmp_path: Path) -> None:
    write_series(tmp_path, [0.0, 3.0])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XRayRadiationDoseSRStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.5"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr = Dataset()
    sr.file_meta = meta
    sr.SOPClassUID = XRayRadiationDoseSRStorage
    sr.Modality = "SR"
    sr.SeriesInstanceUID = "1.2.3.6"
    sr.save_as(tmp_path / "dose.dcm", enforce_file_format=True)
    mode = pydicom.config.settings.reading_validation_mode
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = dicom.read_series(tmp_path)
    assert caught == []  # the non-standard SERIES_UID is read silently
    assert pydicom.config.settings.reading_validation_mode == mode  # restored
    assert len(s.source.files) == 2 and s.source.series_count == 1
    assert [(Path(d.path).name, d.reason) for d in s.source.dropped] == [
        ("dose.dcm", "not an image (X-Ray Radiation Dose SR Storage)")
    ]


def test_equal_copies_keep_first_path(tmp_path: Path) -> None:
    zs = [0.0, 3.0, 6.0]
    write_series(tmp_path / "b", zs, series_uid="1.2.3.2")
    first = write_series(tmp_path / "a", zs, series_uid="1.2.3.1", pixels=stored_pixels(5))
    s = dicom.read_series(tmp_path)
    assert all("/a/" in f for f in s.source.files)
    np.testing.assert_array_equal(s.hu[0], first[0].astype(np.int32) - 1024)
    assert len(s.source.dropped) == 3 and all(
        d.reason.startswith("duplicate series") for d in s.source.dropped
    )


def test_duplicate_z_with_identical_pixels_keeps_first_by_path(tmp_path: Path) -> None:
    kept = make_ct(tmp_path / "IM-0001-0002.dcm", z=-120.0, instance=2, pixels=stored_pixels(1))
    make_ct(tmp_path / "IM-0001-0009.dcm", z=-120.0, instance=9, pixels=stored_pixels(1))
    make_ct(tmp_path / "IM-0001-0001.dcm", z=-117.0, instance=1)
    s = dicom.read_series(tmp_path)
    np.testing.assert_array_equal(s.z_mm, [-120.0, -117.0])
    np.testing.assert_array_equal(s.hu[0], kept.astype(np.int32) - 1024)
    assert [(Path(d.path).name, d.reason) for d in s.source.dropped] == [
        ("IM-0001-0009.dcm", "duplicate z=-120.0 mm, identical pixels (kept IM-0001-0002.dcm)")
    ]


def test_duplicate_z_with_different_pixels_refused_naming_both(tmp_path: Path) -> None:
    """Issue 12 item 7: a zeroed copy at the same z used to win silently (by file name)."""
    make_ct(tmp_path / "IM-0001-0002.dcm", z=-120.0, pixels=np.zeros((SIZE, SIZE), np.uint16))
    make_ct(tmp_path / "IM-0001-0009.dcm", z=-120.0, pixels=stored_pixels(2))
    make_ct(tmp_path / "IM-0001-0001.dcm", z=-117.0)
    with pytest.raises(dicom.DuplicateSliceError) as err:
        dicom.read_series(tmp_path)
    message = str(err.value)
    assert "IM-0001-0002.dcm" in message and "IM-0001-0009.dcm" in message
    assert "z=-120.0 mm" in message and "different pixels" in message


def test_one_rotated_slice_refused_naming_the_odd_file(tmp_path: Path) -> None:
    """Issue 12 item 7: a slice rotated 180 degrees in-plane keeps the slice normal."""
    write_series(tmp_path, [0.0, 3.0, 6.0, 9.0])
    make_ct(tmp_path / "IM-0001-0003.dcm", z=3.0, iop=(-1, 0, 0, 0, -1, 0))  # overwrite one
    with pytest.raises(dicom.MixedOrientationError) as err:
        dicom.read_series(tmp_path)
    assert err.value.path.endswith("IM-0001-0003.dcm")
    assert "3 other slice(s)" in str(err.value) and str(tmp_path) in str(err.value)


def _world_of_stored(stored: np.ndarray, iop, ipp_xy, zs, spacing) -> dict:
    """{world point (rounded): HU} of every voxel of a hand-built series, from its tags."""
    u, v = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    out = {}
    for k, z in enumerate(zs):
        for r in range(stored.shape[1]):
            for c in range(stored.shape[2]):
                p = np.array([ipp_xy[0], ipp_xy[1], z]) + c * spacing[1] * u + r * spacing[0] * v
                out[tuple(np.round(p, 4))] = int(stored[k, r, c]) - 1024
    return out


@pytest.mark.parametrize(
    "iop",
    [
        (-1, 0, 0, 0, -1, 0),  # rotated 180 degrees (some prone / vendor exports)
        (-1, 0, 0, 0, 1, 0),  # mirrored left-right
        (0, 1, 0, 1, 0, 0),  # rows and columns swapped
        (0, -1, 0, -1, 0, 0),  # swapped and both flipped
    ],
    ids=["rot180", "mirror", "swapped", "swapped_flipped"],
)
def test_flipped_and_swapped_series_reoriented_to_canonical(tmp_path: Path, iop) -> None:
    zs = [0.0, 3.0, 6.0]
    spacing = (0.4, 0.5)  # unequal, so a swap must swap the spacing too
    pixels = [stored_pixels(10 + k)[:, :12] for k in range(3)]  # 16 rows x 12 columns
    for k, z in enumerate(zs):
        make_ct(tmp_path / f"{k}.dcm", z=z, pixels=pixels[k], iop=iop, spacing=spacing)
    s = dicom.read_series(tmp_path)
    g = s.geometry
    assert g.col_dir == (1.0, 0.0, 0.0) and g.row_dir == (0.0, 1.0, 0.0)
    assert not s.source.reorientation.is_identity
    swapped = iop[0] == 0
    assert s.hu.shape == ((3, 12, 16) if swapped else (3, 16, 12))
    assert g.pixel_mm == ((spacing[1], spacing[0]) if swapped else spacing)
    # Every canonical voxel holds the HU that the stored file puts at its world point.
    truth = _world_of_stored(np.stack(pixels), iop, (-100.0, -120.5), zs, spacing)
    k, r, c = np.meshgrid(*(np.arange(n) for n in s.hu.shape), indexing="ij")
    world = np.round(g.world_mm(k, r, c), 4).reshape(-1, 3)
    assert [truth[tuple(p)] for p in world] == s.hu.reshape(-1).tolist()
    # Canonical: a column step is +x, a row step +y.
    assert np.all(np.diff(world.reshape(*s.hu.shape, 3)[..., 0], axis=2) > 0)
    assert np.all(np.diff(world.reshape(*s.hu.shape, 3)[..., 1], axis=1) > 0)


@pytest.mark.parametrize("deg", [30.0, 2.0])
def test_oblique_in_plane_axes_refused_naming_the_series(tmp_path: Path, deg: float) -> None:
    a = np.radians(deg)  # axial (normal along z) but rotated about z
    write_series(
        tmp_path / "series_a", [0.0, 3.0], iop=(np.cos(a), np.sin(a), 0, -np.sin(a), np.cos(a), 0)
    )
    with pytest.raises(dicom.NonAxialError, match=r"series in .*series_a.*oblique"):
        dicom.read_series(tmp_path)


def test_lossy_transfer_syntax_and_lossy_flag_reported(tmp_path: Path) -> None:
    px = np.random.default_rng(3).integers(0, 3000, (64, 64)).astype(np.uint16)
    make_ct(tmp_path / "a" / "0.dcm", z=0.0, pixels=px, syntax=JPEG2000)
    make_ct(tmp_path / "a" / "1.dcm", z=3.0, pixels=px)
    s = dicom.read_series(tmp_path / "a")
    assert s.lossy_compression
    assert [(Path(p).name, why) for p, why in s.source.lossy_files] == [
        ("0.dcm", "lossy transfer syntax 'JPEG 2000 Image Compression' (1.2.840.10008.1.2.4.91)")
    ]
    assert not np.array_equal(s.hu[0], s.hu[1])  # the lossy slice's HU changed
    make_ct(tmp_path / "b" / "0.dcm", z=0.0, extra={"LossyImageCompression": "01"})
    make_ct(tmp_path / "b" / "1.dcm", z=3.0, syntax=RLELossless)
    s = dicom.read_series(tmp_path / "b")
    assert [Path(p).name for p, _ in s.source.lossy_files] == ["0.dcm"]
    assert not dicom.read_series(tmp_path / "a", pattern="1.dcm").lossy_compression


def test_seg_reference_and_missing_uids(tmp_path: Path) -> None:
    write_series(tmp_path / "a", [0.0, 3.0])
    ref = dicom.read_series(tmp_path / "a").source.reference
    assert ref.series_uid == SERIES_UID and ref.study_uid == "1.2.3.0099"
    assert ref.frame_of_reference_uid == "1.2.3.0099.1" and len(ref.sop_instance_uids) == 2
    assert ref.sop_class_uids == (CTImageStorage,) * 2
    write_series(tmp_path / "b", [0.0, 3.0], series_uid=None)
    s = dicom.read_series(tmp_path / "b")
    assert s.source.reference is None
    assert s.source.reference_missing == "StudyInstanceUID, SeriesInstanceUID"


def test_nongated_without_uids(tmp_path: Path) -> None:
    zs = [-300.0, -295.0, -290.0, -285.0]
    stored = write_series(
        tmp_path / "12" / "12",
        zs,
        series_uid=None,
        mass=None,
        kvp=None,
        thickness=5.0,
        spacing=(0.7, 0.72),
    )
    make_ct(tmp_path / "12" / "12" / "IM-0000-0001.dcm", z=0.0, series_uid=None, series_number=1)
    s = dicom.read_series(tmp_path)
    assert s.source.series_count == 2
    np.testing.assert_array_equal(s.z_mm, zs)
    np.testing.assert_array_equal(s.hu[3], stored[3].astype(np.int32) - 1024)
    assert s.pixel_mm == (0.7, 0.72) and s.slice_thickness_mm == 5.0
    assert s.kvp is None and s.mass_factor is None and s.geometry.header_thickness_mm == 5.0
    assert [d.reason for d in s.source.dropped] == ["scout (1 slice)"]

    # No SeriesNumber either: everything is one series.
    write_series(tmp_path / "n", zs, series_uid=None, series_number=None)
    s = dicom.read_series(tmp_path / "n")
    assert s.source.series_count == 1 and len(s.source.files) == 4


def test_header_values_and_thickness_from_z_step(tmp_path: Path) -> None:
    write_series(
        tmp_path,
        [0.0, 2.5, 5.0, 7.5],
        thickness=3.0,
        kvp=100.0,
        mass=(0.701, 0.75, 0.8),
        spacing=(0.390625, 0.4),
    )
    s = dicom.read_series(tmp_path)
    assert s.slice_thickness_mm == pytest.approx(2.5)
    assert s.geometry.header_thickness_mm == 3.0 and s.kvp == 100.0
    np.testing.assert_allclose(s.mass_factor, (0.701, 0.75, 0.8), rtol=1e-6)  # FL is float32
    assert s.pixel_mm == (0.390625, 0.4)


def test_missing_slice_recorded_in_z_gaps(tmp_path: Path) -> None:
    write_series(tmp_path, [0.0, 3.0, 6.0, 12.0, 15.0, 18.0])
    s = dicom.read_series(tmp_path)
    assert s.slice_thickness_mm == 3.0 and s.source.z_gaps == (6.0,)
    assert s.hu.shape[0] == 6


def test_no_identifying_values(tmp_path: Path) -> None:
    write_series(tmp_path, [0.0, 3.0])
    s = dicom.read_series(tmp_path)
    names = {f.name for f in dataclasses.fields(s)}
    assert not {n for n in names if "patient" in n or "date" in n or "institution" in n}
    text = repr([getattr(s, n) for n in names if n != "hu"])
    for secret in (FAKE_NAME, "PID-424242", "20010911", "Fake General"):
        assert secret not in text


def test_rle_round_trip_exact(tmp_path: Path) -> None:
    plain = write_series(tmp_path / "plain", [0.0, 3.0])
    write_series(tmp_path / "rle", [0.0, 3.0], syntax=RLELossless)
    assert pydicom.dcmread(tmp_path / "rle" / "IM-0001-0001.dcm").file_meta.TransferSyntaxUID == (
        RLELossless
    )
    s = dicom.read_series(tmp_path / "rle")
    np.testing.assert_array_equal(s.hu, np.stack(plain).astype(np.int32) - 1024)


def test_jpeg2000_lossless_round_trip_exact(tmp_path: Path) -> None:
    # 64 x 64: OpenJPEG's default 6 resolution levels need at least 32 pixels a side.
    px = np.random.default_rng(11).integers(-2000, 3000, (64, 64)).astype(np.int16)
    make_ct(tmp_path / "a.dcm", z=0.0, pixels=px, intercept=0.0, syntax=JPEG2000Lossless)
    s = dicom.read_series(tmp_path)
    np.testing.assert_array_equal(s.hu[0], px)


def test_implicit_vr_little_endian(tmp_path: Path) -> None:
    px = make_ct(tmp_path / "a.dcm", z=1.5)
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    with pydicom.config.disable_value_validation():
        ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    s = dicom.read_series(tmp_path)
    np.testing.assert_array_equal(s.hu[0], px.astype(np.int32) - 1024)
    np.testing.assert_allclose(s.mass_factor, (0.701, 0.75, 0.8), rtol=1e-6)


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep >= 0 else len(data) + keep])


@pytest.mark.parametrize(
    ("keep", "problem"),
    [
        (0, "not a DICOM file"),
        (100, "not a DICOM file"),  # inside the preamble
        (140, "truncated or malformed: file meta"),
        (400, "no Pixel Data element"),  # between elements of the main dataset
        (-SIZE * SIZE, "truncated: element (7FE0,0010) needs 512 bytes"),
        (-1, "truncated: element (7FE0,0010)"),
    ],
)
def test_truncated_file(tmp_path: Path, keep: int, problem: str) -> None:
    write_series(tmp_path, [0.0, 3.0, 6.0])
    _truncate(tmp_path / "IM-0001-0002.dcm", keep)
    with pytest.raises(dicom.NotDicomError, match=r"IM-0001-0002\.dcm: ") as info:
        dicom.read_series(tmp_path)
    assert problem in info.value.problem


def test_truncated_file_in_dropped_series_still_raises(tmp_path: Path) -> None:
    write_series(tmp_path / "main", [0.0, 3.0, 6.0])
    make_ct(tmp_path / "scout.dcm", z=9.0, series_uid="1.2.3.9")
    _truncate(tmp_path / "scout.dcm", -7)
    with pytest.raises(dicom.NotDicomError, match=r"scout\.dcm: truncated"):
        dicom.read_series(tmp_path)


def test_not_dicom(tmp_path: Path) -> None:
    write_series(tmp_path, [0.0, 3.0])
    (tmp_path / "notes.dcm").write_text("this is a text file\n" * 20)
    with pytest.raises(dicom.NotDicomError, match=r"notes\.dcm: not a DICOM file"):
        dicom.read_series(tmp_path)


def _single_series_error(tmp_path: Path, error: type[Exception], match: str, **kw) -> None:
    write_series(tmp_path, [0.0, 3.0, 6.0], **kw)
    with pytest.raises(error, match=match) as info:
        dicom.read_series(tmp_path)
    assert isinstance(info.value, dicom.DicomError) and isinstance(info.value, ValueError)
    assert "IM-0001-000" in str(info.value)


def test_mr_modality(tmp_path: Path) -> None:
    _single_series_error(tmp_path, dicom.NotCTError, "Modality is 'MR'", modality="MR")


@pytest.mark.parametrize(
    "iop", [(0, 1, 0, 0, 0, -1), (1, 0, 0, 0, np.cos(0.1), np.sin(0.1))], ids=["sagittal", "tilt"]
)
def test_non_axial(tmp_path: Path, iop: tuple) -> None:
    _single_series_error(tmp_path, dicom.NonAxialError, "deg from axial", iop=iop)


def test_small_tilt_within_tolerance(tmp_path: Path) -> None:
    a = np.radians(0.5)
    write_series(tmp_path, [0.0, 3.0], iop=(1, 0, 0, 0, np.cos(a), np.sin(a)))
    assert dicom.read_series(tmp_path).hu.shape == (2, SIZE, SIZE)


def test_mixed_spacing_and_shape(tmp_path: Path) -> None:
    write_series(tmp_path / "s", [0.0, 3.0])
    make_ct(tmp_path / "s" / "x.dcm", z=9.0, spacing=(0.5, 0.5))
    with pytest.raises(dicom.MixedSpacingError, match=r"x\.dcm: PixelSpacing"):
        dicom.read_series(tmp_path / "s")
    write_series(tmp_path / "r", [0.0, 3.0])
    make_ct(tmp_path / "r" / "x.dcm", z=9.0, pixels=np.zeros((8, SIZE), np.uint16))
    with pytest.raises(dicom.MixedSpacingError, match="Rows/Columns"):
        dicom.read_series(tmp_path / "r")


@pytest.mark.parametrize(
    "tag", ["RescaleIntercept", "RescaleSlope", "ImagePositionPatient", "PixelSpacing"]
)
def test_missing_required_tag(tmp_path: Path, tag: str) -> None:
    _single_series_error(tmp_path, dicom.MissingTagError, tag, omit=(tag,))


def test_unsupported_transfer_syntax_named(tmp_path: Path) -> None:
    _single_series_error(
        tmp_path,
        dicom.UnsupportedTransferSyntaxError,
        "JPEG 2000 Part 2 Multi-component Image Compression",
        syntax=JPEG2000MCLossless,
    )


def test_private_transfer_syntax_refused(tmp_path: Path) -> None:
    write_series(tmp_path, [0.0, 3.0])
    for f in tmp_path.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.3.46.670589.33.1.4.1"
        with pydicom.config.disable_value_validation():
            ds.save_as(f, implicit_vr=False, little_endian=True, enforce_file_format=True)
    with pytest.raises(dicom.UnsupportedTransferSyntaxError, match=r"'1\.3\.46\.670589\.33"):
        dicom.read_series(tmp_path)


def test_syntax_without_installed_plugin_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unavailable:  # what get_decoder gives when pylibjpeg-libjpeg is not installed
        is_available = False
        missing_dependencies = ("pylibjpeg - requires pylibjpeg-libjpeg",)

    monkeypatch.setattr(dicom_slice, "get_decoder", lambda uid: Unavailable())
    _single_series_error(
        tmp_path,
        dicom.UnsupportedTransferSyntaxError,
        r"'JPEG-LS Lossless Image Compression' .* not installed .*pylibjpeg-libjpeg",
        syntax=JPEGLSLossless,
    )


def test_undecodable_compressed_data_names_syntax(tmp_path: Path) -> None:
    _single_series_error(tmp_path, dicom.PixelDataError, "JPEG-LS Lossless", syntax=JPEGLSLossless)


def test_empty_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no dicom here")
    with pytest.raises(dicom.EmptySeriesError, match=r"\*\*/\*\.dcm"):
        dicom.read_series(tmp_path)
    with pytest.raises(FileNotFoundError):
        dicom.read_series(tmp_path / "absent")
    with pytest.raises(dicom.EmptySeriesError):
        dicom.read_dicom_files([])


def test_read_dicom_files_explicit_list(tmp_path: Path) -> None:
    write_series(tmp_path, [0.0, 3.0, 6.0])
    files = sorted(tmp_path.glob("*.dcm"))
    s = dicom.read_dicom_files(files[:2])
    assert len(s.source.files) == 2 and s.source.series_count == 1
    np.testing.assert_array_equal(s.z_mm, [3.0, 6.0])  # files 1 and 2 are the top slices


# --- HU that cannot be right (issue 23) -------------------------------------------------


@pytest.mark.parametrize("slope", [0.0, -1.0])
def test_rescale_slope_zero_or_negative_is_refused_naming_the_file(tmp_path, slope):
    write_series(tmp_path, [0.0, 3.0, 6.0])
    bad = tmp_path / "IM-0001-0002.dcm"  # z = 3
    make_ct(bad, z=3.0, instance=2, slope=slope)
    with pytest.raises(dicom.PixelDataError, match=rf"{bad}: RescaleSlope is {slope:g}"):
        dicom.read_series(tmp_path)


def test_rescale_differing_and_constant_slices_are_flagged_with_their_files(tmp_path):
    stored = write_series(tmp_path, [0.0, 3.0, 6.0, 9.0])
    odd = tmp_path / "IM-0001-0003.dcm"  # z = 3: intercept -1000 among -1024
    make_ct(odd, z=3.0, instance=3, pixels=stored[1], intercept=-1000.0)
    flat = tmp_path / "IM-0001-0001.dcm"  # z = 9: every stored value 1124 -> 100 HU
    make_ct(flat, z=9.0, instance=1, pixels=np.full((SIZE, SIZE), 1124, np.uint16))
    vol = dicom.read_series(tmp_path)
    # The HU are still exact per slice (stored x slope + intercept) ...
    np.testing.assert_array_equal(vol.hu[1], stored[1].astype(np.int32) - 1000)
    assert np.all(vol.hu[3] == 100)
    # ... and both slices are named, with the reason.
    suspect = dict(vol.source.hu_suspect)
    assert set(suspect) == {str(odd), str(flat)}
    assert (
        suspect[str(odd)]
        == "RescaleSlope/Intercept 1/-1000 differ from 1/-1024 of 3 other slice(s)"
    )
    assert suspect[str(flat)] == "constant slice (every pixel 100 HU)"
    clean = tmp_path / "clean"
    write_series(clean, [0.0, 3.0])
    assert dicom.read_series(clean).source.hu_suspect == ()


def test_fits_keeps_the_matching_series_over_a_longer_one(tmp_path):
    other = {"StudyInstanceUID": "1.2.3.7777", "FrameOfReferenceUID": "1.2.3.7777.1"}
    write_series(tmp_path / "long", [100.0 + 3 * k for k in range(6)], series_uid="1.2.3.66",
                 extra=other)  # fmt: skip
    write_series(tmp_path / "short", [0.0, 3.0, 6.0])
    longest = dicom.read_series(tmp_path)
    assert len(longest.z_mm) == 6 and longest.source.series_note == (
        "the folder holds series of 2 studies and 2 frames of reference"
    )
    vol = dicom.read_series(tmp_path, fits=lambda c: bool(np.all(c.z_mm < 50)))
    np.testing.assert_array_equal(vol.z_mm, [0.0, 3.0, 6.0])
    assert vol.source.series_note.startswith(
        "kept the 3-file series that matches the annotations, not the longest (6 files"
    )
    reasons = {d.reason for d in vol.source.dropped}
    assert reasons == {"other series (6 slices; does not match the annotations)"}
    # No series fits: the longest, as without `fits`.
    none = dicom.read_series(tmp_path, fits=lambda c: False)
    assert len(none.z_mm) == 6
