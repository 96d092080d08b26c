"""MultiCrop: guided crops hold their lesion, crop counts per config, RNG discipline."""

import numpy as np
import pytest

from configs import common
from dinolg_jax.data import crop_codec, transforms
from dinolg_jax.data.multicrop import MultiCrop, crop_position
from dinolg_jax.phantom import synthetic_records

QUIET = dict(  # every intensity augmentation off, for exact pixel checks
    blur_probs=(0.0, 0.0, 0.0), brightness_prob=0.0, noise_prob=0.0
)


def _gen(seed):
    return np.random.Generator(np.random.Philox(seed))


def _record(seed, size=64, lesions=2):
    return synthetic_records.synthetic_slice(np.random.default_rng(seed), size, num_lesions=lesions)


def _small(**kw):
    return MultiCrop(global_size=32, local_size=16, debug=True, **kw)


def test_guided_crops_contain_their_lesion():
    op = _small(n_local_random=2, n_local_guided=6, guided_offset_px=20.0, **QUIET)
    for seed in range(40):
        rec = _record(seed, lesions=1 + seed % 3)
        out = op.random_map(rec, _gen(seed))
        boxes, flips = out["boxes"][op.n_global :], out["flips"][op.n_global :]
        assert out["guided_hit"].tolist() == op.guided_mask.tolist()
        for j in np.flatnonzero(op.guided_mask):
            lesion = out["lesion"][j]
            # The targeted lesion is one of the record's.
            assert np.min(np.abs(rec["lesion_centers"] - lesion).sum(1)) < 1e-4
            top, left, h, w = boxes[j]
            assert top <= lesion[0] <= top + h - 1 and left <= lesion[1] <= left + w - 1
            # Sizes come from the local scale range (sides rounded).
            assert 0.04 <= h * w / 64**2 <= 0.45
            # The lesion's bright disc shows up where the box maps its centre.
            r, c = crop_position(boxes[j], 16, flips[j], lesion)
            assert -0.5 <= r <= 15.5 and -0.5 <= c <= 15.5
            ri, ci = int(np.clip(round(r), 0, 15)), int(np.clip(round(c), 0, 15))
            assert out["local"][j, ri, ci, 0] > transforms.normalize_hu(np.int16(300))


def test_crop_position_inverts_the_sampling_grid():
    # Crops of images holding each pixel's row (then col) give the sampled source
    # position of every crop pixel; crop_position must map it back to that pixel.
    op = _small(n_local_random=0, n_local_guided=4, hu_window=(-10000, 10000), **QUIET)
    rec = _record(3, size=128, lesions=3)
    grid = np.mgrid[0:128, 0:128].astype(np.int16) * 10
    pos = []
    for axis in (0, 1):
        out = op.random_map({**rec, "image": grid[axis]}, _gen(0))
        pos.append(out["local"][..., 0] * 1000)  # normalised * 10000 / 10 = position
    for j in range(4):
        box, flip = out["boxes"][op.n_global + j], out["flips"][op.n_global + j]
        assert box[2] > 16 and box[3] > 16  # downscaling: no clamping at the crop edge
        for i, k in ((0, 0), (15, 15), (0, 15), (7, 3)):
            ri, ci = crop_position(box, 16, flip, (pos[0][j, i, k], pos[1][j, i, k]))
            assert abs(ri - i) < 1e-2 and abs(ci - k) < 1e-2


def test_slices_without_calcium_get_random_local_crops():
    op = _small(n_local_random=3, n_local_guided=5)
    rec = _record(1, lesions=0)
    out = op.random_map(rec, _gen(1))
    assert not out["guided_hit"].any() and not out["has_calcium"]
    assert np.isnan(out["lesion"]).all()
    same = MultiCrop(global_size=32, local_size=16, debug=True, n_local_random=8, n_local_guided=0)
    ref = same.random_map(rec, _gen(1))
    # Same draws: identical crops, so a guided slot on a clean slice is a random crop.
    np.testing.assert_array_equal(out["local"], ref["local"])


@pytest.mark.parametrize(("variant", "n_random", "n_guided"), [("dino", 16, 0), ("dinolg", 12, 4)])
def test_crop_counts_and_shapes_per_config(variant, n_random, n_guided):
    data = common.data_config(variant)
    assert (data.n_local_random, data.n_local_guided) == (n_random, n_guided)
    op = MultiCrop.from_config(data)
    out = op.random_map(_record(0, size=256, lesions=2), _gen(0))
    assert out["global"].shape == (2, 224, 224, 1) and out["global"].dtype == np.float32
    assert out["local"].shape == (16, 96, 96, 1) and out["local"].dtype == np.float32
    assert out["guided_hit"].tolist() == [False] * n_random + [True] * n_guided
    assert op.guided_mask.sum() == n_guided
    assert np.isfinite(out["global"]).all() and np.isfinite(out["local"]).all()


def test_blur_probabilities_follow_dino():
    op = _small(n_local_random=8, n_local_guided=0)
    sig = np.stack([op.random_map(_record(0), _gen(i))["blur_sigma"] for i in range(60)])
    assert (sig[:, 0] > 0).all()  # first global: always
    assert 0 < (sig[:, 1] > 0).mean() < 0.3  # second global: 0.1
    assert 0.35 < (sig[:, 2:] > 0).mean() < 0.65  # locals: 0.5
    assert sig[sig > 0].min() >= 0.1 and sig.max() <= 2.0


def test_no_hidden_intensity_transform():
    # With blur, brightness, noise and flips off and a whole-image crop, a global crop is
    # exactly the resized normalised slice: no solarisation or jitter hides anywhere.
    op = _small(global_scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_prob=0, vflip_prob=0, **QUIET)
    rec = _record(2)
    out = op.random_map(rec, _gen(5))
    image = transforms.normalize_hu(rec["image"])
    ref = transforms.resized_crops(image, [[0, 0, 64, 64]], 32)[0]
    # The normalisation's affine part is applied after the resize: float32 rounding only.
    np.testing.assert_allclose(out["global"][0, ..., 0], ref, atol=1e-6)
    np.testing.assert_allclose(out["global"][1, ..., 0], ref, atol=1e-6)


def test_deterministic_and_never_uses_global_numpy_rng(monkeypatch):
    op = _small()
    rec = _record(4)
    saved = np.random.get_state()  # noqa: NPY002  (the point: global state must not matter)
    np.random.seed(1)  # noqa: NPY002
    first = op.random_map(rec, _gen(7))
    np.random.seed(2)  # noqa: NPY002
    second = op.random_map(rec, _gen(7))
    np.random.set_state(saved)  # noqa: NPY002

    def forbidden(*args, **kwargs):
        raise AssertionError("global numpy RNG used")

    for name in (
        "seed",
        "random",
        "rand",
        "randn",
        "randint",
        "uniform",
        "normal",
        "choice",
        "shuffle",
        "permutation",
        "random_sample",
        "standard_normal",
        "integers",
    ):
        if hasattr(np.random, name):
            monkeypatch.setattr(np.random, name, forbidden)
    third = op.random_map(rec, _gen(7))
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
        np.testing.assert_array_equal(first[key], third[key])
    other = op.random_map(rec, _gen(8))
    assert not np.array_equal(first["local"], other["local"])


def test_bad_input():
    with pytest.raises(ValueError, match="crop counts"):
        MultiCrop(n_global=0)
    with pytest.raises(ValueError, match="blur radius 6"):
        MultiCrop(global_size=32, local_size=6)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        _small().random_map({"image": np.zeros((2, 64, 64), np.int16)}, _gen(0))


def test_batch_render_equals_per_sample_crops():
    # The pipeline plans per element and renders a batch at once, crops-major; the
    # result must be what random_map gives sample by sample, for float32 and uint16.
    op = _small(n_local_random=3, n_local_guided=2)
    recs = [_record(s, lesions=s % 3) for s in range(3)]
    singles = [op.random_map(r, _gen(10 + i)) for i, r in enumerate(recs)]
    plans = [op.plan(r, _gen(10 + i)) for i, r in enumerate(recs)]
    for dtype in (np.float32, np.uint16):
        g = np.zeros((op.n_global, 3, 32, 32, 1), dtype)
        loc = np.zeros((op.n_local, 3, 16, 16, 1), dtype)
        op.render(plans, g, loc)
        for b, single in enumerate(singles):
            for key, out in (("global", g), ("local", loc)):
                got = crop_codec.decode(out[:, b])
                tol = 1e-7 if dtype == np.float32 else crop_codec.UINT16_STEP / 2 + 1e-6
                assert np.abs(got - single[key]).max() <= tol, (dtype, key)
        for key in ("guided_hit", "boxes", "flips", "blur_sigma"):
            np.testing.assert_array_equal(plans[1].fields[key], singles[1][key])
