"""configs/: every experiment file loads with each variant; the shared blocks agree."""

import importlib
from pathlib import Path

import pytest

from configs import common

ROOT = Path(__file__).resolve().parents[1]
SEGMENTERS = ["unet", "attention_unet", "swin_unet", "vit_unet"]
VARIANTS = {
    "ablation": [None, "runlocal", "tiny", "runlocal,tiny", "cardiac", "runlocal,cardiac",
                 "long", "cardiac,long"],
    "demo": [None],
    "dinolg": [None, "arm=dino", "variant=S/8", "variant=S/8,arm=dino", "runlocal",
               "arm=dino,runlocal", "tiny", "arm=dino,tiny"],
    "infer": [None],
    "probe": [None, "linear", "transformer", "probe=transformer", "runlocal",
              "linear,runlocal", "transformer,runlocal"],
    "segment": [None, *SEGMENTERS, "model=swin_unet", "runlocal",
                *(f"{m},runlocal" for m in SEGMENTERS)],
}  # fmt: skip
EXPERIMENTS = ("ablation", "dinolg", "probe", "segment")  # paper scale by default, :runlocal


def test_every_config_file_is_listed():
    files = {p.stem for p in (ROOT / "configs").glob("*.py")} - {"__init__", "common"}
    assert files == set(VARIANTS)


@pytest.mark.parametrize(("name", "arg"), [(n, a) for n, args in VARIANTS.items() for a in args])
def test_config_loads(name, arg):
    c = importlib.import_module(f"configs.{name}").get_config(arg)
    c.to_dict()  # resolvable


@pytest.mark.parametrize(("name", "arg"), [("dinolg", "arm=bad"), ("dinolg", "size=1"),
                                           ("dinolg", "x"), ("segment", "unknown"),
                                           ("probe", "mlp"), ("probe", "runlocal,mlp"),
                                           ("ablation", "x"), ("ablation", "gpu")])  # fmt: skip
def test_config_rejects_unknown_variants(name, arg):
    with pytest.raises(ValueError, match=rf"^configs/{name}\.py: bad argument .*runlocal") as e:
        importlib.import_module(f"configs.{name}").get_config(arg)
    assert "\n" not in str(e.value)  # one line, naming the valid choices


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_default_to_the_paper_and_run_locally_on_cpu(name):
    module = importlib.import_module(f"configs.{name}")
    paper, local = module.get_config(None), module.get_config("runlocal")
    assert "bfloat16" in str(paper.to_dict())  # GPU compute
    assert "bfloat16" not in str(local.to_dict())  # float32 on two CPU cores
    stages = ("pretrain", "probe", "segment") if name == "ablation" else (None,)
    for stage in stages:
        assert (local[stage] if stage else local).data.worker_count == 0


def test_tiny_is_a_cpu_size():
    for name in ("ablation", "dinolg"):
        module = importlib.import_module(f"configs.{name}")
        assert module.get_config("tiny").to_dict() == module.get_config("runlocal,tiny").to_dict()


def test_dinolg_rows():
    dinolg = importlib.import_module("configs.dinolg")
    c = dinolg.get_config("variant=S/8,arm=dino")
    assert (c.model.variant, c.data.batch_size) == ("S/8", 512)
    assert (c.data.n_local_random, c.data.n_local_guided) == (16, 0)
    c = dinolg.get_config(None)
    assert (c.model.variant, c.data.batch_size) == ("B/8", 256)
    assert (c.data.n_local_random, c.data.n_local_guided) == (12, 4)


def test_stage_infer_config_is_part_of_infer_config():
    full, stage = common.infer_config(), common.stage_infer_config()
    assert stage.split == full.source.split
    assert set(stage.keys()) == {"split", *common.STAGE_INFER_FIELDS}
    for key in common.STAGE_INFER_FIELDS:
        assert stage[key] == full[key]


def test_cpu_size_sets_every_stage_of_an_experiment():
    c = importlib.import_module("configs.ablation").get_config(None)  # the paper's
    common.cpu_size(c)
    assert (c.pretrain.model.dtype, c.pretrain.model.attention_impl) == ("float32", "xla")
    assert c.segment.model.dtype == "float32"
    for stage in (c.pretrain, c.probe, c.segment):
        assert stage.data.worker_count == 0
    assert c.pretrain.checkpoint.keep == c.segment.checkpoint.keep == 2


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_long_is_cardiac_with_only_the_pretraining_length_changed():
    ablation = importlib.import_module("configs.ablation")
    cardiac = _flat(ablation.get_config("cardiac").to_dict())
    long = _flat(ablation.get_config("long").to_dict())
    changed = {k for k in cardiac if cardiac[k] != long[k]}
    assert set(cardiac) == set(long)
    assert changed == {"pretrain.num_steps", "pretrain.num_epochs", "pretrain.eval_every",
                       "pretrain.checkpoint.every_steps", "note"}  # fmt: skip
    # the stated length in epochs is the run's steps at the config's 375 steps per epoch
    assert long["pretrain.num_steps"] == 2000 == round(long["pretrain.num_epochs"] * 375)
