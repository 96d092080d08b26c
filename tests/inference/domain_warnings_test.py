"""Off-domain warnings with known answers: thickness, kVp, contrast, spacing / FOV."""

from __future__ import annotations

import numpy as np
import pytest

from dinolg_jax.data.volume import CTVolume, Geometry
from dinolg_jax.inference import domain_warnings as dw


def _chest(blood_hu: int, *, size: int = 64, slices: int = 9) -> np.ndarray:
    """Air outside a body disk of muscle (45 HU), lungs (-850) either side of a central
    heart disk of ``blood_hu`` (most of the central box's tissue, as in a cardiac scan),
    a spine disk of bone (700) posteriorly."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    img = np.full((size, size), -1000, np.int16)
    img[xx**2 + yy**2 < (0.48 * size) ** 2] = 45
    for side in (-1, 1):
        img[(xx - side * 0.33 * size) ** 2 + yy**2 < (0.12 * size) ** 2] = -850
    img[xx**2 + yy**2 < (0.22 * size) ** 2] = blood_hu
    img[xx**2 + (yy - 0.38 * size) ** 2 < (0.07 * size) ** 2] = 700
    return np.repeat(img[None], slices, axis=0)


def _volume(hu, *, pixel=(0.6, 0.6), step=3.0, header=3.0, kvp=120.0) -> CTVolume:
    g = Geometry.axial(pixel, np.arange(hu.shape[0]) * step, step, header_thickness_mm=header)
    return CTVolume("s", hu, g, kvp=kvp)


def test_blood_pool_proxy_is_the_median_of_tissue_in_the_central_box() -> None:
    hu = _chest(40)
    box = hu[3:6, 16:48, 16:48]
    tissue = box[(box >= 0) & (box <= 1000)]
    assert dw.blood_pool_hu(hu) == float(np.median(tissue)) == 40.0
    assert dw.blood_pool_hu(_chest(320)) == 320.0  # the enhanced heart fills the box
    assert dw.study_warnings(_volume(_chest(40))) == []
    (warning,) = dw.study_warnings(_volume(_chest(320)))
    assert warning.startswith("contrast suspected (blood-pool proxy 320 HU > 120 HU)")
    assert dw.blood_pool_hu(np.full((3, 8, 8), -1000, np.int16)) is None  # all air


@pytest.mark.parametrize(
    ("header", "step", "expected"),
    [
        (3.0, 3.0, []),
        (2.5, 2.5, []),
        (1.0, 1.0, ["slice thickness 1 mm outside 2.5-3 mm (Agatston is defined at 3 mm)"]),
        (None, 5.0, ["slice thickness 5 mm outside 2.5-3 mm (Agatston is defined at 3 mm)"]),
        (3.0, 1.5, ["slice step 1.5 mm differs from the slice thickness 3 mm"]),
    ],
)
def test_slice_thickness(header, step, expected) -> None:
    vol = _volume(_chest(40), step=step, header=header)
    assert dw.study_warnings(vol) == expected


def test_tube_voltage_and_the_published_adjusted_threshold() -> None:
    assert dw.kvp_threshold(100.0)[0] == 147.0 and "Nakazato" in dw.kvp_threshold(100)[1]
    assert dw.kvp_threshold(120.0) is None and dw.kvp_threshold(80.0) is None
    assert dw.kvp_threshold(None) is None
    assert dw.study_warnings(_volume(_chest(40), kvp=100.0), threshold_note="scored at 147 HU") == [
        "tube voltage 100 kVp (Agatston's 130 HU is defined at 120 kVp); scored at 147 HU"
    ]
    assert dw.study_warnings(_volume(_chest(40), kvp=None)) == [
        "tube voltage not recorded (Agatston's 130 HU is defined at 120 kVp)"
    ]


def test_spacing_and_field_of_view_against_the_trained_range() -> None:
    domain = dw.TrainedDomain(pixel_mm=(0.5, 0.8), fov_mm=(30.0, 50.0))
    # 64 px x 0.6 mm = 38.4 mm: inside both ranges.
    assert dw.study_warnings(_volume(_chest(40)), domain=domain) == []
    # 64 px x 0.3 mm = 19.2 mm: spacing under 0.45 (0.5 - 10 %), FOV under 27 mm.
    got = dw.study_warnings(_volume(_chest(40), pixel=(0.3, 0.3)), domain=domain)
    assert got == [
        "pixel spacing 0.3 x 0.3 mm outside the segmenter's training range 0.5-0.8 mm",
        "field of view 19.2 x 19.2 mm outside the segmenter's training range 30-50 mm",
    ]
    # 0.85 mm is within 10 % of 0.8 (FOV 54.4 mm within 10 % of 50): no warning.
    assert dw.study_warnings(_volume(_chest(40), pixel=(0.85, 0.85)), domain=domain) == []
    assert dw.study_warnings(_volume(_chest(40), pixel=(0.85, 0.85)), domain=domain,
                             tolerance=0.0)[0].startswith("pixel spacing 0.85")  # fmt: skip


def test_trained_domain_reads_the_grid_a_segmenter_summary_recorded(tmp_path) -> None:
    import json

    from dinolg_jax.data import split_grid

    grid = split_grid.SplitGrid(
        median_mm=(1.07, 1.07), min_mm=(0.98, 0.96), max_mm=(1.16, 1.2), shape=(112, 100),
        studies=240, split="train",
    )  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps({"step": 1, **grid.summary_fields()}))
    domain = dw.trained_domain(tmp_path)
    assert domain.pixel_mm == pytest.approx((0.96, 1.2))
    # fields: rows 0.98 x 112 = 109.76 .. 1.16 x 112 = 129.92; cols 0.96 x 100 = 96 .. 120
    assert domain.fov_mm == pytest.approx((96.0, 129.92))
    # no grid and no training config to fall back on: no domain, so no warning
    (tmp_path / "summary.json").write_text('{"step": 1, "pixel_')
    assert dw.trained_domain(tmp_path) is None
