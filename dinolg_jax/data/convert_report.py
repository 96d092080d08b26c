"""The conversion report (report.json) and its human-readable summary.

`build_report` gathers, from the per-study summaries of `convert`, every skipped
patient, file and ROI with its reason, the patients whose labels were left out or are
unreliable (with each unreliable ROI), the ROIs flagged alone by the self-check, the
studies kept out of every split for HU that cannot be right (``hu_unreliable``, each
file named), how a series was chosen when not simply the longest (``series_notes``), the
rasterisation self-check (ROIs checked / exact / tolerated, worst absolute differences),
counts, the split table and ``warnings`` (a val or
test split without patients); `format_summary` prints the split table, those figures
and the warnings.
Everything in it is a dataset-local id, a path relative to the release root, a count
or a number: no header value that identifies a person.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dinolg_jax.data import coca, dataset_writer

CATEGORIES = ("low", "moderate", "high", "very high")  # paper4, lowest first


_SELF_CHECK_COUNTS = ("n_checked", "n_exact", "n_tolerated")  # summed over studies
_SELF_CHECK_WORST = ("worst_area_cm2", "worst_mean_hu", "worst_max_hu")  # max over studies


@dataclass
class _StudyFindings:
    """What the per-study reports of `convert` say, gathered over the studies in order.

    Each list entry and each dict key names its study (dataset-local id).
    """

    files: list[dict] = field(default_factory=list)  # dropped files: path, reason
    rois: list[dict] = field(default_factory=list)  # skipped ROIs with their reason
    left_out: list[dict] = field(default_factory=list)  # studies whose labels were left out
    unreliable: list[dict] = field(default_factory=list)  # studies with unreliable labels
    flagged: list[dict] = field(default_factory=list)  # studies with a lone flagged ROI
    hu: list[dict] = field(default_factory=list)  # studies kept out for untrustworthy HU
    series: dict[str, str] = field(default_factory=dict)  # how the series was chosen
    mismatches: list[dict] = field(default_factory=list)  # self-check mismatches
    check: dict[str, Any] = field(  # the self-check over all studies
        default_factory=lambda: {
            "n_checked": 0,
            "n_exact": 0,
            "n_tolerated": 0,
            "worst_area_cm2": 0.0,
            "worst_mean_hu": 0.0,
            "worst_max_hu": 0.0,
        }
    )
    per_study: dict[str, dict] = field(default_factory=dict)  # the self-check per study
    conflicts: dict[str, Any] = field(default_factory=dict)  # label conflict pixels
    gaps: dict[str, Any] = field(default_factory=dict)  # z gaps, mm
    lossy: dict[str, list] = field(default_factory=dict)  # lossy-compressed files
    reoriented: dict[str, Any] = field(default_factory=dict)  # reorientations applied

    def add(self, sid: str, summary: dict, rep: dict, studies: dict[str, dict]) -> None:
        """Adds one converted study: its summary and the summary's ``report``."""
        self.files += [{"study": sid, "path": p, "reason": r} for p, r in rep["dropped_files"]]
        self.rois += [{"study": sid, **r} for r in rep["skipped_rois"]]
        if rep["labels_left_out"]:
            self.left_out.append({"study": sid, "reason": rep["labels_left_out"]})
        if summary.get("labels_unreliable"):
            self.unreliable.append(
                {
                    "study": sid,
                    "split": studies.get(sid, {}).get("split"),
                    "rois": rep.get("unreliable", []),
                }
            )
        if summary.get("rois_flagged"):
            self.flagged.append({"study": sid, "rois": rep.get("flagged", [])})
        if summary.get("hu_unreliable"):
            self.hu.append(
                {
                    "study": sid,
                    "split": studies.get(sid, {}).get("split"),
                    "slices": [{"path": p, "reason": r} for p, r in rep.get("hu_suspect", [])],
                }
            )
        if rep.get("series_note"):
            self.series[sid] = rep["series_note"]
        if rep["conflict_pixels"]:
            self.conflicts[sid] = rep["conflict_pixels"]
        if rep["z_gaps_mm"]:
            self.gaps[sid] = rep["z_gaps_mm"]
        if rep.get("lossy_files"):  # lossy compression changed these slices' HU
            self.lossy[sid] = [{"path": p, "reason": r} for p, r in rep["lossy_files"]]
        if rep.get("reoriented"):
            self.reoriented[sid] = rep["reoriented"]
        self.add_self_check(sid, rep["self_check"])

    def add_self_check(self, sid: str, sc: dict) -> None:
        """Adds one study's rasterisation self-check (counts summed, worst differences
        maxed; areas in cm^2, HU)."""
        if sc["n_checked"]:
            self.per_study[sid] = {k: sc[k] for k in self.check}
        for k in _SELF_CHECK_COUNTS:
            self.check[k] += sc.get(k, 0)
        for k in _SELF_CHECK_WORST:
            self.check[k] = max(self.check[k], sc[k])
        self.mismatches += [{"study": sid, **m} for m in sc["mismatches"]]


def _gather_studies(summaries: list[dict], studies: dict[str, dict]) -> _StudyFindings:
    """The findings of every summary that has a ``report`` (failed studies have none)."""
    found = _StudyFindings()
    for s in summaries:
        rep = s.get("report")
        if rep is None:
            continue
        found.add(s["study_id"], s, rep, studies)
    return found


def _roi_skip_reasons(rois: list[dict]) -> dict[str, int]:
    """Skipped ROIs counted by reason (every 'junk name ...' as one reason)."""
    reasons: dict[str, int] = {}
    for r in rois:
        key = "junk name" if r["reason"].startswith("junk name") else r["reason"]
        reasons[key] = reasons.get(key, 0) + 1
    return reasons


def _split_categories(studies: dict[str, dict]) -> dict[str, dict[str, int]]:
    """{split: {risk category: gated patients}} of the gated studies with a category."""
    cats: dict[str, dict[str, int]] = {}
    for e in studies.values():
        if e["kind"] == "gated" and e["category"] is not None:
            for split in e["records"]:
                row = cats.setdefault(split, dict.fromkeys(CATEGORIES, 0))
                row[e["category"]] += 1
    return cats


def _empty_split_warnings(splits: dict[str, dict]) -> list[str]:
    """A warning for a val or test split without records."""
    return [
        f"split {k!r} is empty: no risk category has 3 or more labelled gated patients "
        "(val and test take 10 % of each, at least one, from categories of 3 or more); "
        "convert a larger release to evaluate on it"
        for k in ("val", "test")
        if k in splits and splits[k]["num_records"] == 0
    ]


def _counts(
    gated: coca.GatedPatients,
    summaries: list[dict],
    studies: dict[str, dict],
    n_tasks: int,
    found: _StudyFindings,
    reasons: dict[str, int],
) -> dict[str, Any]:
    """The report's ``counts``: patients, studies, files and ROIs kept and skipped."""
    return {
        "gated_with_dicom": len(gated.with_dicom),
        "gated_annotated": len(gated.annotated),
        "gated_no_xml_zero_labels": len(gated.no_xml),
        "gated_xml_only_skipped": len(gated.xml_only),
        "nongated_studies": n_tasks - len(gated.with_dicom),
        "studies_converted": len(studies),
        "studies_failed": sum("error" in s for s in summaries),
        "labels_left_out": len(found.left_out),
        "labels_unreliable": len(found.unreliable),
        "rois_flagged": sum(len(f["rois"]) for f in found.flagged),
        "hu_unreliable_excluded": len(found.hu),
        "files_dropped": len(found.files),
        "rois_total": sum(s["report"]["rois_total"] for s in summaries if "report" in s),
        "rois_used": sum(s["report"]["rois_used"] for s in summaries if "report" in s),
        "rois_skipped": reasons,
        "conflict_pixels": found.conflicts,
        "studies_lossy_compression": len(found.lossy),
        "studies_reoriented": len(found.reoriented),
    }


def _score_checks(
    scores: dict[str, dict], folders: set[str], nongated_ids: set[str]
) -> dict[str, Any]:
    """The score table against the converted non-gated studies (folder ids)."""
    return {
        "rows": len(scores),
        "total_mismatch": sorted(k for k, v in scores.items() if v["total_mismatch"]),
        "rows_without_study": sorted(
            k for k in scores if coca.nongated_folder_id(k) not in nongated_ids
        ),
        "studies_without_row": sorted(nongated_ids - folders, key=int),
    }


def build_report(
    gated: coca.GatedPatients,
    summaries: list[dict],
    scores: dict[str, dict],
    splits: dict[str, dict],
    studies: dict[str, dict],
    n_tasks: int,
) -> dict[str, Any]:
    """The conversion report: every skip with its reason, the self-check, counts."""
    skipped_patients = [
        {"study": coca.gated_study_id(p), "reason": "calcium XML but no DICOM folder"}
        for p in gated.xml_only
    ]
    skipped_patients += [
        {"study": s["study_id"], "reason": s["error"]} for s in summaries if "error" in s
    ]
    found = _gather_studies(summaries, studies)
    reasons = _roi_skip_reasons(found.rois)
    folders = {coca.nongated_folder_id(k) for k in scores}
    nongated_ids = {sid.split("-", 1)[1] for sid, e in studies.items() if e["kind"] == "nongated"}
    cats = _split_categories(studies)
    warnings = _empty_split_warnings(splits)
    return {
        "warnings": warnings,
        "counts": _counts(gated, summaries, studies, n_tasks, found, reasons),
        "splits": {
            k: {
                "studies": v["num_studies"],
                "slices": v["num_records"],
                "positive_slices": v["num_positive"],
                "gated_categories": cats.get(k, {}),
            }
            for k, v in splits.items()
        },
        "self_check": {**found.check, "per_study": found.per_study, "mismatches": found.mismatches},
        "skipped_patients": skipped_patients,
        "skipped_files": found.files,
        "skipped_rois": found.rois,
        "labels_left_out": found.left_out,
        "labels_unreliable": found.unreliable,
        "rois_flagged": found.flagged,
        "hu_unreliable": found.hu,
        "series_notes": found.series,
        "z_gaps_mm": found.gaps,
        "lossy_compression": found.lossy,
        "reoriented": found.reoriented,
        "ignored_entries": gated.ignored,
        "scores": _score_checks(scores, folders, nongated_ids),
    }


def format_summary(report: dict[str, Any]) -> str:
    """Human-readable split table and conversion summary of a `convert_release` report."""
    head = f"{'split':<9}{'studies':>8}{'slices':>8}{'calcium':>8}" + "".join(
        f"{c:>11}" for c in CATEGORIES
    )
    lines = [head, "-" * len(head)]
    for split, row in report["splits"].items():
        cats = row["gated_categories"]
        lines.append(
            f"{split:<9}{row['studies']:>8}{row['slices']:>8}{row['positive_slices']:>8}"
            + "".join(f"{cats.get(c, 0):>11}" for c in CATEGORIES)
        )
    c, sc = report["counts"], report["self_check"]
    lines += [
        "",
        f"gated patients: {c['gated_with_dicom']} with DICOM ({c['gated_annotated']} annotated, "
        f"{c['gated_no_xml_zero_labels']} without XML -> zero labels), "
        f"{c['gated_xml_only_skipped']} XML-only skipped; non-gated studies: "
        f"{c['nongated_studies']}; failed: {c['studies_failed']}; labels left out: "
        f"{c['labels_left_out']}",
        f"files dropped: {c['files_dropped']}; ROIs: {c['rois_total']} in XML, "
        f"{c['rois_used']} rasterised, skipped {c['rois_skipped']}",
        f"lossy-compressed studies (HU altered): {c.get('studies_lossy_compression', 0)}; "
        f"reoriented to the canonical layout: {c.get('studies_reoriented', 0)}",
        f"self-check: {sc['n_exact']}/{sc['n_checked']} ROIs exact, "
        f"{sc.get('n_tolerated', 0)} within the rasterisation bound; worst |diff| area "
        f"{sc['worst_area_cm2']:.4g} cm^2, mean {sc['worst_mean_hu']:.4g} HU, max "
        f"{sc['worst_max_hu']:.4g} HU; labels unreliable: {c.get('labels_unreliable', 0)} "
        f"patient(s); ROIs flagged alone: {c.get('rois_flagged', 0)}",
    ]
    if c.get("hu_unreliable_excluded"):
        lines.append(
            f"kept out of every split, HU that cannot be right: {c['hu_unreliable_excluded']} "
            f"study(ies): {', '.join(h['study'] for h in report.get('hu_unreliable', []))}"
        )
    return "\n".join(lines + dataset_writer.format_tail(report))
