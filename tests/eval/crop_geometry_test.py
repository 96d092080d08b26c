"""Tests of eval.crop_geometry against hand-computed areas."""

from __future__ import annotations

import numpy as np
import pytest

from dinolg_jax.eval import crop_geometry


def test_lesion_masks_split_vessels_and_four_connected_components():
    labels = np.zeros((8, 8), np.uint8)
    labels[1:3, 1:3] = 1  # 4 px
    labels[3, 3] = 1  # diagonal neighbour: its own lesion under 4-connectivity
    labels[5:7, 5] = 2  # 2 px of another vessel
    sizes = sorted(len(r) for r, _ in crop_geometry.lesion_masks(labels))
    assert sizes == [1, 2, 4]


def test_crop_areas_scale_with_the_resize_and_count_the_visible_part():
    lesion = (np.array([4, 4, 5, 5]), np.array([4, 5, 4, 5]))  # a 2 x 2 block
    # a 4 x 4 box around it resized to 8 px: 4 px x (8 / 4)^2 = 16
    area, rendered = crop_geometry.crop_areas(lesion, (16, 16), (3, 3, 4, 4), 8)
    assert area == pytest.approx(16.0)
    assert rendered == 16
    # same size: the resize is the identity
    assert crop_geometry.crop_areas(lesion, (16, 16), (2, 2, 8, 8), 8) == (4.0, 4)
    # half the lesion inside a box of 2 x 4 -> 8 x 8: 2 px x 4 x 2 = 16
    area, _ = crop_geometry.crop_areas(lesion, (16, 16), (5, 2, 2, 4), 8)
    assert area == pytest.approx(16.0)
    assert crop_geometry.crop_areas(lesion, (16, 16), (8, 8, 8, 8), 8) is None


def test_summarise_gives_percentiles_and_token_shares():
    s = crop_geometry.summarise(np.arange(1, 12, dtype=float), patch=2)
    assert s["n"] == 11 and s["median_px"] == 6.0
    assert s["p10_px"] == pytest.approx(2.0) and s["p90_px"] == pytest.approx(10.0)
    assert s["median_token_share"] == pytest.approx(1.5)
    assert s["share_le_1px"] == pytest.approx(1 / 11)
    assert crop_geometry.summarise([], patch=8) == {"n": 0}
