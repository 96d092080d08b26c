"""The in-plane grid a model trained on a manifest split learnt at: pixel spacing and size.

One function computes it for everything that needs it: the probe (``eval/probe.py``) and
the segmenter (``train/segment.py``) record it in their ``summary.json`` when they train,
and inference (``inference/loading.py``) reads it from there, or from the training
manifest for workdirs written before it was recorded, to resample a study of another
spacing to it.

Spacing: per study of the split, the ``pixel_mm`` (row, col) of its first record (a
study's slices share it); the median, min and max over the studies. Size: the records'
(H, W), or ``input_size`` x ``input_size`` when the model saw every record resized to
that side (``data.eval_size``): the spacings are then scaled by record size /
``input_size`` per axis, the spacing of the resized slices.

In ``summary.json`` (:meth:`SplitGrid.summary_fields`)::

    "pixel_spacing_mm": {"median": [row, col], "min": [row, col], "max": [row, col],
                         "studies": 12, "split": "train"},
    "slice_size": [H, W]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.data import records
from dinolg_jax.data.shards import NamedShardSource

SPACING_KEY = "pixel_spacing_mm"
SIZE_KEY = "slice_size"


@dataclasses.dataclass(frozen=True)
class SplitGrid:
    """The grid of a split's slices as a model saw them.

    Attributes:
      median_mm, min_mm, max_mm: (row, col) pixel spacing, mm: median, min and max over
        the split's studies.
      shape: (H, W) pixels of the slices the model saw.
      studies: number of studies measured.
      split: the split's name.
    """

    median_mm: tuple[float, float]
    min_mm: tuple[float, float]
    max_mm: tuple[float, float]
    shape: tuple[int, int]
    studies: int
    split: str

    def summary_fields(self) -> dict[str, Any]:
        """The ``summary.json`` keys (module docstring): plain lists, floats and ints."""
        return {
            SPACING_KEY: {
                "median": list(self.median_mm),
                "min": list(self.min_mm),
                "max": list(self.max_mm),
                "studies": self.studies,
                "split": self.split,
            },
            SIZE_KEY: list(self.shape),
        }

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> SplitGrid | None:
        """The grid a ``summary.json`` recorded, or None when it holds none (written
        before it was recorded) or an incomplete or malformed one."""
        spacing, size = summary.get(SPACING_KEY), summary.get(SIZE_KEY)
        if not isinstance(spacing, Mapping) or not isinstance(size, list | tuple):
            return None
        try:
            pairs = [tuple(float(v) for v in spacing[k]) for k in ("median", "min", "max")]
            shape = tuple(int(v) for v in size)
            grid = cls(
                pairs[0], pairs[1], pairs[2], shape,  # type: ignore[arg-type]
                int(spacing.get("studies", 0)), str(spacing.get("split", "")),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None
        ok = all(len(p) == 2 and min(p) > 0 for p in pairs) and len(shape) == 2
        return grid if ok and min(shape) > 0 else None


def split_grid(
    manifest: manifest_lib.Manifest | str | os.PathLike, split: str, *, input_size: int = 0
) -> SplitGrid:
    """The grid of ``split`` of a manifest (module docstring).

    Args:
      manifest: a loaded manifest or its path (file or folder).
      split: the split the model was fitted on.
      input_size: the side every record was resized to (0: not resized).

    Returns:
      The :class:`SplitGrid`.

    Raises:
      ManifestError: no manifest, or the split has no records or no studies.
      shards.ShardReadError: a record that cannot be read (the shard named).
    """
    m = manifest if isinstance(manifest, manifest_lib.Manifest) else manifest_lib.load(manifest)
    source = NamedShardSource(m.shard_paths(split))
    spacings = []
    for study in m.studies_in(split):
        rec = records.decode(source[m.study_range(study, split).start], ["pixel_mm"])
        spacings.append(np.asarray(rec["pixel_mm"], np.float64))
    if not spacings:
        raise manifest_lib.ManifestError(f"{m.root}: split {split!r} has no studies")
    h, w = m.slice_shape(split)
    shape, scale = (h, w), np.ones(2)
    if int(input_size) > 0:
        shape = (int(input_size), int(input_size))
        scale = np.array([h / shape[0], w / shape[1]])
    mm = np.stack(spacings) * scale[None, :]

    def pair(v: np.ndarray) -> tuple[float, float]:
        return float(v[0]), float(v[1])

    return SplitGrid(
        median_mm=pair(np.median(mm, axis=0)),
        min_mm=pair(mm.min(axis=0)),
        max_mm=pair(mm.max(axis=0)),
        shape=(int(shape[0]), int(shape[1])),
        studies=len(spacings),
        split=str(split),
    )
