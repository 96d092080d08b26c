"""The values of an inference config, checked before any model or study is loaded.

``tools/infer.py`` calls :func:`check_infer_values` after the paths are checked
(``runtime.workdirs.check_infer_config``): a value out of range is a user mistake, so it
is one ``error:`` line and exit status 2 (``runtime.cli.UsageError``), never a traceback
halfway through a cohort.
"""

from __future__ import annotations

import math
from typing import Any

from dinolg_jax.runtime.cli import UsageError

RELEASE_KINDS = ("gated", "nongated")


def _number(value: Any, flag: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{flag}={value!r} must be a finite number")
    return float(value)


def _integer(value: Any, flag: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{flag}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_infer_values(config: Any) -> None:
    """Raises ``UsageError`` naming the first ``--config.<key>`` whose value cannot be.

    Checked: ``batch_size`` >= 1, ``seg_batch_size`` >= 0, ``threshold`` -1 or in
    [0, 1], ``scoring`` (finite ``threshold_hu``, ``connectivity`` 4 or 8,
    ``min_area_mm2`` >= 0), ``source.release_kind`` (release), ``source.split`` (manifest),
    ``source.series_uid`` only with DICOM, and when present ``warnings`` (``thickness_mm``
    an increasing pair of positive mm, ``contrast_hu`` finite, ``tolerance`` >= 0).
    """
    _integer(config.batch_size, "--config.batch_size", 1)
    _integer(config.seg_batch_size, "--config.seg_batch_size", 0)
    t = _number(config.threshold, "--config.threshold")
    if t != -1.0 and not 0.0 <= t <= 1.0:
        raise UsageError(f"--config.threshold={t:g} must be -1 (the probe's own) or in [0, 1]")
    _number(config.scoring.threshold_hu, "--config.scoring.threshold_hu")
    if config.scoring.connectivity not in (4, 8) or isinstance(config.scoring.connectivity, bool):
        raise UsageError(
            f"--config.scoring.connectivity={config.scoring.connectivity!r} must be 4 or 8"
        )
    if _number(config.scoring.min_area_mm2, "--config.scoring.min_area_mm2") < 0:
        raise UsageError(
            f"--config.scoring.min_area_mm2={config.scoring.min_area_mm2!r} must be >= 0"
        )
    source = config.source
    if source.kind == "release" and source.release_kind not in RELEASE_KINDS:
        raise UsageError(
            f"--config.source.release_kind={source.release_kind!r} is not one of "
            f"{list(RELEASE_KINDS)}"
        )
    if source.kind == "manifest" and not source.split:
        raise UsageError("--config.source.split is empty: name the manifest split to score")
    if source.get("series_uid") and source.kind != "dicom":
        raise UsageError(
            f"--config.source.series_uid is read only with source.kind=dicom, not {source.kind!r}"
        )
    warn = config.get("warnings")
    if warn:
        pair = list(warn.thickness_mm)
        lo, hi = (
            (_number(v, "--config.warnings.thickness_mm") for v in pair)
            if len(pair) == 2
            else (0, 0)
        )
        if not 0 < lo <= hi:
            raise UsageError(
                f"--config.warnings.thickness_mm={tuple(pair)!r} must be (low, high) mm with "
                "0 < low <= high"
            )
        _number(warn.contrast_hu, "--config.warnings.contrast_hu")
        if _number(warn.tolerance, "--config.warnings.tolerance") < 0:
            raise UsageError(f"--config.warnings.tolerance={warn.tolerance!r} must be >= 0")
