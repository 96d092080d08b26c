"""The voxels a score counted: what the label NIfTI, the DICOM SEG and the overlays show.

A segmenter's label volume marks a region around each lesion (at the model's grid, or
mapped back from it); Agatston counts only its voxels with ``HU >= threshold`` that lie
in a lesion (per slice and per artery, connected in-plane) of at least the minimum area
(``scoring/agatston.py``, ``docs/agatston.md``). :func:`split_scored` splits the labels
into those scored voxels and the calcium in lesions below the minimum area, with the
same rule computed independently (``scipy.ndimage.label`` per artery over the labelled
slices, no connection across slices), so that what is written is exactly what was
scored: a reader who sums the label file's voxels of an artery times the voxel volume
gets the artery's volume score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

AREA_RTOL = 1e-9  # the minimum-area comparison's tolerance, as scoring.agatston's
NUM_VESSELS = 4


def split_scored(
    hu: np.ndarray,
    labels: np.ndarray,
    pixel_mm: Sequence[float],
    convention: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """(scored labels, unscored calcium) of a predicted label volume.

    Args:
      hu: int16 [Z, H, W] HU.
      labels: uint8 [Z, H, W] (0 background, 1..4 the arteries).
      pixel_mm: (row, col) spacing, mm.
      convention: ``AgatstonResult.convention`` (``threshold_hu``, ``connectivity`` 4 or
        8, ``min_area_mm2``).

    Returns:
      ``scored`` uint8 [Z, H, W]: the artery label on voxels that are labelled, at or above
      the threshold and in a lesion of at least the minimum area, 0 elsewhere;
      ``unscored`` bool [Z, H, W]: labelled voxels at or above the threshold in lesions
      below the minimum area.
    """
    hu = np.asarray(hu)
    labels = np.asarray(labels)
    if hu.shape != labels.shape or hu.ndim != 3:
        raise ValueError(f"hu {hu.shape} and labels {labels.shape} must be the same [Z, H, W]")
    threshold = float(convention["threshold_hu"])
    connectivity = int(convention["connectivity"])
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    min_area = float(convention["min_area_mm2"])
    area_px = float(pixel_mm[0]) * float(pixel_mm[1])
    scored = np.zeros(labels.shape, np.uint8)
    unscored = np.zeros(labels.shape, bool)
    candidate = (labels > 0) & (hu >= threshold)
    zs = np.flatnonzero(candidate.any(axis=(1, 2)))
    if zs.size == 0:
        return scored, unscored
    plane = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = plane  # in-plane only: lesions never join across slices
    cand, lab = candidate[zs], labels[zs]
    for vessel in range(1, NUM_VESSELS + 1):
        mask = cand & (lab == vessel)
        comp, n = ndimage.label(mask, structure)
        if n == 0:
            continue
        area = np.bincount(comp.ravel(), minlength=n + 1) * area_px
        keep = area >= min_area * (1 - AREA_RTOL)
        keep[0] = False
        big = keep[comp]
        scored[zs] = np.where(big, np.uint8(vessel), scored[zs])
        unscored[zs] |= mask & ~big
    return scored, unscored
