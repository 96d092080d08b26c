"""Where studies come from for inference: a manifest split, a COCA release, DICOM folders.

Each source is a list of :class:`StudyTask` (a de-identified id plus a ``load()`` that
reads the study when called, as a ``data.volume.CTVolume`` with its real geometry), so
a study that fails to read fails alone, inside the inference loop, and becomes an error
row while the rest complete.

* :func:`manifest_tasks`: the records of one split of a converted dataset, regrouped per
  study (a study's records are contiguous and z-ascending, see ``data/manifest.py``);
  the geometry comes from the records (``position_mm``, ``orientation``, ``pixel_mm``),
  so there is no DICOM to reference and no SEG.
* :func:`release_tasks`: the gated patients (with their annotations as ground truth) or
  the non-gated studies of a COCA release, read through ``data/coca.py``.
* :func:`dicom_tasks`: each subfolder of a root (or the root itself when it holds the
  ``*.dcm`` files) is one study, read recursively with ``data/dicom.read_series`` (the
  longest series is kept); its id is the folder name (no DICOM header value is used, so
  nothing identifying enters the outputs unless the folder names themselves carry it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dinolg_jax.data import coca, dicom, records
from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data.volume import CTVolume, Geometry


@dataclass(frozen=True)
class StudyTask:
    """One study to score: its id and a loader (errors surface when ``load`` is called)."""

    study_id: str
    load: Callable[[], CTVolume]


def _load_manifest_study(source, study_id: str, rng: range) -> CTVolume:
    hu, labels, positions = [], [], []
    rec: dict[str, Any] = {}
    lossy = False
    for i in rng:
        rec = records.decode(source[i])
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
    return CTVolume(
        study_id=study_id,
        hu=np.stack(hu).astype(np.int16),
        geometry=geometry,
        labels=np.stack(labels).astype(np.uint8),
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
    import grain

    man = manifest_lib.load(manifest)
    source = grain.sources.ArrayRecordDataSource(man.shard_paths(split))
    tasks = []
    for study_id in man.studies_in(split):
        rng = man.study_range(study_id, split)

        def load(study_id=study_id, rng=rng) -> CTVolume:
            return _load_manifest_study(source, study_id, rng)

        tasks.append(StudyTask(study_id, load))
    return tasks


def release_tasks(root: str | os.PathLike, kind: str = "gated") -> list[StudyTask]:
    """The gated patients (with labels) or non-gated studies of a COCA release.

    Args:
      root: release root.
      kind: "gated" or "nongated".
    """
    root = Path(root)
    if kind == "gated":
        pids = coca.list_gated_patients(root).with_dicom
        return [
            StudyTask(
                coca.gated_study_id(pid),
                lambda pid=pid: coca.load_gated_study(root, pid),
            )
            for pid in pids
        ]
    if kind == "nongated":
        sids = coca.list_nongated_studies(root)
        return [
            StudyTask(
                coca.nongated_study_id(sid),
                lambda sid=sid: coca.load_nongated_study(root, sid),
            )
            for sid in sids
        ]
    raise ValueError(f"kind must be 'gated' or 'nongated', got {kind!r}")


def load_dicom_study(folder: str | os.PathLike, study_id: str | None = None) -> CTVolume:
    """Reads one DICOM series folder (recursively) as a canonical ``CTVolume``.

    Its id is ``study_id`` or the folder's name (no header value is used).
    """
    folder = Path(folder)
    return dicom.read_series(folder, study_id=study_id or folder.name)


def dicom_tasks(root: str | os.PathLike) -> list[StudyTask]:
    """One task per study folder: ``root`` itself when it directly holds ``*.dcm`` files,
    else each immediate subfolder with ``*.dcm`` files somewhere below it.

    A study folder is read recursively and its longest series kept
    (``data.dicom.read_series``), so a patient folder holding a calcium-score series and a
    scout is one study. Ids are the subfolder names (no header value is used).

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
            lambda folder=folder: load_dicom_study(folder),
        )
        for folder in folders
    ]


def tasks_from_source(source: Any) -> tuple[list[StudyTask], list[str]]:
    """Tasks from ``config.source`` (``kind``: manifest | release | dicom, ``path``, ...).

    Fields: ``kind``; ``path`` (manifest.json or its folder, release root, or DICOM root);
    ``split`` (read for a manifest); ``release_kind`` ("gated" or "nongated", read for a
    release).

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
        return dicom_tasks(path), [path]
    raise ValueError(f"source.kind must be manifest, release or dicom, got {kind!r}")
