"""inference.resolution: the in-plane map to a model's grid and back, and a 512 px
phantom scored by an oracle segmenter at a coarse grid against its true Agatston."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from dinolg_jax.data import coca
from dinolg_jax.inference import system
from dinolg_jax.inference.resolution import ModelGrid
from dinolg_jax.phantom import coca_release
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.scoring.agatston import agatston


def _centres(n_study: int, n_resized: int, offset: int, n_model: int) -> np.ndarray:
    """Study-pixel coordinate of each model pixel's centre (cv2's pixel-centre rule)."""
    i = np.arange(n_model) + offset
    return (i + 0.5) * n_study / n_resized - 0.5


def test_map_to_model_places_pixels_at_their_world_position() -> None:
    # non-square pixels: rows 0.5 mm, columns 0.8 mm -> a 2 mm grid of 64 x 64
    grid = ModelGrid((2.0, 2.0), (64, 64))
    m = grid.mapping((300, 200), (0.5, 0.8))
    assert (m.study_shape, m.resized_shape, m.model_shape) == ((300, 200), (75, 80), (64, 64))
    assert m.shrink
    rr, cc = np.mgrid[0:300, 0:200]
    ramp = (rr * 2 + cc * 5).astype(np.int16)  # linear: area averaging keeps it exact
    out = m.to_model(ramp[None])[0]
    r_c = _centres(300, 75, (75 - 64) // 2, 64)  # crop: 5 rows, 8 columns off the start
    c_c = _centres(200, 80, (80 - 64) // 2, 64)
    expected = np.rint(r_c[:, None] * 2 + c_c[None, :] * 5)
    np.testing.assert_array_equal(out[1:-1, 1:-1], expected[1:-1, 1:-1])
    # a study smaller than the model's field is padded with air, centred
    small = grid.mapping((40, 40), (2.0, 2.0))
    assert small is not None and small.resized_shape == (40, 40)
    out = small.to_model(np.full((1, 40, 40), 50, np.int16))[0]
    assert (out[12:52, 12:52] == 50).all() and (out[:12] == -1024).all()
    assert (out[:, :12] == -1024).all() and out.sum() == 50 * 1600 - 1024 * (64 * 64 - 1600)


def test_map_back_puts_a_model_pixel_block_on_its_study_pixels() -> None:
    grid = ModelGrid((2.0, 2.0), (16, 16))
    m = grid.mapping((80, 64), (0.5, 0.5))  # resized (20, 16): rows cropped by 2
    probs = np.zeros((1, 16, 16, 3), np.float32)
    probs[..., 0] = 1.0
    probs[0, 5:8, 4:6] = (0.0, 0.0, 1.0)  # class 2 on model rows 5-7, columns 4-5
    back = m.labels_to_study(probs)[0]
    # model row i covers study rows 4 (i + 2) .. 4 (i + 2) + 3; columns 4 j .. 4 j + 3
    expected = np.zeros((80, 64), np.uint8)
    expected[28:40, 16:24] = 2
    # bilinear corners: p = 0.625 x 0.625 = 0.39 < 0.5, so the block's 4 corners round off
    expected[[28, 28, 39, 39], [16, 23, 16, 23]] = 0
    np.testing.assert_array_equal(back, expected)
    full = m.to_study(probs)[0]
    np.testing.assert_allclose(full.sum(-1), 1.0, atol=1e-6)  # still probabilities
    # outside the model's view (the 2 cropped model rows each side): background
    assert (full[:8, :, 0] == 1.0).all() and (full[-8:, :, 0] == 1.0).all()


def test_a_study_like_the_training_slices_is_not_resampled() -> None:
    grid = ModelGrid((3.0, 3.0), (64, 64), range_mm=((2.6, 3.7), (2.6, 3.7)))
    assert grid.mapping((64, 64), (3.5, 3.5)) is None
    assert grid.mapping((64, 64), (2.4, 2.4)) is None  # within 10 % of 2.6
    assert grid.mapping((64, 64), (2.2, 2.2)) is not None
    assert grid.mapping((128, 128), (3.0, 3.0)) is not None  # a segmenter: size too
    gate = ModelGrid((3.0, 3.0), (64, 64), ((2.6, 3.7), (2.6, 3.7)), resizes=True)
    assert gate.mapping((128, 128), (1.5, 1.5)) is None  # resized whole to 64: 3 mm
    assert gate.mapping((512, 512), (0.2, 0.2)) is not None  # resized whole: 1.6 mm
    with pytest.raises(ValueError, match="positive"):
        ModelGrid((0.0, 1.0), (8, 8))


def _oracle(study, grid: ModelGrid):
    """A perfect segmenter at the model grid: each model pixel that any true lesion voxel
    falls in gets that artery (what a model trained on labels rasterised at that grid
    marks). Looked up by the model-grid HU slice it is handed."""
    m = grid.mapping(study.hu.shape[1:], study.pixel_mm)
    model_hu = m.to_model(study.hu)
    onehot = np.zeros((*model_hu.shape, 5), np.float32)
    onehot[..., 0] = 1.0
    for v in range(1, 5):
        frac = m.to_model(((study.labels == v) * 1000).astype(np.int16))
        hit = frac > 0
        onehot[hit] = np.eye(5, dtype=np.float32)[v]
    table = {model_hu[k].tobytes(): onehot[k] for k in range(len(model_hu))}

    def prepare(hu: np.ndarray) -> np.ndarray:
        return np.stack([table[np.asarray(h, np.int16).tobytes()] for h in hu]) * 10.0

    return system.SliceModel(lambda p, x: x, {}, prepare, "oracle", grid.shape, grid)


@pytest.fixture(scope="module")
def phantom512(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel512")
    coca_release.make_release(root, n_gated=2, n_nongated=0, seed=0, size=512, slices=(20, 24))
    return [coca.load_gated_study(root, pid) for pid in (0, 1)]


@pytest.mark.parametrize("size", [64, 128])
def test_512_px_phantom_through_a_coarse_grid_keeps_agatston_within_10_percent(
    phantom512, size: int
) -> None:
    """The issue's check: a 512 px series scored by a segmenter working at a coarser grid
    (the phantom's median field, 202 mm, at 64 or 128 px) gives Agatston within 10 % of
    the one computed from the true mask."""
    mesh = mesh_lib.make_mesh()
    grid = ModelGrid((202.0 / size, 202.0 / size), (size, size))
    for study in phantom512:
        truth = agatston(study.hu, study.labels, study.pixel_mm, study.slice_thickness_mm)
        assert truth.total > 10  # both patients have calcium
        pipe = system.CacPipeline(_oracle(study, grid), mesh, batch_size=8)
        res = pipe.score(study, "unet_only", keep_labels=True)
        assert "segmenter" in res.resampled
        assert res.labels.shape == study.hu.shape
        assert abs(res.summary["total"] - truth.total) <= 0.10 * truth.total, (
            size,
            study.study_id,
            res.summary["total"],
            truth.total,
        )


def test_without_a_grid_another_size_is_refused_naming_the_option() -> None:
    mesh = mesh_lib.make_mesh()

    def zeros(params, x):
        return jnp.zeros((*x.shape[:3], 5))

    seg = system.SliceModel(zeros, {}, lambda h: h[..., None] * 1.0, "u", (16, 16))
    pipe = system.CacPipeline(seg, mesh, batch_size=8)
    with pytest.raises(ValueError, match="--model_spacing_mm"):
        pipe.segment(np.zeros((2, 32, 32), np.int16), [0], (0.5, 0.5))
