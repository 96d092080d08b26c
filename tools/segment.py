"""Segmentation (U-Net family) training and test evaluation entry point.

    python tools/segment.py --config configs/segment.py:unet,runlocal --workdir /tmp/seg
    python tools/segment.py --config configs/segment.py:unet --workdir W \
        --config.data.manifest=/data/coca_converted/manifest.json

Models by name (``configs/segment.py:<name>[,runlocal]`` or ``--config.model.name``): unet,
attention_unet, swin_unet, vit_unet (the last needs ``--config.encoder=PRETRAIN_WORKDIR``).
Re-running with the same ``--workdir`` resumes (also after a SIGTERM or Ctrl-C, which
checkpoint and exit 0); ``WORKDIR/curves.png`` shows the loss. Prints the per-artery Dice
on the evaluation split; everything is in ``WORKDIR/summary.json``. Exit status 1 on a
non-finite loss or a data error, 2 on a usage error (one ``error:`` line each).
"""

import json

from dinolg_jax.runtime import cli, config_ranges, workdirs

_CONFIG, _WORKDIR, _INIT_DISTRIBUTED = cli.training_flags("Segmentation")


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    config = _CONFIG.value
    config_ranges.check(config)
    if config.model.name == "vit_unet":
        workdirs.require(config.encoder, "pretrain", "--config.encoder")
    workdirs.require_manifest(config.data.manifest, "--config.data.manifest")
    _INIT_DISTRIBUTED()
    from dinolg_jax.train import segment  # after distributed init: it touches devices

    summary = segment.train_segmenter(config, _WORKDIR.value)  # errors: cli.run
    if summary["status"] != "done":  # SIGTERM: checkpoint written, re-run to resume
        print(json.dumps({k: summary[k] for k in ("step", "status", "params_checksum")}))
        return
    ev = summary["eval"]
    print(
        json.dumps(
            {
                "model": summary["model"],
                "step": summary["step"],
                "first_loss": summary["first_loss"],
                "loss": summary["metrics"].get("loss"),
                "dice_all_slices": {k: v["dice"] for k, v in ev["all_slices"].items()},
                "dice_calcium_slices": {k: v["dice"] for k, v in ev["calcium_slices"].items()},
                "params_checksum": summary["params_checksum"],
            }
        )
    )


if __name__ == "__main__":
    cli.run(main)
