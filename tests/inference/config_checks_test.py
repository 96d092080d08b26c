"""Inference config values out of range: one UsageError naming the key (exit 2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dinolg_jax.inference import config_checks
from dinolg_jax.runtime.cli import UsageError


def _config():
    spec = importlib.util.spec_from_file_location(
        "infer_config", Path(__file__).parents[2] / "configs" / "infer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batch_size", 0, "--config.batch_size=0 must be an integer >= 1"),
        ("seg_batch_size", -1, "--config.seg_batch_size=-1 must be an integer >= 0"),
        ("threshold", 1.5, "--config.threshold=1.5 must be -1"),
        ("scoring.connectivity", 6, "--config.scoring.connectivity=6 must be 4 or 8"),
        ("scoring.min_area_mm2", -1.0, "--config.scoring.min_area_mm2=-1.0 must be >= 0"),
        ("scoring.threshold_hu", float("nan"), "--config.scoring.threshold_hu=nan must be"),
        ("source.split", "", "--config.source.split is empty"),
        ("source.series_uid", "1.2.3", "--config.source.series_uid is read only with"),
        ("warnings.thickness_mm", (3.0, 2.5), "--config.warnings.thickness_mm=(3.0, 2.5)"),
        ("warnings.tolerance", -0.1, "--config.warnings.tolerance=-0.1 must be >= 0"),
    ],
)
def test_each_value_out_of_range_is_named(key, value, message) -> None:
    c = _config()
    config_checks.check_infer_values(c)  # the defaults pass
    *path, last = key.split(".")
    node = c
    for part in path:
        node = node[part]
    node[last] = value
    with pytest.raises(UsageError) as e:
        config_checks.check_infer_values(c)
    assert str(e.value).startswith(message)


def test_release_kind_is_checked_for_a_release() -> None:
    c = _config()
    c.source.kind, c.source.release_kind = "release", "both"
    with pytest.raises(UsageError, match="release_kind='both' is not one of"):
        config_checks.check_infer_values(c)
