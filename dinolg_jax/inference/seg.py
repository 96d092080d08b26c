"""DICOM SEG of the calcium labels, for the PACS path, through highdicom.

One segment per artery (1 RCA, 2 LAD, 3 LCA = left main, 4 LCX; the project's label
values), BINARY, each frame referencing the source slice it lies on (the SEG is built on
the source series' own pixel grid: the canonical labels are permuted back to the stored
layout, ``Reorientation.invert``). Empty frames are left out.

What is copied from the source series, and nothing else (the reader never parses any
other header value, ``data/dicom_slice.py``): the UIDs that reference it -- Study
Instance UID (the SEG joins the source's study), Series Instance UID, SOP Class and SOP
Instance UID of every slice, Frame of Reference UID -- and its geometry (Rows, Columns,
Pixel Spacing, Image Orientation / Position (Patient), Slice Thickness) for the plane
positions. The Patient and General Study modules' type-2 attributes the standard
requires to be present (Patient's Name, Patient ID, Birth Date, Sex, Study Date and
Time, Referring Physician, Study ID, Accession Number) are written empty: this file
carries no identifying value, so a PACS files it by Study Instance UID.

The SEG's own UIDs are derived from the source series UID, the labels and the software
version (``pydicom.uid.generate_uid`` with those as entropy), so the same input gives the
same UIDs; the content date/time is highdicom's (the time of writing).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dinolg_jax.data.dicom_slice import quiet_pydicom
from dinolg_jax.data.volume import CTVolume

SEG_SERIES_NUMBER = 9130  # "130 HU": a number unlikely to collide with the scanner's
ARTERIES = (
    (1, "RCA", codes.SCT.RightCoronaryArtery),
    (2, "LAD", codes.SCT.LeftAnteriorDescendingCoronaryArtery),
    (3, "LCA", codes.SCT.LeftMainCoronaryArtery),
    (4, "LCX", codes.SCT.CircumflexCoronaryArtery),
)
_TYPE2_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


class SegUnavailable(ValueError):
    """The study cannot be referenced by a SEG (not read from DICOM, or UIDs missing)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dinolg_jax")
    except PackageNotFoundError:
        return "0"


def source_datasets(volume: CTVolume) -> list[Dataset]:
    """Minimal header-only datasets of the source slices (z ascending): UIDs and geometry.

    Raises:
      SegUnavailable: the volume has no DICOM source reference.
    """
    src = volume.source
    ref = getattr(src, "reference", None)
    if ref is None:
        why = getattr(src, "reference_missing", "") or "the study was not read from DICOM"
        if src is not None and getattr(src, "reference_missing", ""):
            why = f"its DICOM files have no {why}"
        raise SegUnavailable(f"study {volume.study_id}: no DICOM SEG: {why}")
    out = []
    for k, (sop_class, sop_uid) in enumerate(
        zip(ref.sop_class_uids, ref.sop_instance_uids, strict=True)
    ):
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = ref.study_uid
        ds.SeriesInstanceUID = ref.series_uid
        ds.FrameOfReferenceUID = ref.frame_of_reference_uid
        ds.Modality = "CT"
        ds.Rows, ds.Columns = ref.shape
        ds.PixelSpacing = [float(v) for v in ref.pixel_mm]
        ds.ImageOrientationPatient = [float(v) for v in ref.orientation]
        ds.ImagePositionPatient = [float(v) for v in ref.positions_mm[k]]
        if ref.header_thickness_mm is not None:
            ds.SliceThickness = float(ref.header_thickness_mm)
        for keyword in _TYPE2_EMPTY:
            setattr(ds, keyword, "")
        out.append(ds)
    return out


def segment_descriptions() -> list[hd.seg.SegmentDescription]:
    """The four artery segments: calcification (SCT) of each coronary artery."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="dinolg_jax DINO-LG gate + U-Net",
        version=_version(),
        family=codes.cid7162.ArtificialIntelligence,
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"{name} calcium",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.PathologicCalcification,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[artery],
        )
        for number, name, artery in ARTERIES
    ]


def build_seg(volume: CTVolume, labels: np.ndarray) -> hd.seg.Segmentation:
    """The SEG dataset of ``labels`` (uint8 [Z, H, W], canonical, on ``volume``'s grid).

    Raises:
      SegUnavailable: no DICOM source reference (see :func:`source_datasets`).
      ValueError: labels of another shape or with values outside 0..4.
    """
    sources = source_datasets(volume)
    labels = np.asarray(labels)
    if labels.shape != volume.hu.shape:
        raise ValueError(f"labels {labels.shape} differ from the volume {volume.hu.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > len(ARTERIES)):
        raise ValueError(f"labels must be 0..{len(ARTERIES)}, got max {labels.max()}")
    stored = volume.source.reorientation.invert(labels.astype(np.uint8))  # source pixel grid
    seed = [
        volume.source.reference.series_uid,
        hashlib.sha256(stored.tobytes()).hexdigest(),
        _version(),
    ]
    empty = not stored.any()
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=stored,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(),
        series_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[*seed, "series"]),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[*seed, "instance"]),
        instance_number=1,
        manufacturer="dinolg_jax",
        manufacturer_model_name="dinolg_jax coronary calcium",
        software_versions=_version(),
        device_serial_number="none",
        content_description="Coronary artery calcium per artery (automatic)",
        series_description="CAC SEG (dinolg_jax)",
        omit_empty_frames=not empty,  # all-empty: keep the frames (a SEG needs one)
    )


def write_seg(path: str | os.PathLike, volume: CTVolume, labels: np.ndarray) -> Path:
    """Writes :func:`build_seg` to ``path`` (temporary name, then rename); returns it."""
    path = Path(path)
    with quiet_pydicom():  # real source UIDs are often non-standard (zero-padded)
        seg = build_seg(volume, labels)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        seg.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path


def read_seg_labels(path: str | os.PathLike, volume: CTVolume) -> np.ndarray:
    """Reads a SEG written by :func:`write_seg` back as canonical uint8 labels [Z, H, W].

    Frames are placed by their referenced SOP Instance UID (not by file order), so this
    checks the references as well as the pixels.
    """
    with quiet_pydicom():
        seg = hd.seg.segread(str(path))
    uids = list(volume.source.reference.sop_instance_uids)
    stored = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=[n for n, _, _ in ARTERIES],
        combine_segments=True,
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    )
    return volume.source.reorientation.apply(np.asarray(stored, np.uint8))
