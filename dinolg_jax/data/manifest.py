"""manifest.json: the index of a converted dataset (splits, shards, studies).

The converter writes one manifest beside its ArrayRecord shards; the Grain pipeline,
the probe, the U-Net and inference read it. Format (version 1)::

    {"version": 1, "record_version": 1, "seed": 0,
     "splits": {"train": {"shards": [{"path": "train-00000-of-00002.array_record",
                                      "num_records": 812, "bytes": 418...,
                                      "sha256": "9f2c..."}, ...],
                          "num_records": 1630, "num_studies": 34, "num_positive": 201},
                ...},
     "studies": {"gated-0003": {"kind": "gated", "split": "train", "num_slices": 48,
                                "records": {"train": 120, "pretrain": 3000},
                                "agatston": {"RCA": 0.0, ...}, "category": "high",
                                "calcified_slices": 5}, ...}}

``records`` maps a split to the global index of the study's first slice in that split,
counting over the split's shards concatenated in order; a study's slices are contiguous
and z-ascending. Shard paths are relative to the manifest's folder. A study entry may
carry ``labels_unreliable`` (a list of reasons naming each ROI: unknown artery, lost
outline, 0 pixels, self-check), ``rois_flagged`` (a lone ROI outside the self-check's
bounds; the patient stays in its split) and ``hu_unreliable`` (slices whose HU cannot be
right, each file named; such a study has ``split`` ``"excluded"`` and no records); see
``data/convert.py``. Reads of a shard's records (`Manifest.slice_shape`, the pipelines)
go through `shards.NamedShardSource`, so a damaged shard is named.

Each shard's ``bytes`` and ``sha256`` (absent in manifests written before they were
kept) are checked by `load`: existence, size and the record count in the shard's footer
on every load (cheap); every byte's hash only by ``tools/verify_dataset.py``
(`shards.verify_shards`). A split with no records is valid in the file, but asking for
its shards (`Manifest.shard_paths`) raises a `ManifestError` saying which split is empty.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VERSION = 1
SPLITS = ("pretrain", "train", "val", "test")


class ManifestError(ValueError):
    """A manifest that is missing, of another version, or inconsistent with its shards."""


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest; `root` is the folder the shard paths are relative to."""

    root: Path
    data: dict[str, Any]

    @property
    def splits(self) -> dict[str, Any]:
        return self.data["splits"]

    @property
    def studies(self) -> dict[str, Any]:
        return self.data["studies"]

    @property
    def seed(self) -> int:
        return int(self.data.get("seed", 0))

    def _split(self, split: str) -> dict[str, Any]:
        if split not in self.splits:
            raise ManifestError(f"split {split!r} not in manifest (has {sorted(self.splits)})")
        return self.splits[split]

    def shard_paths(self, split: str) -> list[str]:
        """Absolute shard paths of `split`, in record order.

        Raises:
          ManifestError: `split` is not in the manifest, or has no records (a reader of
            zero shards would fail later with an error naming nothing).
        """
        shards = self._split(split)["shards"]
        if not shards or self.num_records(split) == 0:
            raise ManifestError(
                f"{self.root / 'manifest.json'}: split {split!r} has no records "
                f"(splits with records: {[k for k in self.splits if self.num_records(k)]}). "
                "val and test get patients only from risk categories with 3 or more labelled "
                "gated patients: convert a larger release (or phantom), or use another split"
            )
        return [str(self.root / s["path"]) for s in shards]

    def num_records(self, split: str) -> int:
        """Number of slice records in `split`."""
        return int(self._split(split)["num_records"])

    def studies_in(self, split: str) -> list[str]:
        """Study ids with records in `split`, ordered by their first record index."""
        self._split(split)
        ids = [s for s, e in self.studies.items() if split in e.get("records", {})]
        return sorted(ids, key=lambda s: self.studies[s]["records"][split])

    def slice_shape(self, split: str) -> tuple[int, int]:
        """(H, W) in pixels of the first record of ``split`` (any record version)."""

        from dinolg_jax.data import records
        from dinolg_jax.data.shards import NamedShardSource

        source = NamedShardSource(self.shard_paths(split))
        shape = records.array_shape(source[0], "image")
        return int(shape[0]), int(shape[1])

    def study_range(self, study: str, split: str) -> range:
        """Global record indices of `study`'s slices in `split` (z-ascending)."""
        try:
            entry = self.studies[study]
            start = int(entry["records"][split])
        except KeyError as e:
            raise ManifestError(f"study {study!r} has no records in split {split!r}") from e
        return range(start, start + int(entry["num_slices"]))


def read_unchecked(path: str | os.PathLike) -> Manifest:
    """Reads a manifest.json (or the folder holding one) without looking at its shards.

    Raises:
      ManifestError: missing file, not valid JSON (truncated), or another version; the
        message names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"no manifest at {path}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(
            f"{path}: not valid JSON ({e}); the file is truncated or damaged: "
            "re-run the conversion into its folder"
        ) from e
    if not isinstance(data, dict) or data.get("version") != VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise ManifestError(f"{path}: manifest version {version} != {VERSION}")
    return Manifest(root=path.parent, data=data)


def load(path: str | os.PathLike) -> Manifest:
    """Reads a manifest (`read_unchecked`) and checks it against its shards.

    Every shard must exist, have the recorded size (when recorded) and hold the recorded
    number of records (read from the shard's footer); split totals must add up. Hashes are
    not checked here (`shards.verify_shards`).

    Raises:
      ManifestError: missing or unreadable file, other version, malformed content, or a
        shard that is missing, truncated, or holds another number of records; the message
        names the manifest and the shard.
    """
    from dinolg_jax.data import shards as shards_lib

    manifest = read_unchecked(path)
    path = manifest.root / "manifest.json" if Path(path).is_dir() else Path(path)
    try:
        for split in manifest.splits:
            total = 0
            for shard in manifest.splits[split]["shards"]:
                problem = shards_lib.check_shard(manifest.root / shard["path"], shard, full=False)
                where = f"{path}: shard {shard['path']} of split {split}"
                if problem == "missing":
                    raise ManifestError(f"{where} is missing")
                if problem:
                    raise ManifestError(
                        f"{where}: {problem}; run tools/verify_dataset.py, re-convert to repair"
                    )
                total += int(shard["num_records"])
            if total != manifest.num_records(split):
                raise ManifestError(
                    f"{path}: split {split} counts {total} records in its shards, "
                    f"says {manifest.num_records(split)}"
                )
        manifest.studies.items()
    except ManifestError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ManifestError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from e
    return manifest


def record_studies(manifest: Manifest | str | os.PathLike, split: str) -> np.ndarray:
    """str [N]: the study of every record of ``split``, in record order (N =
    ``num_records(split)``; the groups of a per-patient bootstrap over the split's slices).

    Args:
      manifest: a loaded :class:`Manifest`, or its path (loaded and checked).
      split: a split of it.
    """
    m = manifest if isinstance(manifest, Manifest) else load(manifest)
    out = np.empty(m.num_records(split), dtype=object)
    for study in m.studies_in(split):
        out[list(m.study_range(study, split))] = study
    return out.astype(str)


def save(data: dict[str, Any], path: str | os.PathLike) -> None:
    """Writes a manifest atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    data = {**data, "version": VERSION}
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
