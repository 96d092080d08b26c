"""data.stratified_split: hand-counted split sizes per stratum, the draw order, members."""

import pytest

from dinolg_jax.data import stratified_split


def _counts(split: dict[str, str], ids: list[str]) -> tuple[int, int, int]:
    got = [split[i] for i in ids]
    return got.count("train"), got.count("val"), got.count("test")


def test_sizes_per_stratum_are_ten_percent_rounded_half_up_at_least_one_from_three():
    sizes = {"a": 2, "b": 3, "c": 10, "d": 15, "e": 25, "f": 0}
    strata = {f"{k}{i:02d}": k for k, n in sizes.items() for i in range(n)}
    split = stratified_split.assign(strata, 0, order=tuple(sizes))
    assert set(split) == set(strata)
    # (train, val, test) by hand: 10 % of n rounded half up, at least 1 from n = 3, 0 below.
    expected = {"a": (2, 0, 0), "b": (1, 1, 1), "c": (8, 1, 1), "d": (11, 2, 2), "e": (19, 3, 3)}
    for k, want in expected.items():
        assert _counts(split, [s for s in strata if strata[s] == k]) == want, k


def test_same_seed_same_split_and_the_strata_order_draws_from_one_generator():
    strata = {f"x{i}": "x" for i in range(10)} | {f"y{i}": "y" for i in range(10)}
    one = stratified_split.assign(strata, 7, order=("x", "y"))
    assert stratified_split.assign(strata, 7, order=("x", "y")) == one
    assert stratified_split.assign(dict(reversed(strata.items())), 7, order=("x", "y")) == one
    # The second stratum draws after the first: swapping the order moves y's val/test study.
    swapped = stratified_split.assign(strata, 7, order=("y", "x"))
    y = [s for s in strata if s.startswith("y")]
    alone = stratified_split.assign({s: "y" for s in y}, 7, order=("y",))
    assert {s: swapped[s] for s in y} == alone
    assert any(one[s] != alone[s] for s in y)  # not the first draw when x went first
    assert stratified_split.assign(strata, 8, order=("x", "y")) != one


def test_a_stratum_outside_the_order_is_refused():
    with pytest.raises(ValueError, match=r"strata \['z'\] are not among \['x'\]"):
        stratified_split.assign({"a": "z"}, 0, order=("x",))


def test_members_pretrain_is_all_but_val_test_and_excluded_studies_are_in_no_split():
    studies = [{"study_id": s} for s in ("s1", "s2", "s3", "s4", "s5", "s6")]
    split_of = {"s1": "train", "s2": "val", "s3": "test", "s5": stratified_split.EXCLUDED}
    got = stratified_split.members(studies, split_of)
    ids = {k: [s["study_id"] for s in v] for k, v in got.items()}
    assert ids == {
        "pretrain": ["s1", "s4", "s6"],
        "train": ["s1"],
        "val": ["s2"],
        "test": ["s3"],
    }
