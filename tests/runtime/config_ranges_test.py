"""runtime.config_ranges: out-of-range counts, sizes and seeds are named; shipped configs pass."""

import importlib

import ml_collections
import pytest

from dinolg_jax.runtime import cli, config_ranges

SHIPPED = {
    "dinolg": ["", "runlocal", "tiny", "variant=S/8", "arm=dino"],
    "probe": ["linear", "linear,runlocal", "transformer", "transformer,runlocal"],
    "segment": ["unet", "unet,runlocal", "attention_unet", "swin_unet", "vit_unet,runlocal"],
    "ablation": ["", "runlocal", "tiny", "cardiac", "long"],
    "demo": [""],
}


def test_every_shipped_config_is_in_range():
    for name, args in SHIPPED.items():
        module = importlib.import_module(f"configs.{name}")
        for arg in args:
            assert config_ranges.violations(module.get_config(arg)) == [], (name, arg)


def test_each_kind_of_mistake_is_named_with_its_rule():
    config = ml_collections.ConfigDict(
        {
            "seed": -1,
            "num_steps": 0,  # 0: the epochs decide; allowed
            "data": {"batch_size": 0, "worker_count": 0, "global_size": 0, "eval_size": 0},
            "pretrain": {"optim": {"epochs": 0, "lr": 1e-3}, "checkpoint": {"keep": 2}},
            "augment": {"hflip_prob": 1.5, "name": "x", "flag": False},
            "threshold": -1.0,  # not a ruled key
        }
    )
    assert config_ranges.violations(config) == [
        "--config.augment.hflip_prob=1.5 must be in [0, 1]",
        "--config.data.batch_size=0 must be > 0",
        "--config.data.global_size=0 must be > 0",
        "--config.pretrain.optim.epochs=0 must be > 0",
        "--config.seed=-1 must be >= 0",
    ]
    with pytest.raises(
        cli.UsageError, match=r"^--config.augment.hflip_prob=1.5 must be in \[0, 1\]; --config.data"
    ):
        config_ranges.check(config)
    config_ranges.check({"num_steps": 0, "data": {"batch_size": 1, "worker_count": 0}})
    assert config_ranges.violations({"lr": float("nan"), "seed": -0.5}) == [
        "--config.lr=nan must be > 0",
        "--config.seed=-0.5 must be >= 0",
    ]
