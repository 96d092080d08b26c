"""Lesion size in the records and in the crops the pretraining pipeline emits, as JSON.

    python tools/crop_geometry.py --config configs/ablation.py:runlocal \
        --manifest WORKDIR/data/records/manifest.json [--arm dinolg] [--n_samples 256]
    python tools/crop_geometry.py --config configs/dinolg.py --manifest M

For an ablation config the pipeline is the pretraining of ``--arm`` (its guided-crop
count); for a pretraining config it is ``config.data``. Prints one JSON object:
``record`` (lesion areas at native resolution over ``--record_split``, px and mm^2) and
``crops`` (per group ``global`` / ``local_random`` / ``local_guided``: ``area`` and
``rendered`` median, p10, p90 in px and as a share of a patch x patch token; see
``eval.crop_geometry``), with the crop sizes and the patch.
"""

import json

from absl import flags
from ml_collections import config_flags

from dinolg_jax.data import manifest as manifest_lib
from dinolg_jax.eval import crop_geometry
from dinolg_jax.runtime import cli, config_ranges

_CONFIG = config_flags.DEFINE_config_file("config", None, "Ablation or pretraining config.")
_MANIFEST = flags.DEFINE_string("manifest", None, "manifest.json or its folder.")
_ARM = flags.DEFINE_string("arm", "dinolg", "Ablation arm whose crops are measured.")
_SPLIT = flags.DEFINE_string("split", "pretrain", "Split the pretraining stream reads.")
_RECORD_SPLIT = flags.DEFINE_string("record_split", "train", "Split of the record-level areas.")
_N_SAMPLES = flags.DEFINE_integer("n_samples", 256, "Slices drawn from the stream.", lower_bound=1)
_MAX_RECORDS = flags.DEFINE_integer(
    "max_records", 0, "Records read per split (0: all).", lower_bound=0
)
flags.mark_flags_as_required(["config", "manifest"])


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    config = _CONFIG.value
    config_ranges.check(config)
    manifest = manifest_lib.load(_MANIFEST.value)
    if "arms" in config:  # an ablation: the arm's pretraining config
        from dinolg_jax.experiments import ablation

        cli.require_choice(_ARM.value, list(config.arms), "--arm")
        pretrain = ablation.arm_pretrain_config(config, _ARM.value, int(config.seeds[0]))
    else:
        pretrain = config
    patch = int(str(pretrain.model.variant).partition("/")[2])
    out = {
        "variant": str(pretrain.model.variant),
        "record": crop_geometry.record_level(
            manifest, _RECORD_SPLIT.value, patch, _MAX_RECORDS.value
        ),
        "crops": crop_geometry.crop_level(
            manifest, pretrain.data, patch, split=_SPLIT.value, n_samples=_N_SAMPLES.value
        ),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    cli.run(main)
