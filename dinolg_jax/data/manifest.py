"""manifest.json: the index of a converted dataset (splits, shards, studies).

The converter writes one manifest beside its ArrayRecord shards; the Grain pipeline,
the probe, the U-Net and inference read it. Format (version 1)::

    {"version": 1, "record_version": 1, "seed": 0,
     "splits": {"train": {"shards": [{"path": "train-00000-of-00002.array_record",
                                      "num_records": 812}, ...],
                          "num_records": 1630, "num_studies": 34, "num_positive": 201},
                ...},
     "studies": {"gated-0003": {"kind": "gated", "split": "train", "num_slices": 48,
                                "records": {"train": 120, "pretrain": 3000},
                                "agatston": {"RCA": 0.0, ...}, "category": "high",
                                "calcified_slices": 5}, ...}}

``records`` maps a split to the global index of the study's first slice in that split,
counting over the split's shards concatenated in order; a study's slices are contiguous
and z-ascending. Shard paths are relative to the manifest's folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        """Absolute shard paths of `split`, in record order."""
        return [str(self.root / s["path"]) for s in self._split(split)["shards"]]

    def num_records(self, split: str) -> int:
        """Number of slice records in `split`."""
        return int(self._split(split)["num_records"])

    def studies_in(self, split: str) -> list[str]:
        """Study ids with records in `split`, ordered by their first record index."""
        self._split(split)
        ids = [s for s, e in self.studies.items() if split in e.get("records", {})]
        return sorted(ids, key=lambda s: self.studies[s]["records"][split])

    def study_range(self, study: str, split: str) -> range:
        """Global record indices of `study`'s slices in `split` (z-ascending)."""
        try:
            entry = self.studies[study]
            start = int(entry["records"][split])
        except KeyError as e:
            raise ManifestError(f"study {study!r} has no records in split {split!r}") from e
        return range(start, start + int(entry["num_slices"]))


def load(path: str | os.PathLike) -> Manifest:
    """Reads a manifest.json (or the folder holding one) and checks its version and shards.

    Raises:
      ManifestError: missing file, other version, or a shard file that does not exist.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"no manifest at {path}")
    data = json.loads(path.read_text())
    if data.get("version") != VERSION:
        raise ManifestError(f"{path}: manifest version {data.get('version')} != {VERSION}")
    manifest = Manifest(root=path.parent, data=data)
    for split in manifest.splits:
        total = 0
        for shard in manifest.splits[split]["shards"]:
            if not (manifest.root / shard["path"]).is_file():
                raise ManifestError(f"{path}: shard {shard['path']} of split {split} is missing")
            total += int(shard["num_records"])
        if total != manifest.num_records(split):
            raise ManifestError(
                f"{path}: split {split} counts {total} records in its shards, "
                f"says {manifest.num_records(split)}"
            )
    return manifest


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
