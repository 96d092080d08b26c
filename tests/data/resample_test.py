"""Crop resampling and blur kernels against scipy references (map_coordinates, gaussian_filter)."""

import numpy as np
import pytest
from crop_reference import reference_resize
from scipy import ndimage

from dinolg_jax.data import resample


def test_resized_crops_match_reference_and_flips_are_exact():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(40, 50)).astype(np.float32)
    boxes = np.array([[0, 0, 40, 50], [3, 7, 20, 11], [10, 20, 5, 30], [39, 49, 1, 1]])
    for size in (8, 16, 33):
        out = resample.resized_crops(image, boxes, size)
        for box, got in zip(boxes, out, strict=True):
            np.testing.assert_allclose(got, reference_resize(image, box, size), atol=1e-5)
        flips = resample.resized_crops(
            image, boxes, size, flip_v=[True, False, True, True], flip_h=[True, True, False, False]
        )
        np.testing.assert_allclose(flips[0], out[0][::-1, ::-1], atol=1e-6)
        np.testing.assert_allclose(flips[1], out[1][:, ::-1], atol=1e-6)
        np.testing.assert_allclose(flips[2], out[2][::-1], atol=1e-6)
    # Same-size crop is the identity.
    np.testing.assert_array_equal(
        resample.resized_crops(image, [[5, 6, 12, 12]], 12)[0], image[5:17, 6:18]
    )
    with pytest.raises(ValueError, match="do not fit"):
        resample.resized_crops(image, [[35, 0, 10, 10]], 8)


@pytest.mark.parametrize("size", [16, 150])
def test_gaussian_blur_matches_scipy(size):
    rng = np.random.default_rng(2)
    images = rng.normal(size=(4, size, size)).astype(np.float32)
    sigmas = np.array([0.1, 0.7, 1.3, 2.0])
    out = resample.gaussian_blur(images, sigmas, truncate=3.0)
    for img, s, got in zip(images, sigmas, out, strict=True):
        ref = ndimage.gaussian_filter(img.astype(np.float64), s, mode="reflect", truncate=3.0)
        np.testing.assert_allclose(got, ref, atol=2e-5)
    assert resample.gaussian_blur(images[:0], sigmas[:0]).shape == (0, size, size)


def test_blur_kernel_is_scipy_impulse_response():
    # A delta through gaussian_blur gives the 2-D kernel: outer product of scipy's 1-D one.
    for sigma in (0.3, 1.0, 1.7):
        delta = np.zeros((1, 41, 41), np.float32)
        delta[0, 20, 20] = 1.0
        got = resample.gaussian_blur(delta, np.array([sigma]), truncate=4.0)[0]
        line = np.zeros(41)
        line[20] = 1.0
        k = ndimage.gaussian_filter1d(line, sigma, truncate=4.0)
        np.testing.assert_allclose(got, np.outer(k, k), atol=1e-7)
    with pytest.raises(ValueError, match="> 0"):
        resample.gaussian_blur(delta, np.array([0.0]))


def _reference_crop(image, box, size, flip, sigma, truncate, scale, shift):
    """Resize (map_coordinates), flip, scale, scipy blur, shift: the unfused recipe."""
    crop = scale * reference_resize(image, box, size)
    crop = crop[::-1] if flip[0] else crop
    crop = crop[:, ::-1] if flip[1] else crop
    if sigma > 0:
        crop = ndimage.gaussian_filter(crop, sigma, mode="reflect", truncate=truncate)
    return crop + shift


def test_resized_blurred_crops_equal_resize_then_blur():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(60, 70)).astype(np.float32)
    # Edge boxes (the right / bottom border, width and height 1), up- and downscaling.
    boxes = np.array(
        [[0, 0, 60, 70], [5, 50, 30, 20], [59, 3, 1, 40], [10, 69, 25, 1], [20, 30, 7, 9]]
        + [[int(rng.integers(0, 30)), int(rng.integers(0, 30)), 30, 40]] * 3
    )
    flips = rng.random((len(boxes), 2)) < 0.5
    # No blur, a sigma too small for any tap (radius 0), and radii 1 .. 6.
    sigmas = np.array([0.0, 0.12, 0.4, 1.0, 2.0, 0.0, 1.7, 0.7])
    shift = rng.normal(size=len(boxes)).astype(np.float32)
    for size, truncate in ((24, 3.0), (9, 2.0)):
        got = resample.resized_blurred_crops(
            image,
            boxes,
            size,
            flips[:, 0],
            flips[:, 1],
            sigmas,
            truncate=truncate,
            scale=0.5,
            shift=shift,
        )
        assert got.shape == (len(boxes), size, size) and got.dtype == np.float32
        for i, box in enumerate(boxes):
            ref = _reference_crop(image, box, size, flips[i], sigmas[i], truncate, 0.5, shift[i])
            np.testing.assert_allclose(got[i], ref, atol=2e-5, err_msg=f"crop {i}")
    with pytest.raises(ValueError, match=">= 0"):
        resample.resized_blurred_crops(image, boxes[:1], 8, sigmas=[-1.0])
    with pytest.raises(ValueError, match="smaller than the side"):
        resample.resized_blurred_crops(image, boxes[:1], 4, sigmas=[2.0])
    with pytest.raises(ValueError, match="sigmas and shifts"):
        resample.resized_blurred_crops(image, boxes[:2], 8, sigmas=[1.0])


def test_render_crops_noise_and_finish_match_reference():
    # alpha * flip(blur(resize)) + std * table window + gamma, written into batch slots.
    rng = np.random.default_rng(4)
    image = rng.normal(size=(50, 60)).astype(np.float32)
    table = rng.standard_normal(2000).astype(np.float32)
    boxes = [[0, 0, 50, 60], [3, 4, 20, 30], [30, 10, 20, 11]]
    flips, sigmas = [[True, False], [False, True], [True, True]], [0.0, 1.1, 0.5]
    radii = resample.blur_radii(np.array(sigmas), 3.0).tolist()
    stds, offsets, gammas = [0.3, 0.0, 1.5], [0, 17, 1500], [0.25, -1.0, 0.0]
    out = np.full((3, 2, 12, 12), np.nan, np.float32)
    resample.render_crops(
        out[:, 0], image, boxes, flips, sigmas, radii, 0.7, gammas, stds, offsets, table
    )
    assert np.isnan(out[:, 1]).all()  # the other batch slot is untouched
    for k, box in enumerate(boxes):
        ref = _reference_crop(image, box, 12, flips[k], sigmas[k], 3.0, 0.7, gammas[k])
        ref = ref + stds[k] * table[offsets[k] : offsets[k] + 144].reshape(12, 12)
        np.testing.assert_allclose(out[k, 0], ref, atol=2e-5, err_msg=f"crop {k}")
