"""Where studies come from for inference: a manifest split, a COCA release, DICOM folders,
NIfTI files.

Each source is a list of :class:`StudyTask` (a de-identified id, a ``load()`` that reads
the study when called, as a ``data.volume.CTVolume`` with its real geometry, the
reference scores when the source has them without labels, and a ``fingerprint()`` of
what the study is read from), so a study that fails to read fails alone, inside the
inference loop, and becomes an error row while the rest complete.

* :func:`manifest_tasks`: the records of one split of a converted dataset, regrouped per
  study (a study's records are contiguous and z-ascending, see ``data/manifest.py``);
  the geometry comes from the records (``position_mm``, ``orientation``, ``pixel_mm``),
  so there is no DICOM to reference and no SEG. The reference is the manifest's: the
  labels of a gated study whose annotations are valid, the ``scores.xlsx`` scores the
  manifest holds for a non-gated one (its records carry all-zero labels, which are no
  reference); a study without either has no reference (blank, never 0). A record that
  cannot be read is an error naming its shard (``data.shards.NamedShardSource``).
* :func:`release_tasks`: the gated patients (with their annotations as ground truth) or
  the non-gated studies of a COCA release (with their ``scores.xlsx`` row as
  reference), read through ``data/coca.py``.
* :func:`dicom_tasks`: each subfolder of a root (or the root itself when it holds the
  ``*.dcm`` files) is one study, read recursively; its series is chosen by
  ``inference.series_choice`` (the non-contrast axial series closest to 3 mm, or the
  forced ``series_uid``); its id is the folder name (no DICOM header value is used, so
  nothing identifying enters the outputs unless the folder names themselves carry it).
* :func:`nifti_tasks`: each ``.nii`` / ``.nii.gz`` file of a folder is one study in HU
  (``inference.nifti_input``), its id the file name without the suffix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dinolg_jax.data import coca, records, shards
from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data.volume import CTVolume, Geometry
from dinolg_jax.inference import nifti_input, series_choice
from dinolg_jax.scoring.agatston import VESSELS


@dataclass(frozen=True)
class StudyTask:
    """One study to score (errors surface when ``load`` is called).

    Attributes:
      study_id: de-identified id.
      load: reads the study.
      reference: reference scores ``{"RCA", "LAD", "LCA", "LCX", "total"}`` of a study
        whose reference is not its labels (non-gated: ``scores.xlsx``); None otherwise.
      fingerprint: a digest of what the study is read from (file sizes and times, or the
        shards' SHA-256), for resuming a run; None: never skipped.
    """

    study_id: str
    load: Callable[[], CTVolume]
    reference: Mapping[str, float] | None = None
    fingerprint: Callable[[], str] | None = None


def files_fingerprint(paths: Iterable[str | os.PathLike], root: str | os.PathLike = "") -> str:
    """SHA-256 over (path relative to ``root``, size, mtime in ns) of every file, sorted.

    A file replaced, edited, added or removed changes it; reading no byte of the files.
    """
    h = hashlib.sha256()
    for p in sorted(str(p) for p in paths):
        st = os.stat(p)
        rel = os.path.relpath(p, root) if root else p
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _tree_files(*paths: Path) -> list[Path]:
    """Every file under the folders among ``paths``, and the files among them."""
    out = [p for p in paths if p.is_file()]
    return out + [q for p in paths if p.is_dir() for q in p.rglob("*") if q.is_file()]


def _record(source: shards.NamedShardSource, i: int, study_id: str) -> dict[str, Any]:
    raw = source[i]  # a corrupt chunk: ShardReadError naming the shard
    try:
        return records.decode(raw)
    except Exception as e:  # a record that decodes to garbage: name where it lies
        raise shards.ShardReadError(
            f"cannot decode record of {study_id!r} in shard {source._where(i)}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _load_manifest_study(
    source, study_id: str, rng: range, entry: Mapping[str, Any] | None = None
) -> CTVolume:
    hu, labels, positions = [], [], []
    rec: dict[str, Any] = {}
    lossy = False
    for i in rng:
        rec = _record(source, i, study_id)
        if rec["study"] != study_id:
            raise manifest_lib.ManifestError(
                f"record {i} belongs to {rec['study']!r}, expected {study_id!r}"
            )
        hu.append(rec["image"])
        labels.append(rec["labels"])
        positions.append(np.asarray(rec["position_mm"], np.float64))
        lossy = lossy or bool(rec["lossy_compression"])
    orientation = [float(v) for v in rec["orientation"]]
    geometry = Geometry(
        positions_mm=np.stack(positions),
        col_dir=orientation[:3],
        row_dir=orientation[3:],
        pixel_mm=tuple(float(v) for v in rec["pixel_mm"]),
        slice_thickness_mm=float(rec["slice_thickness_mm"]),
    )
    kvp = float(rec["kvp"])
    # Labels are a reference only for a gated study whose annotations the converter scored
    # (it writes "agatston": None when they are missing or invalid; hand-made manifests
    # without the key keep their labels).
    has_labels = entry is None or (
        entry.get("kind", "gated") == "gated" and entry.get("agatston", {}) is not None
    )
    return CTVolume(
        study_id=study_id,
        hu=np.stack(hu).astype(np.int16),
        geometry=geometry,
        labels=np.stack(labels).astype(np.uint8) if has_labels else None,
        kvp=kvp if kvp > 0 else None,
        kind=str(rec["kind"]),
        lossy_compression=lossy,
    )


def manifest_tasks(manifest: str | os.PathLike, split: str) -> list[StudyTask]:
    """The studies of ``split`` of a converted dataset, in record order.

    Args:
      manifest: path of ``manifest.json`` (or its folder).
      split: e.g. "test".

    Raises:
      ManifestError: no manifest, or no such split.
    """
    man = manifest_lib.load(manifest)
    source = shards.NamedShardSource(man.shard_paths(split))
    shard_digest = hashlib.sha256(
        "".join(
            f"{s.get('path')}:{s.get('sha256')}\n" for s in man.splits[split]["shards"]
        ).encode()
    ).hexdigest()
    tasks = []
    for study_id in man.studies_in(split):
        rng = man.study_range(study_id, split)
        entry = man.studies[study_id]
        scores = entry.get("agatston")
        reference = None
        if entry.get("kind") != "gated" and scores:
            reference = {k: float(scores[k]) for k in (*VESSELS, "total")}

        def load(study_id=study_id, rng=rng, entry=entry) -> CTVolume:
            return _load_manifest_study(source, study_id, rng, entry)

        digest = f"{shard_digest}:{rng.start}:{rng.stop}"
        tasks.append(StudyTask(study_id, load, reference, lambda d=digest: d))
    return tasks


def release_tasks(root: str | os.PathLike, kind: str = "gated") -> list[StudyTask]:
    """The gated patients (with labels) or non-gated studies of a COCA release.

    Args:
      root: release root.
      kind: "gated" or "nongated".
    """
    root = Path(root)
    if kind == "gated":
        base = root / coca.GATED_DIR
        pids = coca.list_gated_patients(root).with_dicom

        def gated_files(pid: int) -> list[Path]:
            xml = base / "calcium_xml"
            names = xml.iterdir() if xml.is_dir() else []
            xmls = [p for p in names if p.stem.isdigit() and int(p.stem) == pid]
            return _tree_files(base / "patient" / str(pid), *xmls)

        return [
            StudyTask(
                coca.gated_study_id(pid),
                lambda pid=pid: coca.load_gated_study(root, pid),
                fingerprint=lambda pid=pid: files_fingerprint(gated_files(pid), root),
            )
            for pid in pids
        ]
    if kind == "nongated":
        sids = coca.list_nongated_studies(root)
        sheet_path = root / coca.NONGATED_DIR / "scores.xlsx"
        sheet = coca.load_nongated_scores(root) if sheet_path.is_file() else {}
        by_folder = {coca.nongated_folder_id(k): v for k, v in sheet.items()}
        tasks = []
        for sid in sids:
            row = by_folder.get(coca.nongated_folder_id(sid))
            ref = None if row is None else {k: float(row[k]) for k in (*VESSELS, "total")}
            files = [root / coca.NONGATED_DIR / sid, sheet_path]
            tasks.append(
                StudyTask(
                    coca.nongated_study_id(sid),
                    lambda sid=sid: coca.load_nongated_study(root, sid),
                    ref,
                    lambda files=files: files_fingerprint(_tree_files(*files), root),
                )
            )
        return tasks
    raise ValueError(f"kind must be 'gated' or 'nongated', got {kind!r}")


def load_dicom_study(
    folder: str | os.PathLike, study_id: str | None = None, series_uid: str = ""
) -> CTVolume:
    """Reads the chosen series of one DICOM study folder (recursively) as a ``CTVolume``.

    The series is ``inference.series_choice``'s (its reason in ``CTVolume.report``); the
    id is ``study_id`` or the folder's name (no header value is used).
    """
    folder = Path(folder)
    return series_choice.read_chosen_series(folder, study_id or folder.name, series_uid)


def dicom_tasks(root: str | os.PathLike, series_uid: str = "") -> list[StudyTask]:
    """One task per study folder: ``root`` itself when it directly holds ``*.dcm`` files,
    else each immediate subfolder with ``*.dcm`` files somewhere below it.

    A study folder is read recursively and one series chosen in it
    (``inference.series_choice``: the non-contrast axial series closest to 3 mm, or
    ``series_uid`` when given), so a patient folder holding a calcium-score series, a
    scout and a contrast series is one study. Ids are the subfolder names (no header
    value is used).

    Raises:
      FileNotFoundError: ``root`` is not a directory or holds no ``*.dcm`` file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    if any(p.is_file() for p in root.glob("*.dcm")):
        folders = [root]
    else:
        folders = [
            d
            for d in sorted(root.iterdir())
            if d.is_dir() and any(p.is_file() for p in d.rglob("*.dcm"))
        ]
    if not folders:
        raise FileNotFoundError(f"{root}: no *.dcm files")
    return [
        StudyTask(
            folder.name,
            lambda folder=folder: load_dicom_study(folder, series_uid=series_uid),
            fingerprint=lambda folder=folder: files_fingerprint(folder.rglob("*.dcm"), root),
        )
        for folder in folders
    ]


def nifti_tasks(root: str | os.PathLike) -> list[StudyTask]:
    """One task per ``.nii`` / ``.nii.gz`` file directly in ``root`` (sorted by name).

    Raises:
      FileNotFoundError: ``root`` is not a directory or holds no NIfTI file.
      ValueError: two files give the same id (``a.nii`` and ``a.nii.gz``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    files = sorted(p for p in root.iterdir() if p.is_file() and nifti_input.is_nifti_path(p))
    if not files:
        raise FileNotFoundError(f"{root}: no .nii or .nii.gz files")
    ids = [nifti_input.study_id_of(p) for p in files]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"{root}: two NIfTI files for the same study id {twice[0]!r}")
    return [
        StudyTask(
            sid,
            lambda p=p, sid=sid: nifti_input.read_nifti_ct(p, study_id=sid),
            fingerprint=lambda p=p: files_fingerprint([p], root),
        )
        for p, sid in zip(files, ids, strict=True)
    ]


def tasks_from_source(source: Any) -> tuple[list[StudyTask], list[str]]:
    """Tasks from ``config.source`` (``kind``: manifest | release | dicom, ``path``, ...).

    Fields: ``kind``; ``path`` (manifest.json or its folder, release root, DICOM root or
    NIfTI folder); ``split`` (read for a manifest); ``release_kind`` ("gated" or
    "nongated", read for a release); ``series_uid`` (read for DICOM, when present: force
    that series).

    Returns:
      (tasks, roots to strip from error messages).
    """
    kind = str(source.kind)
    path = str(source.path)
    if not path:
        raise ValueError("config.source.path is empty")
    if kind == "manifest":
        return manifest_tasks(path, str(source.split)), [path]
    if kind == "release":
        return release_tasks(path, str(source.release_kind)), [path]
    if kind == "dicom":
        return dicom_tasks(path, str(source.get("series_uid", "") or "")), [path]
    if kind == "nifti":
        return nifti_tasks(path), [path]
    raise ValueError(f"source.kind must be manifest, release, dicom or nifti, got {kind!r}")
