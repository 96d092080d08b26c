"""Augmentation kernels and Grain ops against hand-computed and scipy references."""

import numpy as np
import pytest
from scipy import ndimage

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


def _reference_resize(image, box, size):
    """Crop, then bilinear with half-pixel centres, clamped to the crop (map_coordinates)."""
    top, left, h, w = box
    crop = image[top : top + h, left : left + w].astype(np.float64)
    ys = (np.arange(size) + 0.5) * h / size - 0.5
    xs = (np.arange(size) + 0.5) * w / size - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return ndimage.map_coordinates(crop, [yy, xx], order=1, mode="nearest")


def test_resized_crops_match_reference_and_flips_are_exact():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(40, 50)).astype(np.float32)
    boxes = np.array([[0, 0, 40, 50], [3, 7, 20, 11], [10, 20, 5, 30], [39, 49, 1, 1]])
    for size in (8, 16, 33):
        out = transforms.resized_crops(image, boxes, size)
        for box, got in zip(boxes, out, strict=True):
            np.testing.assert_allclose(got, _reference_resize(image, box, size), atol=1e-5)
        flips = transforms.resized_crops(
            image, boxes, size, flip_v=[True, False, True, True], flip_h=[True, True, False, False]
        )
        np.testing.assert_allclose(flips[0], out[0][::-1, ::-1], atol=1e-6)
        np.testing.assert_allclose(flips[1], out[1][:, ::-1], atol=1e-6)
        np.testing.assert_allclose(flips[2], out[2][::-1], atol=1e-6)
    # Same-size crop is the identity.
    np.testing.assert_array_equal(
        transforms.resized_crops(image, [[5, 6, 12, 12]], 12)[0], image[5:17, 6:18]
    )
    with pytest.raises(ValueError, match="do not fit"):
        transforms.resized_crops(image, [[35, 0, 10, 10]], 8)


def test_pair_table_and_shared_pairs():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    pairs = transforms.pair_table(image)
    np.testing.assert_array_equal(pairs.real, image)
    np.testing.assert_array_equal(pairs.imag, [[1, 2, 3, 3], [5, 6, 7, 7], [9, 10, 11, 11]])
    boxes = [[0, 0, 3, 4], [1, 1, 2, 2]]
    np.testing.assert_array_equal(
        transforms.resized_crops(image, boxes, 5, pairs=pairs),
        transforms.resized_crops(image, boxes, 5),
    )
    with pytest.raises(ValueError, match="pairs must be"):
        transforms.resized_crops(image, boxes, 5, pairs=pairs[:2])


@pytest.mark.parametrize("size", [16, 150])
def test_gaussian_blur_matches_scipy(size):
    rng = np.random.default_rng(2)
    images = rng.normal(size=(4, size, size)).astype(np.float32)
    sigmas = np.array([0.1, 0.7, 1.3, 2.0])
    out = transforms.gaussian_blur(images, sigmas, truncate=3.0)
    for img, s, got in zip(images, sigmas, out, strict=True):
        ref = ndimage.gaussian_filter(img.astype(np.float64), s, mode="reflect", truncate=3.0)
        np.testing.assert_allclose(got, ref, atol=2e-5)
    assert transforms.gaussian_blur(images[:0], sigmas[:0]).shape == (0, size, size)


def test_blur_kernel_is_scipy_impulse_response():
    # A delta through gaussian_blur gives the 2-D kernel: outer product of scipy's 1-D one.
    for sigma in (0.3, 1.0, 1.7):
        delta = np.zeros((1, 41, 41), np.float32)
        delta[0, 20, 20] = 1.0
        got = transforms.gaussian_blur(delta, np.array([sigma]), truncate=4.0)[0]
        line = np.zeros(41)
        line[20] = 1.0
        k = ndimage.gaussian_filter1d(line, sigma, truncate=4.0)
        np.testing.assert_allclose(got, np.outer(k, k), atol=1e-7)
    with pytest.raises(ValueError, match="> 0"):
        transforms.gaussian_blur(delta, np.array([0.0]))


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

    out = transforms.RandomCrop(16).random_map(el, _gen(1))
    top, left = divmod(int(out["image"][0, 0]), 64)
    np.testing.assert_array_equal(out["image"], image[top : top + 16, left : left + 16])
    np.testing.assert_array_equal(out["labels"], labels[top : top + 16, left : left + 16])

    out = transforms.RandomBrightness(1.0, 0.25).random_map(el, _gen(2))
    shift = out["image"] - image
    assert np.ptp(shift) < 1e-3 and 0.01 < abs(shift[0, 0]) <= 0.25  # float32 rounding at 4095

    g = _gen(3)
    u, s = g.random(), g.uniform(0.1, 2.0)
    assert u < 1.0
    out = transforms.GaussianBlur(1.0, (0.1, 2.0)).random_map(el, _gen(3))
    ref = ndimage.gaussian_filter(image.astype(np.float64), s, mode="reflect", truncate=3.0)
    np.testing.assert_allclose(out["image"], ref, rtol=1e-5, atol=1e-2)

    out = transforms.GaussianNoise(1.0, 0.1).random_map(el, _gen(4))
    assert abs((out["image"] - image).std() - 0.1) < 0.01

    out = transforms.RandomResizedCrop(16, (1.0, 1.0), (1.0, 1.0)).random_map(el, _gen(5))
    np.testing.assert_allclose(
        out["image"], _reference_resize(image, (0, 0, 64, 64), 16), atol=1e-3
    )

    hu = {"image": np.array([[-1000, 0], [500, 2000]], np.int16)}
    out = transforms.NormalizeHU((-1000, 1000)).map(hu)
    np.testing.assert_allclose(out["image"], [[-1, 0], [0.5, 1]], atol=1e-6)


def test_no_solarisation_or_colour_jitter():
    names = " ".join(dir(transforms)).lower()
    for banned in ("solar", "jitter", "colo", "grayscale"):
        assert banned not in names
