"""Augmentation kernels and Grain ops against hand-computed and scipy references."""

import numpy as np
import pytest

from dinolg_jax.data import transforms


def _gen(seed=0):
    return np.random.Generator(np.random.Philox(seed))


def test_normalize_hu_exact():
    hu = np.array([[-3024, -1000, -500], [0, 130, 999], [1000, 1001, 3071]], np.int16)
    out = transforms.normalize_hu(hu, (-1000, 1000))
    expected = np.array([[-1.0, -1.0, -0.5], [0.0, 0.13, 0.999], [1.0, 1.0, 1.0]])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # A calcium window: [-200, 600] -> 130 HU at 2 * 330 / 800 - 1.
    assert transforms.normalize_hu(np.int16(130), (-200, 600)) == pytest.approx(-0.175, abs=1e-6)
    with pytest.raises(ValueError, match="lo < hi"):
        transforms.normalize_hu(hu, (100, 100))


def test_clip_hu_and_affine_give_normalize_hu():
    hu = np.array([[-3024, -1000, -500], [0, 130, 999], [1000, 1001, 3071]], np.int16)
    for window in ((-1000, 1000), (-200.5, 600.25), (-40000, 40000)):
        scale, offset = transforms.hu_affine(window)
        for image in (hu, hu.astype(np.float64)):
            clipped = transforms.clip_hu(image, window)
            assert clipped.dtype == np.float32
            np.testing.assert_array_equal(clipped, np.clip(hu, *window).astype(np.float32))
            np.testing.assert_allclose(
                clipped * scale + offset, transforms.normalize_hu(image, window), atol=1e-6
            )
    with pytest.raises(ValueError, match="lo < hi"):
        transforms.clip_hu(hu, (5, 5))


def test_add_noise_statistics_and_determinism():
    images = np.zeros((3, 96, 96), np.float32)
    transforms.add_noise(images, np.array([0.5, 0.0, 2.0]), _gen(3))
    assert abs(images[0].std() - 0.5) < 0.02 and abs(images[0].mean()) < 0.02
    assert not images[1].any()
    assert abs(images[2].std() - 2.0) < 0.08
    again = np.zeros((3, 96, 96), np.float32)
    transforms.add_noise(again, np.array([0.5, 0.0, 2.0]), _gen(3))
    np.testing.assert_array_equal(images, again)
    other = np.zeros((3, 96, 96), np.float32)
    transforms.add_noise(other, np.array([0.5, 0.0, 2.0]), _gen(4))
    assert not np.array_equal(images, other)
    # Exactly std * a window of the table at offsets drawn from the generator.
    offsets = _gen(3).integers(0, transforms.NOISE_TABLE_SIZE - 96 * 96 + 1, size=3)
    window = transforms.noise_table()[offsets[2] : offsets[2] + 96 * 96].reshape(96, 96)
    np.testing.assert_array_equal(images[2], window * np.float32(2.0))
    # Neighbouring pixels are uncorrelated.
    assert abs(np.corrcoef(images[0, :, :-1].ravel(), images[0, :, 1:].ravel())[0, 1]) < 0.05


def test_sample_boxes_ranges_and_fallback():
    boxes = transforms.sample_boxes(_gen(5), 4000, 64, 80, (0.05, 0.4), (3 / 4, 4 / 3))
    top, left, h, w = boxes.T
    assert (
        (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 80).all()
    )
    frac = h * w / (64 * 80)
    # Rounding of the sides moves the area by at most a few percent at these sizes.
    assert frac.min() > 0.04 and frac.max() < 0.43
    assert (w / h).min() > 0.7 and (w / h).max() < 1.45
    assert abs(np.median(frac) - 0.225) < 0.02
    # Positions cover the valid range.
    assert top.min() == 0 and (top + h).max() == 64
    # One range per box.
    both = transforms.sample_boxes(_gen(7), 2000, 64, 80, [(0.5, 0.6), (0.01, 0.02)] * 1000)
    frac = both[:, 2] * both[:, 3] / (64 * 80)
    assert frac[0::2].min() > 0.47 and frac[0::2].max() < 0.63
    assert frac[1::2].min() > 0.005 and frac[1::2].max() < 0.03
    with pytest.raises(ValueError, match="bad crop scale"):
        transforms.sample_boxes(_gen(0), 2, 64, 64, [(0.5, 0.6), (0.3, 0.2)])
    # Nothing fits (ratio >= 2 at the whole area of a square): centred, clamped ratio.
    fb = transforms.sample_boxes(_gen(6), 3, 60, 60, (1.0, 1.0), (2.0, 3.0))
    np.testing.assert_array_equal(fb, [[15, 0, 30, 60]] * 3)


def test_grain_ops():
    image = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    labels = (np.arange(64 * 64) % 5).astype(np.uint8).reshape(64, 64)
    el = {"image": image, "labels": labels}

    out = transforms.RandomFlip(1.0, 1.0).random_map(el, _gen())
    np.testing.assert_array_equal(out["image"], image[::-1, ::-1])
    np.testing.assert_array_equal(out["labels"], labels[::-1, ::-1])
    out = transforms.RandomFlip(horizontal_prob=1.0, vertical_prob=0.0).random_map(el, _gen())
    np.testing.assert_array_equal(out["image"], image[:, ::-1])
    assert transforms.RandomFlip(0.0, 0.0).random_map(el, _gen())["image"] is image

    out = transforms.RandomBrightness(1.0, 0.25).random_map(el, _gen(2))
    shift = out["image"] - image
    assert np.ptp(shift) < 1e-3 and 0.01 < abs(shift[0, 0]) <= 0.25  # float32 rounding at 4095

    out = transforms.GaussianNoise(1.0, 0.1).random_map(el, _gen(4))
    assert abs((out["image"] - image).std() - 0.1) < 0.01
