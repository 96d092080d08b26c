"""attn_calcium_ratio on hand-built attention maps and label masks."""

import numpy as np
import pytest

from dinolg_jax.eval.attention import attention_calcium_ratio, calcium_patch_mask


def test_calcium_patch_mask_divisible_and_not():
    labels = np.zeros((8, 8), np.uint8)
    labels[1, 6] = 2  # cell (0, 1) of a 2x2 grid
    np.testing.assert_array_equal(calcium_patch_mask(labels, (2, 2)), [[False, True, False, False]])
    # 5 rows on a 2-row grid: row 2 lies on the border and counts for both cells
    lab = np.zeros((5, 4), np.uint8)
    lab[2, 0] = 1
    np.testing.assert_array_equal(calcium_patch_mask(lab, (2, 2)), [[True, False, True, False]])
    # a stack
    both = calcium_patch_mask(np.stack([labels, np.zeros_like(labels)]), (2, 2))
    assert both.shape == (2, 4) and both[1].sum() == 0


def test_ratio_hand_computed():
    # 2x2 grid, calcium in patch 0 (chance 1/4). Head 0 puts 0.5 of its weight there,
    # head 1 puts 0.1; the head-mean map puts 0.3 -> ratios 2.0, 0.4 and 1.2.
    attn = np.array([[[0.5, 0.25, 0.25, 0.0], [0.1, 0.3, 0.3, 0.3]]])
    calcium = np.array([[True, False, False, False]])
    r = attention_calcium_ratio(attn, calcium)
    assert r["per_head"] == pytest.approx([2.0, 0.4])
    assert r["mean"] == pytest.approx(1.2)
    # weights need not sum to 1 (the CLS->CLS weight is left out): scaling changes nothing
    assert attention_calcium_ratio(attn * 0.7, calcium)["mean"] == pytest.approx(1.2)


def test_uniform_attention_is_chance_and_slices_without_calcium_are_left_out():
    attn = np.full((3, 2, 16), 1 / 16)
    calcium = np.zeros((3, 16), bool)
    calcium[0, [3, 7]] = True
    calcium[2, 5] = True
    r = attention_calcium_ratio(attn, calcium)
    assert r["n_slices"] == 2 and r["mean"] == pytest.approx(1.0)
    assert r["per_slice"] == pytest.approx([1.0, 1.0])
    assert r["slice_rows"] == [0, 2]  # slice 1 has no calcium patch
    none = attention_calcium_ratio(attn, np.zeros((3, 16), bool))
    assert none["n_slices"] == 0 and np.isnan(none["mean"])
    # all attention on the single calcium patch of slice 2: ratio = 16
    focus = np.zeros((1, 1, 16))
    focus[0, 0, 5] = 1.0
    assert attention_calcium_ratio(focus, calcium[2:])["mean"] == pytest.approx(16.0)
