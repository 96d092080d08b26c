"""ArrayRecord shards: record counts, SHA-256, verification, and reads that name the shard.

The converter records, for every shard of ``manifest.json``, its ``num_records``,
``bytes`` (file size) and ``sha256``. `count_records` reads only the shard's footer
(ArrayRecord keeps the chunk index at the end: ~0.2 ms a shard), which is what
`manifest.load` checks on every load; `sha256_file` reads every byte, which is what
`verify_shards` (``tools/verify_dataset.py``) does. A truncated shard reports 0 records
from its footer, so the cheap check catches truncation and a shard written by another
conversion; a flipped byte inside a record needs the hash.

`NamedShardSource` is Grain's ``ArrayRecordDataSource`` whose read errors (a corrupt
chunk raises ``RuntimeError: Corrupted Riegeli/records file ...`` naming no file) are
re-raised as `ShardReadError` naming the shard and the record within it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, SupportsIndex

import grain

_HASH_BLOCK = 1 << 22  # 4 MiB reads


class ShardReadError(RuntimeError):
    """A shard that could not be read; the message names the file and the record."""


def count_records(path: str | os.PathLike) -> int:
    """Number of records in an ArrayRecord file, from its footer only.

    Returns 0 for a truncated or empty file (its footer is gone).
    """
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(path), "readahead_buffer_size:0")
    try:
        return int(reader.num_records())
    finally:
        reader.close()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest's entry fields of a finished shard: num_records, bytes, sha256."""
    return {
        "num_records": count_records(path),
        "bytes": os.path.getsize(path),
        "sha256": sha256_file(path),
    }


def check_shard(path: Path, entry: dict[str, Any], *, full: bool) -> str | None:
    """What is wrong with one shard against its manifest entry, or None.

    Args:
      path: the shard file.
      entry: its manifest entry (``num_records``; ``bytes`` and ``sha256`` when recorded).
      full: also hash every byte (else: existence, size, footer record count).
    """
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if "bytes" in entry and size != int(entry["bytes"]):
        return f"{size} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
    try:
        n = count_records(path)
    except Exception as e:  # array_record raises bare RuntimeError / OSError types
        return f"unreadable ({type(e).__name__}: {e})"
    if n != int(entry["num_records"]):
        return f"holds {n} records, the manifest says {entry['num_records']}"
    if full:
        if "sha256" not in entry:
            return "no sha256 in the manifest (written before hashes were kept): re-convert"
        if sha256_file(path) != entry["sha256"]:
            return "sha256 differs from the manifest's (the bytes changed)"
    return None


def verify_shards(manifest: Any, *, full: bool = True) -> list[tuple[str, str, str]]:
    """Checks every shard of a loaded `manifest.Manifest`.

    Returns:
      ``(split, shard path relative to the manifest folder, problem)`` for each bad shard;
      empty when all are good.
    """
    bad = []
    for split, info in manifest.splits.items():
        for entry in info["shards"]:
            problem = check_shard(manifest.root / entry["path"], entry, full=full)
            if problem:
                bad.append((split, entry["path"], problem))
    return bad


class NamedShardSource(grain.sources.ArrayRecordDataSource):
    """Grain's ArrayRecord source; a failed read raises `ShardReadError` naming the shard."""

    def __init__(self, paths: Sequence[str], *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(paths, *args, **kwargs)
        except (RuntimeError, OSError) as e:  # a damaged footer: opening fails
            bad = []
            for p in [paths] if isinstance(paths, str | os.PathLike) else paths:
                try:
                    count_records(p)
                except (RuntimeError, OSError):
                    bad.append(str(p))
            raise ShardReadError(
                f"cannot open shard {', '.join(bad) or paths}: {e} "
                "(check the dataset with tools/verify_dataset.py; re-convert to repair it)"
            ) from e

    def _where(self, key: SupportsIndex) -> str:
        try:
            reader, position = self._reader_idx_and_position(key)
            return f"{self._paths[reader]} record {int(position)}"
        except Exception:  # private helper of array_record: name every shard instead
            return f"one of {[str(p) for p in self._paths]} (global record {int(key)})"

    def __getitem__(self, record_key: SupportsIndex) -> bytes:
        try:
            return super().__getitem__(record_key)
        except (RuntimeError, OSError) as e:
            raise ShardReadError(
                f"cannot read shard {self._where(record_key)}: {e} "
                "(check the dataset with tools/verify_dataset.py; re-convert to repair it)"
            ) from e

    def __getitems__(self, record_keys: Sequence[SupportsIndex]) -> Sequence[bytes]:
        try:
            return super().__getitems__(record_keys)
        except (RuntimeError, OSError):
            return [self[k] for k in record_keys]  # re-read one by one to name the bad one
