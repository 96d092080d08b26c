"""experiments.stages: a summary.json or config.json cut short by a crash counts as none.

The rest of the stages' contract (skip a finished workdir, refuse another config) is
tested with the ablation in ``ablation_test.py``.
"""

import ml_collections
import pytest

from dinolg_jax.experiments import stages
from dinolg_jax.runtime.json_file import write_json


def test_a_truncated_or_corrupt_summary_counts_as_missing(tmp_path):
    write_json(tmp_path / "summary.json", {"status": "done", "step": 4})
    full = (tmp_path / "summary.json").read_text()
    assert stages.done_summary(tmp_path) == {"status": "done", "step": 4}
    for text in (full[: len(full) // 2], "", "[1, 2]", "\xff\xfe"):
        (tmp_path / "summary.json").write_text(text, encoding="latin-1")
        assert stages.done_summary(tmp_path) is None, repr(text)


def test_a_truncated_config_passes_and_the_stage_runs_again(tmp_path):
    config = ml_collections.ConfigDict({"n_gated": 2, "n_nongated": 0, "seed": 0})
    write_json(tmp_path / "config.json", config.to_dict())
    with pytest.raises(stages.StageConfigError, match="seed"):
        stages.check_config(tmp_path, ml_collections.ConfigDict({**config.to_dict(), "seed": 1}))
    text = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(text[:7])
    stages.check_config(tmp_path, ml_collections.ConfigDict({**config.to_dict(), "seed": 1}))
    # _begin, the prologue of every stage: a cut summary is no finished stage, and the
    # config is written again whole
    write_json(tmp_path / "summary.json", {"status": "done"})
    (tmp_path / "summary.json").write_text('{"status": "do')
    assert stages._begin(tmp_path, config, write=True) is None
    assert stages.done_summary(tmp_path) is None
    stages.check_config(tmp_path, config)
    with pytest.raises(stages.StageConfigError):
        stages.check_config(tmp_path, ml_collections.ConfigDict({**config.to_dict(), "seed": 1}))
