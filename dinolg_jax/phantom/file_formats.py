"""Writers of the COCA release's file formats, for the phantom (see docs/coca_format.md).

DICOM: uncompressed Explicit VR Little Endian CT slices, uint16 storage with
RescaleSlope 1 / RescaleIntercept -1024, axial orientation, files ``IM-<ssss>-<nnnn>.dcm``
numbered by InstanceNumber. Study/series/frame UIDs are zero-padded ("non-standard",
as in the real release, so pydicom warns when it reads them); SOP instance UIDs are
valid. Calcium XML: OsiriX-style ROI dicts for an Apple plist. scores.xlsx: byte-stable
(fixed zip and document timestamps).
"""

from __future__ import annotations

import datetime
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
from pydicom import config as dicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dinolg_jax.phantom import calcium
from dinolg_jax.phantom.anatomy import Scan

_SURNAMES = (
    "QUIXWORTH",
    "ZANDERVELT",
    "MORPHEWICK",
    "TRELLISANDO",
    "VOSKARINE",
    "BLYTHEMOOR",
    "ORVANDELL",
    "PELLINGRAVE",
)
_GIVEN = ("OPHELIA", "CASIMIR", "PERPETUA", "LEANDROS", "THEODWIN", "MIRABEL", "EZEKIAH")
INSTITUTION = "QUENBURY PHANTOM INFIRMARY"
_MANUFACTURERS = ("SIEMENS", "GE MEDICAL SYSTEMS", "TOSHIBA", "Philips")
SCORE_COLUMNS = ("filename ", "LCA", "LAD", "LCX", "RCA", "total")  # trailing space as released


def uid(seed: int, *parts: int, valid: bool = True) -> str:
    """A made-up UID; ``valid=False`` gives zero-padded components, as real COCA UIDs."""
    if valid:
        return "1.2.826.0.1.3680043.9.7413." + ".".join(str(int(p)) for p in (seed, *parts))
    return "1.3.12.2.1107.5.1.4." + ".".join(f"{int(p):04d}" for p in (seed, *parts))


def _ds(value: float) -> str:
    text = repr(float(value))
    if len(text) > 16:
        raise ValueError(f"DS value {text} longer than 16 characters")
    return text


def _elem(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    ds.add(DataElement(tag, vr, value, validation_mode=dicom_config.IGNORE))


def fake_phi(rng: np.random.Generator, tag: str) -> dict[str, str]:
    """Fake identifying header values of one patient (deterministic, greppable)."""
    y, m, d = int(rng.integers(1931, 1972)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    sy, sm, sd = int(rng.integers(2009, 2019)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    name = (
        f"{_SURNAMES[int(rng.integers(len(_SURNAMES)))]}^{_GIVEN[int(rng.integers(len(_GIVEN)))]}"
    )
    return {
        "PatientName": f"{name}{tag}",
        "PatientID": f"QZX{tag}",
        "PatientBirthDate": f"{y:04d}{m:02d}{d:02d}",
        "StudyDate": f"{sy:04d}{sm:02d}{sd:02d}",
        "InstitutionName": INSTITUTION,
    }


def write_series(
    folder: Path,
    hu: np.ndarray,
    *,
    series_idx: int,
    seed: int,
    key: int,
    common: dict[str, Any],
    ipp_xy: tuple[float, float],
    z_world: np.ndarray,
    superior_first: bool,
    series_uid: str | None,
    series_number: int,
    slice_ids: list[int] | None = None,
) -> None:
    """Writes slices of `hu` (z ascending) as one DICOM series, IM-<ssss>-<nnnn>.dcm.

    Args:
        folder: series folder (created).
        hu: int16 [Z, H, W] HU, z ascending; stored as uint16 HU + 1024.
        series_idx: the <ssss> of the file names, also part of the SOP instance UIDs.
        seed, key: make the SOP instance UIDs unique to the release and patient.
        common: header elements shared by the slices (`common_header`).
        ipp_xy: ImagePositionPatient x, y of every slice, mm.
        z_world: [Z] ImagePositionPatient z of each slice, mm.
        superior_first: InstanceNumber 1 is the most superior slice (else most inferior).
        series_uid: SeriesInstanceUID, or None to leave the element out.
        series_number: SeriesNumber.
        slice_ids: which z-ascending slices to write (default all); InstanceNumber runs
            from the most superior (or inferior) written slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(range(len(hu))) if slice_ids is None else slice_ids
    order = sorted(ids, reverse=superior_first)
    ds = Dataset()  # one dataset, its per-slice elements replaced before each write
    for keyword, value in common.items():
        if keyword.endswith("InstanceUID") or keyword == "FrameOfReferenceUID":
            _elem(ds, tag_for_keyword(keyword), "UI", value)  # non-standard on purpose
        else:
            setattr(ds, keyword, value)
    if series_uid is not None:
        _elem(ds, 0x0020000E, "UI", series_uid)
    ds.SeriesNumber = series_number
    sign = 1.0 if common.get("PatientPosition", "HFS") == "HFS" else -1.0
    stored = (hu.astype(np.int32) + 1024).astype("<u2")
    for inst, k in enumerate(order, start=1):
        sop = uid(seed, key, series_idx, k + 1)
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = inst
        z = float(z_world[k])
        ds.ImagePositionPatient = [_ds(ipp_xy[0]), _ds(ipp_xy[1]), _ds(z)]
        ds.SliceLocation = _ds(sign * z)
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(folder / f"IM-{series_idx:04d}-{inst:04d}.dcm", enforce_file_format=True)


def common_header(
    rng: np.random.Generator,
    scan: Scan,
    phi: dict[str, str],
    *,
    kvp: int,
    protocol: str,
    study_uid: str | None,
    frame_uid: str,
    gated: bool,
) -> dict[str, Any]:
    """Header elements shared by every slice of a patient's series."""
    common: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 100",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SOPClassUID": CTImageStorage,
        "StudyDate": phi["StudyDate"],
        "Modality": "CT",
        "Manufacturer": _MANUFACTURERS[int(rng.integers(len(_MANUFACTURERS)))],
        "InstitutionName": phi["InstitutionName"],
        "PatientName": phi["PatientName"],
        "PatientID": phi["PatientID"],
        "PatientBirthDate": phi["PatientBirthDate"],
        "PatientSex": "MF"[int(rng.integers(2))],
        "BodyPartExamined": "HEART" if gated else "CHEST",
        "SliceThickness": _ds(scan.thickness_mm),
        "KVP": str(kvp),
        "ProtocolName": protocol,
        "SeriesDescription": protocol.replace("_", " "),
        "PatientPosition": "HFS" if rng.random() < 0.85 else "FFS",
        "ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"],
        "FrameOfReferenceUID": frame_uid,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": scan.size,
        "Columns": scan.size,
        "PixelSpacing": [_ds(scan.pixel_mm), _ds(scan.pixel_mm)],
        "BitsAllocated": 16,
        "BitsStored": 12,
        "HighBit": 11,
        "PixelRepresentation": 0,
        "WindowCenter": "40",
        "WindowWidth": "400",
        "RescaleIntercept": "-1024",
        "RescaleSlope": "1",
        "RescaleType": "HU",
    }
    if study_uid is not None:
        common["StudyInstanceUID"] = study_uid
    if gated:
        base = rng.uniform(0.70, 0.80)
        common["CalciumScoringMassFactorDevice"] = [
            round(base, 3),
            round(base * 1.04, 3),
            round(base * 1.08, 3),
        ]
    return common


def roi_dict(
    name: str,
    outline: np.ndarray | None,
    hu_slice: np.ndarray,
    ipp: tuple[float, float, float],
    sp: float,
    index: int,
    center_xy_mm: tuple[float, float],
) -> dict[str, Any]:
    """One ROI of the calcium XML, in the OsiriX export format.

    Args:
        name: ROI name (``"Left Anterior Descending Artery"``, or junk like ``"Unnamed"``).
        outline: float [P, 2] open outline as (x = col, y = row), or None for an empty
            placeholder (no points, statistics 0, Center at `center_xy_mm`).
        hu_slice: int16 [H, W] stored HU of the slice: the statistics are those of the
            ROI's pixels, polygon of the outline with HU >= 130.
        ipp: ImagePositionPatient of the slice, mm (Point_mm = ipp + point * sp).
        sp: pixel spacing, mm.
        index: IndexInImage, the ROI's position in its slice's list.
        center_xy_mm: Center (x, y) of a placeholder, mm.

    Returns:
        The ROI dict: Name, Point_px, Point_mm, Center, Area (cm^2), Mean, Min, Max,
        Total, Dev (HU), Length (cm, closed outline), NumberOfPoints, IndexInImage, Type.
    """
    z = ipp[2]
    if outline is None:
        cx, cy = center_xy_mm
        return {
            "Name": name,
            "Point_px": [],
            "Point_mm": [],
            "Center": f"({cx:f}, {cy:f}, {z:f})",
            "Area": 0.0,
            "Mean": 0.0,
            "Min": 0.0,
            "Max": 0.0,
            "Total": 0.0,
            "Dev": 0.0,
            "Length": 0.0,
            "NumberOfPoints": 0,
            "IndexInImage": index,
            "Type": 20,
        }
    rr, cc = calcium.roi_pixels(hu_slice, outline)
    vals = hu_slice[rr, cc].astype(np.float64)
    xmm, ymm = ipp[0] + outline[:, 0] * sp, ipp[1] + outline[:, 1] * sp
    closed = np.vstack([outline, outline[:1]]) * sp
    return {
        "Name": name,
        "Point_px": [f"({x:f}, {y:f})" for x, y in outline],
        "Point_mm": [f"({x:f}, {y:f}, {z:f})" for x, y in zip(xmm, ymm, strict=True)],
        "Center": f"({xmm.mean():f}, {ymm.mean():f}, {z:f})",
        "Area": float(vals.size * sp * sp / 100.0),
        "Mean": float(vals.mean()) if vals.size else 0.0,
        "Min": float(vals.min()) if vals.size else 0.0,
        "Max": float(vals.max()) if vals.size else 0.0,
        "Total": float(vals.sum()),
        "Dev": float(vals.std()) if vals.size else 0.0,
        "Length": float(np.hypot(*np.diff(closed, axis=0).T).sum() / 10.0),
        "NumberOfPoints": len(outline),
        "IndexInImage": index,
        "Type": 20,
    }


def write_xlsx(path: Path, rows: list[list[Any]]) -> None:
    """Writes scores.xlsx: one sheet, `SCORE_COLUMNS` header, then `rows`.

    The output is byte-stable: openpyxl's document and zip timestamps are replaced by
    fixed ones.
    """
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    sheet.append(list(SCORE_COLUMNS))
    for row in rows:
        sheet.append(row)
    fixed = datetime.datetime(2020, 1, 1)
    book.properties.creator = "dinolg_jax phantom"
    book.properties.created = fixed
    buf = io.BytesIO()
    book.save(buf)
    stamp = re.compile(rb"<dcterms:modified[^>]*>[^<]*</dcterms:modified>")
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = stamp.sub(
                    b'<dcterms:modified xsi:type="dcterms:W3CDTF">2020-01-01T00:00:00Z'
                    b"</dcterms:modified>",
                    data,
                )
            dst.writestr(
                zipfile.ZipInfo(info.filename, (1980, 1, 1, 0, 0, 0)),
                data,
                compress_type=zipfile.ZIP_DEFLATED,
            )
    path.write_bytes(out.getvalue())
