"""The split rule every converter uses: studies into train / val / test, stratified.

`assign` splits labelled studies by study (for COCA a gated patient is one study): within
each stratum (COCA: the paper's four risk categories of the Agatston total; any CT
folder: whether the mask has any label), in the stratum order given, the stratum's
sorted ids are permuted by one generator seeded with the seed; ``round(10 %)`` go to
val and to test (at least one each when the stratum has 3 or more studies, none below
that), the rest to train. `members` lists each split's studies: ``pretrain`` holds every
study except the val and test ones (and those marked `EXCLUDED`, which are in no split).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from dinolg_jax.data import manifest

VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
EXCLUDED = "excluded"  # a study in no split at all, pretrain included

__all__ = ["EXCLUDED", "TEST_FRACTION", "VAL_FRACTION", "assign", "members"]


def assign(strata: dict[str, str], seed: int, order: Sequence[str]) -> dict[str, str]:
    """Study id -> ``"train"`` | ``"val"`` | ``"test"`` (the module docstring's rule).

    Args:
      strata: study id -> stratum name.
      seed: the generator's seed.
      order: the strata in the order they draw from the generator (every stratum of
        `strata` must be in it; a stratum without studies draws nothing).

    Raises:
      ValueError: a stratum of `strata` that is not in `order`.
    """
    unknown = set(strata.values()) - set(order)
    if unknown:
        raise ValueError(f"strata {sorted(unknown)} are not among {list(order)}")
    rng = np.random.default_rng(seed)
    out = {}
    for stratum in order:
        ids = sorted(s for s, k in strata.items() if k == stratum)
        n = len(ids)
        permuted = [ids[i] for i in rng.permutation(n)]
        n_val = max(1, math.floor(VAL_FRACTION * n + 0.5)) if n >= 3 else 0
        n_test = max(1, math.floor(TEST_FRACTION * n + 0.5)) if n >= 3 else 0
        for i, sid in enumerate(permuted):
            out[sid] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return out


def members(studies: Iterable[dict], split_of: dict[str, str]) -> dict[str, list[dict]]:
    """Each split's studies, in the order of `studies`.

    Args:
      studies: per-study summaries, each with a ``"study_id"``.
      split_of: study id -> ``"train"`` | ``"val"`` | ``"test"`` | `EXCLUDED`; a study
        without an entry is in pretrain only.

    Returns:
      {split: [summary, ...]} for every split of `manifest.SPLITS`.
    """
    out: dict[str, list[dict]] = {k: [] for k in manifest.SPLITS}
    for s in studies:
        sup = split_of.get(s["study_id"])
        if sup == EXCLUDED:
            continue
        if sup is not None:
            out[sup].append(s)
        if sup not in ("val", "test"):
            out["pretrain"].append(s)
    return out
