"""Tests for scoring/agatston.py against a pure-Python flood-fill reference and hand cases."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from dinolg_jax.scoring import agatston as ag

# ---------------------------------------------------------------------------
# Independent reference: per slice, per vessel, breadth-first flood fill over pixels.


def _reference(hu, labels, pixel_mm, thickness, threshold, connectivity, min_area, norm, c):
    hu = np.asarray(hu).tolist()
    labels = np.asarray(labels).tolist()
    if connectivity == 4:
        steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    else:
        steps = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    pixel_area = pixel_mm[0] * pixel_mm[1]
    factor = thickness / 3.0 if norm else 1.0
    per_vessel = {name: 0.0 for name in ag.VESSELS}
    volume = 0.0
    mass_sum = 0.0
    lesions = []
    for z, (hu_s, lab_s) in enumerate(zip(hu, labels, strict=True)):
        h, w = len(hu_s), len(hu_s[0])
        seen = [[False] * w for _ in range(h)]
        for i in range(h):
            for j in range(w):
                v = lab_s[i][j]
                if seen[i][j] or v == 0 or hu_s[i][j] < threshold:
                    continue
                queue = [(i, j)]
                seen[i][j] = True
                pixels = []
                while queue:
                    a, b = queue.pop()
                    pixels.append((a, b))
                    for da, db in steps:
                        na, nb = a + da, b + db
                        if (
                            0 <= na < h
                            and 0 <= nb < w
                            and not seen[na][nb]
                            and lab_s[na][nb] == v
                            and hu_s[na][nb] >= threshold
                        ):
                            seen[na][nb] = True
                            queue.append((na, nb))
                area = len(pixels) * pixel_area
                if area < min_area - 1e-9:
                    continue
                values = [hu_s[a][b] for a, b in pixels]
                peak = max(values)
                if peak >= 400:
                    weight = 4
                elif peak >= 300:
                    weight = 3
                elif peak >= 200:
                    weight = 2
                else:
                    weight = 1
                mean = sum(values) / len(values)
                score = area * weight * factor
                name = ag.VESSELS[v - 1]
                per_vessel[name] += score
                volume += area * thickness
                mass_sum += area * thickness * mean
                lesions.append(
                    (
                        z,
                        name,
                        round(area, 9),
                        float(peak),
                        round(mean, 6),
                        weight,
                        round(score, 9),
                        round(sum(a for a, _ in pixels) / len(pixels), 6),
                        round(sum(b for _, b in pixels) / len(pixels), 6),
                    )
                )
    mass = None if c is None else c * mass_sum / 1000.0
    return per_vessel, volume, mass, sorted(lesions)


def _random_case(seed):
    rng = np.random.default_rng(seed)
    z, h, w = 3, 14, 16
    # Blocky vessel labels (2x2 blocks), then holes, so components of many sizes appear.
    coarse = rng.choice(5, size=(z, h // 2, w // 2), p=[0.4, 0.15, 0.15, 0.15, 0.15])
    labels = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.15] = 0
    hu = rng.integers(60, 480, size=(z, h, w)).astype(np.int16)
    hu[rng.random(hu.shape) < 0.05] = 130  # exact threshold values
    hu[rng.random(hu.shape) < 0.05] = 147
    return hu, labels


@pytest.mark.parametrize(
    ("connectivity", "min_area", "threshold", "norm"),
    list(itertools.product((4, 8), (0.0, 1.0), (130, 147), (True, False))),
)
def test_matches_flood_fill_reference(connectivity, min_area, threshold, norm):
    pixel_mm = (0.4, 0.6)  # 0.24 mm^2: a lesion needs 5 pixels to reach 1 mm^2
    for seed in (0, 1):
        hu, labels = _random_case(seed)
        res = ag.agatston(
            hu,
            labels,
            pixel_mm,
            2.5,
            threshold_hu=threshold,
            connectivity=connectivity,
            min_area_mm2=min_area,
            thickness_normalisation=norm,
            mass_factor=0.8,
        )
        per_vessel, volume, mass, lesions = _reference(
            hu, labels, pixel_mm, 2.5, threshold, connectivity, min_area, norm, 0.8
        )
        assert len(lesions) >= 6  # the case is not trivial
        got = sorted(
            (
                les.slice,
                les.vessel,
                round(les.area_mm2, 9),
                les.max_hu,
                round(les.mean_hu, 6),
                les.weight,
                round(les.score, 9),
                round(les.row, 6),
                round(les.col, 6),
            )
            for les in res.lesions
        )
        assert got == lesions
        for name in ag.VESSELS:
            assert res.per_vessel[name] == pytest.approx(per_vessel[name], rel=1e-12, abs=1e-12)
        assert res.total == pytest.approx(sum(per_vessel.values()), rel=1e-12)
        assert res.volume_mm3 == pytest.approx(volume, rel=1e-12)
        assert res.mass_mg == pytest.approx(mass, rel=1e-12)
        assert res.convention["connectivity"] == connectivity
        assert res.convention["min_area_mm2"] == min_area
        assert res.convention["threshold_hu"] == threshold


def test_lesion_order_and_volume_per_vessel():
    hu, labels = _random_case(3)
    res = ag.agatston(hu, labels, (0.5, 0.5), 3.0)
    keys = [(les.slice, ag.VESSELS.index(les.vessel)) for les in res.lesions]
    assert keys == sorted(keys)
    for name in ag.VESSELS:
        vol = sum(les.area_mm2 * 3.0 for les in res.lesions if les.vessel == name)
        assert res.volume_per_vessel[name] == pytest.approx(vol)
        assert res.per_vessel[name] == pytest.approx(
            sum(les.score for les in res.lesions if les.vessel == name)
        )


# ---------------------------------------------------------------------------
# Hand-computed cases.


def test_two_by_two_lesion_hand_computed():
    hu = np.zeros((8, 8), np.int16)
    labels = np.zeros((8, 8), np.uint8)
    hu[2:4, 3:5] = [[150, 250], [140, 180]]
    labels[2:4, 3:5] = 2  # LAD
    res = ag.agatston(hu, labels, (0.5, 0.5), 3.0)
    # area 4 x 0.25 = 1.0 mm^2, max 250 -> weight 2, factor 3/3 = 1.
    assert res.total == pytest.approx(2.0)
    assert res.per_vessel == {"RCA": 0.0, "LAD": 2.0, "LCA": 0.0, "LCX": 0.0}
    assert res.volume_mm3 == pytest.approx(3.0)
    assert res.mass_mg is None
    (les,) = res.lesions
    assert (les.slice, les.vessel, les.weight) == (0, "LAD", 2)
    assert les.area_mm2 == pytest.approx(1.0)
    assert les.max_hu == 250 and les.mean_hu == pytest.approx(180.0)
    assert (les.row, les.col) == (2.5, 3.5)
    # 1.5 mm slices: factor 0.5; raw sum without normalisation.
    assert ag.agatston(hu, labels, (0.5, 0.5), 1.5).total == pytest.approx(1.0)
    raw = ag.agatston(hu, labels, (0.5, 0.5), 1.5, thickness_normalisation=False)
    assert raw.total == pytest.approx(2.0)
    # Mass: 0.8 mg/(cm^3 HU) x 1.0 mm^2 x 3 mm x 180 HU / 1000 = 0.432 mg.
    res_m = ag.agatston(hu, labels, (0.5, 0.5), 3.0, mass_factor=0.8)
    assert res_m.mass_mg == pytest.approx(0.432)
    res_v = ag.agatston(hu, labels, (0.5, 0.5), 3.0, mass_factor=(0.7, 0.8, 0.9))
    assert res_v.mass_mg == pytest.approx(0.432)
    assert res_v.convention["mass_factor"] == 0.8


@pytest.mark.parametrize(
    ("peak", "weight"),
    [(129, 0), (130, 1), (199, 1), (200, 2), (299, 2), (300, 3), (399, 3), (400, 4), (1200, 4)],
)
def test_weight_boundaries(peak, weight):
    hu = np.zeros((1, 6, 6), np.int16)
    labels = np.zeros((1, 6, 6), np.uint8)
    hu[0, 1:3, 1:3] = 135
    hu[0, 2, 2] = peak
    labels[0, 1:3, 1:3] = 1
    res = ag.agatston(hu, labels, (1.0, 1.0), 3.0, min_area_mm2=0)
    if weight == 0:  # the 129 HU pixel is not calcium; the other three pixels are
        assert res.total == pytest.approx(3.0)
    else:
        assert res.total == pytest.approx(4.0 * weight)
        assert res.lesions[0].weight == weight


def test_threshold_147_excludes_lower_pixels():
    hu = np.array([[[140, 146, 147, 300]]], np.int16)
    labels = np.array([[[1, 1, 1, 1]]], np.uint8)
    assert ag.agatston(hu, labels, (1.0, 1.0), 3.0, min_area_mm2=0).total == 12.0
    res = ag.agatston(hu, labels, (1.0, 1.0), 3.0, min_area_mm2=0, threshold_hu=147)
    assert res.total == 6.0 and res.lesions[0].mean_hu == pytest.approx(223.5)


def test_diagonal_split_and_merge():
    hu = np.full((5, 5), 300, np.int16)
    labels = np.zeros((5, 5), np.uint8)
    labels[1, 1] = labels[2, 2] = labels[3, 3] = 4  # diagonal chain
    four = ag.agatston(hu, labels, (1.0, 1.0), 3.0, connectivity=4, min_area_mm2=0)
    eight = ag.agatston(hu, labels, (1.0, 1.0), 3.0, connectivity=8, min_area_mm2=0)
    assert len(four.lesions) == 3 and len(eight.lesions) == 1
    assert four.total == eight.total == pytest.approx(9.0)
    # With 2 mm^2 minimum area the single pixels vanish but the merged lesion stays.
    four_m = ag.agatston(hu, labels, (1.0, 1.0), 3.0, connectivity=4, min_area_mm2=2.0)
    eight_m = ag.agatston(hu, labels, (1.0, 1.0), 3.0, connectivity=8, min_area_mm2=2.0)
    assert four_m.total == 0.0 and four_m.lesions == ()
    assert eight_m.total == pytest.approx(9.0)
    assert (eight_m.lesions[0].row, eight_m.lesions[0].col) == (2.0, 2.0)


def test_no_joining_across_slices_or_vessels():
    hu = np.full((2, 4, 4), 250, np.int16)
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[0, 1, 1:3] = 1
    labels[1, 1, 1:3] = 1  # same place next slice: a separate lesion
    labels[0, 2, 1:3] = 2  # touching, other vessel: a separate lesion
    res = ag.agatston(hu, labels, (1.0, 1.0), 3.0, min_area_mm2=2.0)
    assert [(les.slice, les.vessel) for les in res.lesions] == [(0, "RCA"), (0, "LAD"), (1, "RCA")]
    assert res.per_vessel["RCA"] == 8.0 and res.per_vessel["LAD"] == 4.0


def test_min_area_exclusion_and_bone_outside_labels():
    hu = np.full((1, 10, 10), 1000, np.int16)  # bone everywhere, only labelled pixels count
    labels = np.zeros((1, 10, 10), np.uint8)
    labels[0, 0, 0:3] = 3  # 3 px x 0.3 mm^2 = 0.9 mm^2 < 1
    labels[0, 5, 0:4] = 3  # 4 px -> 1.2 mm^2
    res = ag.agatston(hu, labels, (0.5, 0.6), 3.0)
    assert len(res.lesions) == 1
    assert res.total == pytest.approx(1.2 * 4)
    assert ag.agatston(hu, labels, (0.5, 0.6), 3.0, min_area_mm2=0).total == pytest.approx(2.1 * 4)


def test_empty_and_to_dict_json():
    hu = np.zeros((2, 5, 5), np.int16)
    labels = np.zeros((2, 5, 5), np.uint8)
    res = ag.agatston(hu, labels, (0.5, 0.5), 3.0, mass_factor=0.8)
    assert res.total == 0.0 and res.lesions == () and res.mass_mg == 0.0
    hu2, labels2 = _random_case(5)
    res2 = ag.agatston(hu2, labels2, (0.5, 0.5), 3.0)
    d = json.loads(json.dumps(res2.to_dict()))
    assert d["total"] == pytest.approx(res2.total)
    assert len(d["lesions"]) == len(res2.lesions)
    assert d["convention"]["connectivity"] == 4
    assert set(d["per_vessel"]) == set(ag.VESSELS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": np.zeros((2, 5, 4), np.uint8)}, "shape"),
        ({"labels": np.full((2, 4, 4), 5, np.uint8)}, "0..4"),
        ({"labels": np.full((2, 4, 4), -1, np.int8)}, "0..4"),
        ({"labels": np.zeros((2, 4, 4), np.float32)}, "integer"),
        ({"pixel_mm": (0.0, 0.5)}, "pixel_mm"),
        ({"pixel_mm": (0.5,)}, "pixel_mm"),
        ({"slice_thickness_mm": -3.0}, "slice_thickness"),
        ({"connectivity": 6}, "connectivity"),
        ({"min_area_mm2": -1.0}, "min_area"),
        ({"mass_factor": (1.0, 2.0)}, "mass_factor"),
    ],
)
def test_bad_input(kwargs, match):
    args = {
        "hu": np.zeros((2, 4, 4), np.int16),
        "labels": np.zeros((2, 4, 4), np.uint8),
        "pixel_mm": (0.5, 0.5),
        "slice_thickness_mm": 3.0,
    }
    args.update(kwargs)
    pos = [args.pop(k) for k in ("hu", "labels", "pixel_mm", "slice_thickness_mm")]
    with pytest.raises(ValueError, match=match):
        ag.agatston(*pos, **args)


# ---------------------------------------------------------------------------
# Categories and CAC-DRS.


@pytest.mark.parametrize(
    ("score", "standard5", "paper4"),
    [
        (0, "0", "low"),
        (0.3, "1-10", "low"),  # positive never rounds to zero
        (1, "1-10", "low"),
        (10, "1-10", "low"),
        (10.4, "1-10", "low"),
        (10.5, "11-100", "moderate"),
        (11, "11-100", "moderate"),
        (100, "11-100", "moderate"),
        (101, "101-400", "high"),
        (400, "101-400", "high"),
        (400.49, "101-400", "high"),
        (401, ">400", "very high"),
        (5000, ">400", "very high"),
    ],
)
def test_category_boundaries(score, standard5, paper4):
    assert ag.risk_category(score) == standard5
    assert ag.risk_category(score, "standard5") == standard5
    assert ag.risk_category(score, "paper4") == paper4
    assert ag.RISK_SCHEMES["paper4"][ag.category_index(score, "paper4")] == paper4


def test_category_errors():
    with pytest.raises(ValueError, match="unknown risk scheme"):
        ag.risk_category(5, "standard6")
    with pytest.raises(ValueError, match=">= 0"):
        ag.risk_category(-1)
    with pytest.raises(ValueError, match=">= 0"):
        ag.risk_category(math.nan)


def test_cac_drs():
    zero = dict.fromkeys(ag.VESSELS, 0.0)
    assert ag.cac_drs(zero, 0.0) == "A0"
    assert ag.cac_drs({**zero, "LAD": 50.0}, 50.0) == "A1/N1"
    assert ag.cac_drs({**zero, "LAD": 50.0, "RCA": 49.0}, 99.0) == "A1/N2"
    assert ag.cac_drs({"RCA": 10.0, "LAD": 50.0, "LCA": 40.0, "LCX": 0.0}, 100.0) == "A2/N3"
    assert ag.cac_drs({"RCA": 100.0, "LAD": 99.0, "LCA": 50.0, "LCX": 50.0}, 299.0) == "A2/N4"
    assert ag.cac_drs({**zero, "LCX": 300.0}, 300.0) == "A3/N1"
    with pytest.raises(ValueError, match="inconsistent"):
        ag.cac_drs({**zero, "LAD": 5.0}, 0.0)
    with pytest.raises(ValueError, match="unknown vessels"):
        ag.cac_drs({"LM": 5.0}, 5.0)


def test_cac_drs_from_result():
    hu, labels = _random_case(7)
    res = ag.agatston(hu, labels, (0.5, 0.5), 3.0)
    n = sum(1 for v in res.per_vessel.values() if v > 0)
    grade = ag.category_index(res.total, "cacdrs")
    assert ag.cac_drs(res.per_vessel, res.total) == f"A{grade}/N{n}"


def test_sparse_slices_keep_their_indices_and_2d_input():
    hu = np.full((6, 8, 8), 450, np.int16)
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[1, 6:8, 0:2] = 1
    labels[4, 0:2, 5:7] = 4
    labels[5, 3, 3] = 2
    hu[5, 3, 3] = 100  # labelled but below threshold: no lesion
    res = ag.agatston(hu, labels, (1.0, 1.0), 3.0)
    assert [(les.slice, les.vessel, les.row, les.col) for les in res.lesions] == [
        (1, "RCA", 6.5, 0.5),
        (4, "LCX", 0.5, 5.5),
    ]
    single = ag.agatston(hu[4], labels[4], (1.0, 1.0), 3.0)
    assert single.total == pytest.approx(16.0) and single.lesions[0].slice == 0
    below = ag.agatston(hu[5], labels[5], (1.0, 1.0), 3.0, min_area_mm2=0)
    assert below.total == 0.0 and below.lesions == ()


# ---------------------------------------------------------------------------
# The sparse label scan: blocks, tails, dtypes and layouts.


def _sparse_case():
    """2 x 200 x 200 (80 kB, several scan blocks and a tail): lesions on block edges."""
    rng = np.random.default_rng(11)
    hu = rng.normal(100, 80, size=(2, 200, 200)).astype(np.int16)  # ~31 % >= 130 HU
    labels = np.zeros(hu.shape, np.uint8)
    # 32768 bytes per block of the scan: rows 163-164 of slice 0 straddle its end, the
    # last rows of slice 1 lie in the tail after the last whole block.
    for z, r, c, v in [(0, 162, 60, 1), (0, 163, 195, 2), (1, 3, 0, 3), (1, 196, 190, 4)]:
        labels[z, r : r + 4, c : c + 5] = v
        hu[z, r : r + 4, c : c + 5] = rng.integers(100, 600, size=(4, 5))
    labels[1, 100:104, 100:103] = 2  # two vessels touching: separate lesions
    labels[1, 100:104, 103:106] = 4
    hu[1, 100:104, 100:106] = 350
    return hu, labels


@pytest.mark.parametrize("connectivity", [4, 8])
def test_sparse_scan_matches_reference_for_every_label_dtype_and_layout(connectivity):
    hu, labels = _sparse_case()
    expected = _reference(hu, labels, (0.5, 0.5), 3.0, 130, connectivity, 0.0, True, None)
    variants = {
        dtype: (hu, labels.astype(dtype)) for dtype in (np.uint8, np.int16, np.int32, np.int64)
    }
    # Non-contiguous views (the scan copies them) and float HU.
    variants["flipped"] = (hu[:, ::-1], labels[:, ::-1])
    variants["float_hu"] = (hu.astype(np.float32), labels)
    for name, (h, lab) in variants.items():
        res = ag.agatston(h, lab, (0.5, 0.5), 3.0, connectivity=connectivity, min_area_mm2=0)
        ref = (
            expected
            if name != "flipped"
            else _reference(h, lab, (0.5, 0.5), 3.0, 130, connectivity, 0.0, True, None)
        )
        assert len(res.lesions) == len(ref[3]) >= 6, name
        for vessel in ag.VESSELS:
            assert res.per_vessel[vessel] == pytest.approx(ref[0][vessel], rel=1e-12), name
    # Boolean labels are all RCA.
    res = ag.agatston(hu, labels > 0, (0.5, 0.5), 3.0, connectivity=connectivity)
    ref = _reference(hu, (labels > 0).astype(np.uint8), (0.5, 0.5), 3.0, 130, connectivity,
                     1.0, True, None)  # fmt: skip
    assert res.per_vessel["RCA"] == pytest.approx(ref[0]["RCA"], rel=1e-12)
    assert res.total == pytest.approx(res.per_vessel["RCA"])
