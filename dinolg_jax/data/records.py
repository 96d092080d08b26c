"""The slice record: one ArrayRecord entry per CT slice, with an explicit, versioned schema.

Wire format (little endian, no pickle)::

    b"DLGR" | u16 version | u32 header_len | header (UTF-8 JSON) | array payloads

The JSON header holds the scalar fields and, for each array, its dtype, shape, byte
offset and length inside the payload and its codec (``raw`` or ``zlib``). Label masks
are ~99.96 % zeros, so they are stored zlib-compressed; the HU image is stored raw so
that decoding it is a single ``np.frombuffer``.

Fields (version 2; version 1 had no ``position_mm``, ``orientation`` or
``lossy_compression``, and its shards are refused with a message to re-convert):
    image:              int16 [H, W], Hounsfield units.
    labels:             uint8 [H, W], 0 background, 1 RCA, 2 LAD, 3 LCA (left main), 4 LCX
                        (COCA); a converted folder's mask labels as given (0 .. 255).
    study:              str, dataset-local de-identified id (e.g. ``"gated-0007"``).
    slice:              int, index of the slice in its z-ascending series.
    num_slices:         int, number of slices in the series.
    z_mm:               float, slice position (ImagePositionPatient z), mm.
    pixel_mm:           float32 [2], (row, col) pixel spacing, mm.
    slice_thickness_mm: float, slice thickness from the z-step, mm.
    lesion_centers:     float32 [K, 2], (row, col) centroid of each lesion's connected
                        component, pixels; K = 0 on slices without calcium.
    lesion_vessels:     uint8 [K], vessel label of each lesion.
    has_calcium:        bool, True iff ``labels`` has any foreground pixel.
    kind:               str, ``"gated"`` or ``"nongated"`` (a COCA release,
                        ``data/convert.py``), ``"dicom"`` or ``"nifti"`` (any CT
                        collection, ``data/convert_folder.py``).
    kvp:                float, tube voltage (0 when unknown).
    position_mm:        float64 [3], LPS world position (ImagePositionPatient) of the
                        slice's voxel (0, 0) in the canonical layout, mm.
    orientation:        float64 [6], ImageOrientationPatient of the canonical layout
                        (column direction, row direction; ~(1, 0, 0, 0, 1, 0)).
    lossy_compression:  bool, the study's pixels went through lossy compression.

With ``position_mm``, ``orientation`` and ``pixel_mm`` a study rebuilt from its records
has the geometry it was read with (``data/volume.py``), so outputs made from a
converted dataset (NIfTI) sit where the DICOM does.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Collection
from typing import Any

import numpy as np

MAGIC = b"DLGR"
VERSION = 2
_PREFIX = struct.Struct("<4sHI")

# name -> (dtype, ndim, codec)
ARRAY_FIELDS: dict[str, tuple[str, int, str]] = {
    "image": ("int16", 2, "raw"),
    "labels": ("uint8", 2, "zlib"),
    "pixel_mm": ("float32", 1, "raw"),
    "lesion_centers": ("float32", 2, "raw"),
    "lesion_vessels": ("uint8", 1, "raw"),
    "position_mm": ("float64", 1, "raw"),
    "orientation": ("float64", 1, "raw"),
}
# name -> python type
SCALAR_FIELDS: dict[str, type] = {
    "study": str,
    "slice": int,
    "num_slices": int,
    "z_mm": float,
    "slice_thickness_mm": float,
    "has_calcium": bool,
    "kind": str,
    "kvp": float,
    "lossy_compression": bool,
}


class RecordError(ValueError):
    """A record that does not follow the schema (bad magic, version, field or shape)."""


def encode(record: dict[str, Any]) -> bytes:
    """Serialises one slice record.

    Args:
      record: every field of the schema (module docstring); arrays are cast to the
        schema dtype, which must not change their values.

    Returns:
      The record's bytes.

    Raises:
      RecordError: a missing or unknown field, a wrong rank, or a lossy cast.
    """
    missing = (set(ARRAY_FIELDS) | set(SCALAR_FIELDS)) - set(record)
    unknown = set(record) - set(ARRAY_FIELDS) - set(SCALAR_FIELDS)
    if missing or unknown:
        raise RecordError(f"record fields: missing {sorted(missing)}, unknown {sorted(unknown)}")
    header: dict[str, Any] = {"scalars": {}, "arrays": {}}
    for name, typ in SCALAR_FIELDS.items():
        value = record[name]
        if isinstance(value, np.generic):
            value = value.item()
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise RecordError(f"field {name!r} must be {typ.__name__}, got {type(value).__name__}")
        header["scalars"][name] = value
    payloads = []
    offset = 0
    for name, (dtype, ndim, codec) in ARRAY_FIELDS.items():
        value = np.asarray(record[name])
        if value.ndim != ndim:
            raise RecordError(f"field {name!r} must have rank {ndim}, got shape {value.shape}")
        cast = np.ascontiguousarray(value.astype(dtype, copy=False))
        if value.size and not np.array_equal(cast, value):
            raise RecordError(f"field {name!r} does not fit dtype {dtype}")
        data = cast.tobytes()
        if codec == "zlib":
            data = zlib.compress(data, 1)
        header["arrays"][name] = {
            "dtype": dtype,
            "shape": list(cast.shape),
            "codec": codec,
            "offset": offset,
            "nbytes": len(data),
        }
        payloads.append(data)
        offset += len(data)
    if header["scalars"]["has_calcium"] != bool(np.any(np.asarray(record["labels"]))):
        raise RecordError("has_calcium disagrees with labels")
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, VERSION, len(blob)) + blob + b"".join(payloads)


def array_shape(data: bytes, name: str) -> tuple[int, ...]:
    """Shape of array field ``name`` from a record's header, for any record version.

    The prefix and JSON header layout are the same in every version, so this reads old
    shards too (e.g. the slice size a model was trained at).

    Raises:
      RecordError: not a record, or no such field.
    """
    if len(data) < _PREFIX.size:
        raise RecordError("record is truncated")
    magic, _, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise RecordError(f"not a dinolg_jax slice record (magic {magic!r})")
    header = json.loads(bytes(data[_PREFIX.size : _PREFIX.size + hlen]))
    if name not in header["arrays"]:
        raise RecordError(f"record has no array field {name!r}")
    return tuple(int(d) for d in header["arrays"][name]["shape"])


def decode(data: bytes, fields: Collection[str] | None = None) -> dict[str, Any]:
    """Parses bytes written by `encode` into a dict of numpy arrays and scalars.

    Args:
      data: one record's bytes.
      fields: array fields to decode (default all); the scalars are always decoded.
        Pretraining reads only ``image`` and ``lesion_centers``: skipping ``labels``
        saves its zlib inflate (~0.2 ms for a 512 x 512 slice).

    Returns:
      The scalar fields and the requested array fields: raw arrays are views of `data`
      (copied only where their offset is misaligned for the dtype), zlib ones new.

    Raises:
      RecordError: not a record, an unsupported version, truncated bytes, or an unknown
        name in `fields`.
    """
    if fields is not None:
        unknown = set(fields) - set(ARRAY_FIELDS)
        if unknown:
            raise RecordError(f"unknown array fields {sorted(unknown)}")
    if len(data) < _PREFIX.size:
        raise RecordError("record is truncated")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise RecordError(f"not a dinolg_jax slice record (magic {magic!r})")
    if version != VERSION:
        hint = (
            " (written before slice geometry and the lossy flag went into records): re-run "
            "tools/convert_coca.py to rebuild the shards"
            if version < VERSION
            else ": it was written by a newer dinolg_jax"
        )
        raise RecordError(
            f"record version {version} is not supported (this code reads {VERSION}){hint}"
        )
    start = _PREFIX.size + hlen
    header = json.loads(bytes(data[_PREFIX.size : start]))
    out: dict[str, Any] = dict(header["scalars"])
    for name, spec in header["arrays"].items():
        if fields is not None and name not in fields:
            continue
        lo = start + spec["offset"]
        hi = lo + spec["nbytes"]
        if hi > len(data):
            raise RecordError(f"record is truncated inside field {name!r}")
        if spec["codec"] == "zlib":
            array = np.frombuffer(zlib.decompress(memoryview(data)[lo:hi]), spec["dtype"])
        else:  # a view of `data`, copied only when misaligned for its dtype
            dtype = np.dtype(spec["dtype"])
            if (hi - lo) % dtype.itemsize:
                raise RecordError(f"field {name!r} is not a whole number of {dtype} items")
            array = np.frombuffer(data, dtype, (hi - lo) // dtype.itemsize, lo)
            if not array.flags.aligned:
                array = np.frombuffer(data[lo:hi], dtype)
        out[name] = array.reshape(spec["shape"])
    return out
