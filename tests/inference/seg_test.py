"""DICOM SEG round trip: read back with plain pydicom (and highdicom) against the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from fake_ct import FAKE_NAME, SERIES_UID, make_ct

from dinolg_jax.data import dicom
from dinolg_jax.inference import seg as seg_lib

ROT180 = (-1, 0, 0, 0, -1, 0)
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # test UIDs


def _study(folder: Path, iop=ROT180, **kw):
    for k, z in enumerate((-6.0, -3.0, 0.0, 3.0)):
        make_ct(folder / f"IM-{k:04d}.dcm", z=z, iop=iop, **kw)
    vol = dicom.read_series(folder)
    labels = np.zeros(vol.hu.shape, np.uint8)
    labels[0, 1:4, 2:5] = 1
    labels[2, 8:10, 3:4] = 2
    labels[2, 12, 12:15] = 4
    labels[3, 0, 0] = 3
    return vol, labels


def test_seg_round_trip_per_artery_and_reference(tmp_path: Path) -> None:
    vol, labels = _study(tmp_path / "dcm")
    path = seg_lib.write_seg(tmp_path / "labels.seg.dcm", vol, labels)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert [(s.SegmentNumber, s.SegmentLabel) for s in ds.SegmentSequence] == [
        (1, "RCA calcium"),
        (2, "LAD calcium"),
        (3, "LCA calcium"),
        (4, "LCX calcium"),
    ]
    assert ds.SegmentSequence[0].AnatomicRegionSequence[0].CodeValue == "13647002"  # RCA
    # The source is referenced, its study joined, nothing identifying copied.
    ref = vol.source.reference
    assert ds.StudyInstanceUID == ref.study_uid and ds.FrameOfReferenceUID == "1.2.3.0099.1"
    series = ds.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == SERIES_UID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == set(
        ref.sop_instance_uids
    )
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyID"):
        assert str(ds.get(keyword, "")) == ""
    raw = path.read_bytes()
    for secret in (FAKE_NAME, "PID-424242", "20010911", "Fake General"):
        assert secret.encode() not in raw
    # Each frame: the stored-layout mask of its segment on the slice it references.
    stored = vol.source.reorientation.invert(labels)  # the files' own pixel grid
    slice_of = {uid: k for k, uid in enumerate(ref.sop_instance_uids)}
    frames = ds.pixel_array.reshape(-1, *stored.shape[1:])
    seen = set()
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        k = slice_of[uid]
        np.testing.assert_array_equal(frame, stored[k] == number)
        position = group.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position], ref.positions_mm[k])
        seen.add((k, number))
    assert seen == {(0, 1), (2, 2), (2, 4), (3, 3)}  # empty frames left out
    # highdicom's reader, placing frames by the SOP instances they reference.
    np.testing.assert_array_equal(seg_lib.read_seg_labels(path, vol), labels)


def test_empty_labels_and_unreferenceable_studies(tmp_path: Path) -> None:
    vol, labels = _study(tmp_path / "a", iop=(1, 0, 0, 0, 1, 0))
    path = seg_lib.write_seg(tmp_path / "empty.seg.dcm", vol, np.zeros_like(labels))
    assert seg_lib.read_seg_labels(path, vol).max() == 0
    no_uid, labels = _study(tmp_path / "b", series_uid=None)  # COCA's non-gated files
    with pytest.raises(seg_lib.SegUnavailable, match="no StudyInstanceUID, SeriesInstanceUID"):
        seg_lib.write_seg(tmp_path / "x.seg.dcm", no_uid, labels)
    with pytest.raises(ValueError, match="labels"):
        seg_lib.write_seg(tmp_path / "x.seg.dcm", vol, labels[:2])
