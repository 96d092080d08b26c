"""DICOM Structured Report of a study's calcium scores (TID 1500), beside its SEG.

A Comprehensive 3D SR holding a TID 1500 Measurement Report (highdicom
``hd.sr.MeasurementReport``), procedure "Cardiac CT for calcium scoring" (SCT
426005005), with one measurement group per artery and one for the whole heart:

* per artery (a TID 1411 volumetric group, tracking identifier ``RCA`` / ``LAD`` /
  ``LCA`` / ``LCX``, finding site the artery (SCT), referencing that artery's segment of
  the SEG): Calcium score (DCM 112058) by the Agatston scoring method (DCM 112055), no
  units; Calcium volume (DCM 122660), mm3;
* ``Total`` (TID 1501): the same two for the whole heart, Calcium mass (DCM 122661), mg,
  when the scan carries its calibration factor, and two qualitative
  evaluations coded in this tool's local scheme ``99DINOLG`` (DICOM's private coding
  scheme convention): the risk category (``standard5``: 0, 1-10, 11-100, 101-400, >400)
  and CAC-DRS (e.g. ``A2/N3``).

Values are the scores of ``results.csv`` (the same :func:`score_summary` floats). The
evidence is the SEG and the source slices: the SR references them (Current Requested
Procedure Evidence) and joins the source's study. De-identification as in
``inference/seg.py``: only referencing UIDs are copied; the Patient and General Study
modules' type-2 attributes are empty; the SR's own UIDs are derived from the SEG's SOP
Instance UID and the scores (same input, same UIDs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from dinolg_jax.data.dicom_slice import quiet_pydicom
from dinolg_jax.data.volume import CTVolume
from dinolg_jax.inference import seg as seg_lib
from dinolg_jax.inference.system import StudyResult

SR_SERIES_NUMBER = 9131  # next to the SEG's 9130
LOCAL_SCHEME = "99DINOLG"
UNITS_MG = hd.sr.CodedConcept("mg", "UCUM", "milligram")
RISK_CATEGORY = hd.sr.CodedConcept("risk-category", LOCAL_SCHEME, "Agatston risk category")
CAC_DRS = hd.sr.CodedConcept("cac-drs", LOCAL_SCHEME, "CAC-DRS")


def _measurements(agatston: float, volume: float | None, mass: float | None) -> list:
    out = [
        hd.sr.Measurement(
            name=codes.DCM.CalciumScore,
            value=float(agatston),
            unit=codes.UCUM.NoUnits,
            method=codes.DCM.AgatstonScoringMethod,
        )
    ]
    if volume is not None:
        out.append(
            hd.sr.Measurement(
                name=codes.DCM.CalciumVolume, value=float(volume), unit=codes.UCUM.CubicMillimeter
            )
        )
    if mass is not None:
        out.append(hd.sr.Measurement(name=codes.DCM.CalciumMass, value=float(mass), unit=UNITS_MG))
    return out


def build_sr(
    volume: CTVolume, result: StudyResult, seg_path: str | os.PathLike
) -> hd.sr.Comprehensive3DSR:
    """The SR of ``result`` (a scored study) referencing the SEG at ``seg_path``.

    Raises:
      seg_lib.SegUnavailable: the study has no DICOM source reference.
      ValueError: ``result`` holds no scores (an error row).
    """
    if result.summary is None or result.scores is None:
        raise ValueError(f"study {result.study_id}: no scores to report")
    sources = seg_lib.source_datasets(volume)
    with quiet_pydicom():
        seg = pydicom.dcmread(str(seg_path))
    s = result.summary
    per_volume = result.scores.volume_per_vessel
    algorithm = hd.sr.AlgorithmIdentification(name="dinolg_jax", version=seg_lib._version())
    groups: list = []
    for number, name, artery in seg_lib.ARTERIES:
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=pydicom.uid.generate_uid(entropy_srcs=[seg.SOPInstanceUID, name]),
                    identifier=name,
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=number,
                    source_series=hd.sr.SourceSeriesForSegmentation(
                        volume.source.reference.series_uid
                    ),
                ),
                finding_type=codes.SCT.PathologicCalcification,
                finding_sites=[hd.sr.FindingSite(artery)],
                algorithm_id=algorithm,
                measurements=_measurements(s["per_vessel"][name], per_volume[name], None),
            )
        )
    category = str(s["standard5"])
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=pydicom.uid.generate_uid(entropy_srcs=[seg.SOPInstanceUID, "Total"]),
                identifier="Total",
            ),
            finding_type=codes.SCT.PathologicCalcification,
            algorithm_id=algorithm,
            measurements=_measurements(s["total"], s["volume_mm3"], s["mass_mg"]),
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    RISK_CATEGORY,
                    hd.sr.CodedConcept(category, LOCAL_SCHEME, f"Agatston {category}"),
                ),
                hd.sr.QualitativeEvaluation(
                    CAC_DRS, hd.sr.CodedConcept(s["cac_drs"], LOCAL_SCHEME, s["cac_drs"])
                ),
            ],
        )
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=pydicom.uid.generate_uid(entropy_srcs=["dinolg_jax", seg_lib._version()]),
            name="dinolg_jax",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.CardiacCTForCalciumScoring,
        imaging_measurements=groups,
    )
    seed = [seg.SOPInstanceUID, json.dumps(s, sort_keys=True, default=str)]
    return hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg],
        content=report,
        series_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[*seed, "series"]),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[*seed, "instance"]),
        instance_number=1,
        manufacturer="dinolg_jax",
        is_complete=True,
        series_description="CAC scores SR (dinolg_jax)",
    )


def write_sr(
    path: str | os.PathLike, volume: CTVolume, result: StudyResult, seg_path: str | os.PathLike
) -> Path:
    """Writes :func:`build_sr` to ``path`` (temporary name, then rename); returns it."""
    path = Path(path)
    with quiet_pydicom():
        sr = build_sr(volume, result, seg_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        sr.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path


def read_sr_scores(path: str | os.PathLike) -> dict[str, Any]:
    """Reads an SR written by :func:`write_sr` back with plain pydicom.

    Returns:
      ``{group: {"agatston", "volume_mm3", "mass_mg"?, ...}}`` for ``RCA`` ... ``LCX``
      and ``Total`` (``Total`` also ``standard5`` and ``cac_drs``), plus the referenced
      SEG (``seg_uid``) and source series (``series_uid``) UIDs.
    """
    ds = pydicom.dcmread(str(path))
    names = {"112058": "agatston", "122660": "volume_mm3", "122661": "mass_mg"}
    out: dict[str, Any] = {}
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in item.ContentSequence:
            values: dict[str, Any] = {}
            ident = ""
            for c in group.ContentSequence:
                code = c.ConceptNameCodeSequence[0].CodeValue
                if code == "112039":  # Tracking Identifier
                    ident = c.TextValue
                elif code in names:
                    values[names[code]] = float(c.MeasuredValueSequence[0].NumericValue)
                elif code == RISK_CATEGORY.value:
                    values["standard5"] = c.ConceptCodeSequence[0].CodeValue
                elif code == CAC_DRS.value:
                    values["cac_drs"] = c.ConceptCodeSequence[0].CodeValue
                elif code == "121191":  # Referenced Segment
                    values["seg_uid"] = c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                elif code == "121232":  # Source series for segmentation
                    values["series_uid"] = c.UID
            out[ident] = values
    return out
