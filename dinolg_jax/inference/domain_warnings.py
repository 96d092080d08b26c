"""Off-domain warnings: a study the scores were not defined on, or the models never saw.

A warning never changes a score: it is written beside it (the report, the ``warnings``
column of results.csv, the study's JSON). What is checked (``docs/agatston.md``):

* **Slice thickness** outside ``thickness_mm`` (2.5-3.0 mm): Agatston is defined on
  3 mm slices. The thickness is the header's SliceThickness, else the z step; a z step
  that differs from the header thickness by more than 10 % (overlapping or gapped
  reconstruction) is a warning of its own.
* **Tube voltage** other than 120 kVp (Agatston's 130 HU threshold is defined at 120
  kVp), or not recorded. :func:`kvp_threshold` gives the published kVp-adjusted
  threshold where there is one (``KVP_THRESHOLDS``); it is applied only on request
  (``config.kvp_adjusted_threshold``), and then the warning says so.
* **Contrast suspected**: :func:`blood_pool_hu`, a robust proxy for the blood pool's
  HU: the median HU of the voxels between 0 and 1000 HU (no air, lung or fat) in the
  central half of the field (rows and columns H/4..3H/4) of the middle third of the
  slices. There the heart and great vessels dominate: unenhanced blood and myocardium
  are 30-60 HU, so their median stays near 40-60 HU (muscle, liver and a little bone
  included), while iodinated blood (250-500 HU) fills the chambers and the aorta and
  lifts it well above ``contrast_hu`` (120 HU by default).
* **Pixel spacing / field of view** outside the range of the segmenter's training data
  (:class:`TrainedDomain`), widened by ``tolerance`` (10 %) on each side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dinolg_jax.data import shards
from dinolg_jax.data import split_grid as split_grid_lib
from dinolg_jax.data.volume import CTVolume
from dinolg_jax.runtime.json_file import read_json_dict

STANDARD_KVP = 120.0
# kVp -> (threshold HU, reference): the published threshold that gives, at that tube
# voltage, the Agatston score of 130 HU at 120 kVp.
KVP_THRESHOLDS: dict[float, tuple[float, str]] = {
    100.0: (
        147.0,
        "Nakazato et al., J Cardiovasc Comput Tomogr 2009;3:394-400 (147 HU at 100 kVp)",
    ),
}
THICKNESS_MM = (2.5, 3.0)
CONTRAST_HU = 120.0
DOMAIN_TOLERANCE = 0.1
_MIN_POOL_VOXELS = 200


@dataclass(frozen=True)
class TrainedDomain:
    """What the segmenter was trained on: in-plane spacing and field of view ranges, mm.

    Attributes:
      pixel_mm: (smallest, largest) pixel spacing over rows and columns, mm.
      fov_mm: (smallest, largest) field of view (spacing x pixels) over both axes, mm.
    """

    pixel_mm: tuple[float, float]
    fov_mm: tuple[float, float]


def kvp_threshold(kvp: float | None) -> tuple[float, str] | None:
    """The published kVp-adjusted threshold (HU, reference) for ``kvp``, or None."""
    if kvp is None:
        return None
    for volts, entry in KVP_THRESHOLDS.items():
        if abs(float(kvp) - volts) < 0.5:
            return entry
    return None


def blood_pool_hu(hu: np.ndarray) -> float | None:
    """The blood-pool proxy of the module docstring (HU), None when too few voxels.

    Args:
      hu: [Z, H, W] HU, canonical layout.
    """
    z, h, w = hu.shape
    lo, hi = z // 3, max(z // 3 + 1, (2 * z + 2) // 3)
    box = np.asarray(hu[lo:hi, h // 4 : (3 * h + 3) // 4, w // 4 : (3 * w + 3) // 4])
    tissue = box[(box >= 0) & (box <= 1000)]
    if tissue.size < _MIN_POOL_VOXELS:
        return None
    return float(np.median(tissue))


def study_warnings(
    study: CTVolume,
    *,
    domain: TrainedDomain | None = None,
    thickness_mm: tuple[float, float] = THICKNESS_MM,
    contrast_hu: float = CONTRAST_HU,
    tolerance: float = DOMAIN_TOLERANCE,
    threshold_note: str = "",
) -> list[str]:
    """The off-domain warnings of one study (module docstring), each one short line.

    Args:
      study: the volume as read (its geometry, kVp, HU).
      domain: the segmenter's training range; None: not checked.
      thickness_mm: the accepted slice thickness range, mm (inclusive).
      contrast_hu: blood-pool proxy above which contrast is suspected, HU.
      tolerance: relative widening of ``domain`` on each side.
      threshold_note: appended to the kVp warning (e.g. the adjusted threshold applied).
    """
    out = []
    g = study.geometry
    step = float(g.slice_thickness_mm)
    header = g.header_thickness_mm
    thick = float(header) if header else step
    if not thickness_mm[0] - 1e-6 <= thick <= thickness_mm[1] + 1e-6:
        out.append(
            f"slice thickness {thick:g} mm outside {thickness_mm[0]:g}-{thickness_mm[1]:g} mm "
            "(Agatston is defined at 3 mm)"
        )
    if header and study.hu.shape[0] > 1 and abs(step - header) > 0.1 * header:
        out.append(f"slice step {step:g} mm differs from the slice thickness {header:g} mm")
    if study.kvp is None:
        out.append("tube voltage not recorded (Agatston's 130 HU is defined at 120 kVp)")
    elif abs(float(study.kvp) - STANDARD_KVP) >= 0.5:
        text = f"tube voltage {float(study.kvp):g} kVp (Agatston's 130 HU is defined at 120 kVp)"
        out.append(text + (f"; {threshold_note}" if threshold_note else ""))
    pool = blood_pool_hu(study.hu)
    if pool is not None and pool > contrast_hu:
        out.append(
            f"contrast suspected (blood-pool proxy {pool:.0f} HU > {contrast_hu:g} HU): "
            "Agatston is defined without contrast"
        )
    if domain is not None:
        spacing = [float(v) for v in study.pixel_mm]
        fov = [s * n for s, n in zip(spacing, study.hu.shape[1:], strict=True)]
        for name, values, (lo, hi) in (
            ("pixel spacing", spacing, domain.pixel_mm),
            ("field of view", fov, domain.fov_mm),
        ):
            if min(values) < lo * (1 - tolerance) or max(values) > hi * (1 + tolerance):
                shown = " x ".join(f"{v:.3g}" for v in values)
                out.append(
                    f"{name} {shown} mm outside the segmenter's training range {lo:.3g}-{hi:.3g} mm"
                )
    return out


def grid_domain(grid: split_grid_lib.SplitGrid) -> TrainedDomain:
    """The spacing and field-of-view ranges of a training grid: the smallest and largest
    pixel spacing over both axes, and spacing x pixels along each axis (the records of a
    split share one size, so these bound every training study's field)."""
    fov = [grid.min_mm[i] * grid.shape[i] for i in (0, 1)]
    fov += [grid.max_mm[i] * grid.shape[i] for i in (0, 1)]
    return TrainedDomain((min(grid.min_mm), max(grid.max_mm)), (min(fov), max(fov)))


def trained_domain(segmenter_workdir: str | os.PathLike) -> TrainedDomain | None:
    """The spacing and field-of-view range a segmenter workdir was trained on.

    From the grid its ``summary.json`` recorded (``data.split_grid``: ``pixel_spacing_mm``
    and ``slice_size``, written by ``train/segment.py``) when there is one; else from its
    training manifest's split (``split_grid.split_grid``, at its ``eval_size``). None when
    neither can be read (then no domain warning is given).
    """
    from dinolg_jax.inference import loading

    workdir = Path(segmenter_workdir)
    grid = split_grid_lib.SplitGrid.from_summary(read_json_dict(workdir / "summary.json") or {})
    if grid is None:
        try:
            config = loading.read_config(workdir)
            manifest = loading.training_manifest(workdir, config)
            size = int(config.data.get("eval_size", 0) or 0)
            grid = split_grid_lib.split_grid(manifest, loading.train_split(config), input_size=size)
        except (OSError, ValueError, KeyError, AttributeError, shards.ShardReadError):
            return None
    return grid_domain(grid)
