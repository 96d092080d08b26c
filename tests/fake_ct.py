"""Hand-built CT DICOM files for the tests: one slice the way COCA's scanners write it.

Shared by the DICOM, NIfTI and DICOM-SEG tests (``from fake_ct import make_ct``; the
tests folder is on ``sys.path`` through its conftest).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

SERIES_UID = "1.2.840.113619.2.55.3.0604.01"  # leading zero in a component: non-standard
FAKE_NAME = "Doe^Jane^Secret"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SIZE = 16


def stored_pixels(seed: int, signed: bool = False) -> np.ndarray:
    """A deterministic [16, 16] stored-value image (uint16 or int16)."""
    rng = np.random.default_rng(seed)
    if signed:
        return rng.integers(-2000, 2000, (SIZE, SIZE)).astype(np.int16)
    return rng.integers(0, 3000, (SIZE, SIZE)).astype(np.uint16)


def make_ct(
    path: Path,
    *,
    z: float,
    instance: int | None = 1,
    pixels: np.ndarray | None = None,
    series_uid: str | None = SERIES_UID,
    series_number: int | None = 2,
    spacing: Sequence[float] = (0.4, 0.4),
    iop: Sequence[float] = AXIAL,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    thickness: float | None = 3.0,
    kvp: float | None = 120.0,
    mass: Sequence[float] | None = (0.701, 0.75, 0.8),
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    syntax: str = ExplicitVRLittleEndian,
    omit: Sequence[str] = (),
    ipp_xy: Sequence[float] = (-100.0, -120.5),
    extra: dict | None = None,
) -> np.ndarray:
    """Write one CT slice the way COCA's scanners do; returns the stored pixels."""
    with pydicom.config.disable_value_validation():  # SERIES_UID is invalid on purpose
        if pixels is None:
            pixels = stored_pixels(int(abs(z) * 10) + 7)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"1.2.3.4.{zlib.crc32(str(path).encode())}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.PatientName = FAKE_NAME
        ds.PatientID = "PID-424242"
        ds.StudyDate = "20010911"
        ds.InstitutionName = "Fake General Hospital"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.ImageType = list(image_type)
        if series_uid is not None:
            ds.StudyInstanceUID = "1.2.3.0099"
            ds.SeriesInstanceUID = series_uid
        if series_number is not None:
            ds.SeriesNumber = series_number
        if instance is not None:
            ds.InstanceNumber = instance
        ds.ImagePositionPatient = [float(ipp_xy[0]), float(ipp_xy[1]), z]
        ds.FrameOfReferenceUID = "1.2.3.0099.1"
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        ds.ImageOrientationPatient = list(iop)
        ds.SliceLocation = -z  # opposite sign on purpose: must never be used
        ds.PixelSpacing = list(spacing)
        if thickness is not None:
            ds.SliceThickness = thickness
        if kvp is not None:
            ds.KVP = kvp
        if mass is not None:
            ds.add_new(0x00189352, "FL", list(mass))
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelData = pixels.tobytes()
        for keyword in omit:
            delattr(ds, keyword)
        if syntax == RLELossless or syntax == JPEG2000Lossless:
            ds.compress(syntax)
        elif syntax == JPEG2000:  # lossy: 20:1
            ds.compress(syntax, j2k_cr=[20])
        elif syntax != ExplicitVRLittleEndian:
            meta.TransferSyntaxUID = syntax
            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 this is not an image" * 8])
            ds["PixelData"].VR = "OB"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        return pixels


def write_series(folder: Path, zs: Sequence[float], **kw) -> list[np.ndarray]:
    """Slices named and numbered from the most superior down (COCA's usual layout)."""
    order = sorted(range(len(zs)), key=lambda i: -zs[i])
    out = [np.empty(0)] * len(zs)
    for rank, i in enumerate(order):
        out[i] = make_ct(folder / f"IM-0001-{rank + 1:04d}.dcm", z=zs[i], instance=rank + 1, **kw)
    return out
