"""A pretraining run's encoder -> model.safetensors + config.json + model card (README.md).

    python tools/export_encoder.py --workdir runs/dinolg --out runs/dinolg_export

The teacher backbone under ``--workdir``/encoder is written with the official DINO / timm
ViT key names and layouts (``models/torch_export.py``), so PyTorch loads it with timm's
``VisionTransformer`` (one input channel, ``num_classes=0``); ``config.json`` states the
input the encoder expects (HU window, normalisation, image size) and the README how to
load it (``runtime/encoder_release.py``). A workdir without an encoder is a usage error.
"""

from pathlib import Path

from absl import flags

from dinolg_jax.runtime import cli, encoder_release, workdirs

_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir (tools/pretrain.py).")
_OUT = flags.DEFINE_string("out", None, "Output folder (created; its three files replaced).")


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    workdir = workdirs.require(_WORKDIR.value, "pretrain", "--workdir")
    if not _OUT.value:
        raise cli.UsageError("--out is required: the folder to write model.safetensors into")
    if Path(_OUT.value).exists() and not Path(_OUT.value).is_dir():
        raise cli.UsageError(f"--out={_OUT.value} is a file, not a folder")
    out = encoder_release.export_encoder(workdir, _OUT.value)
    files = ", ".join(f"{name} ({size:,} bytes)" for name, size in out["files"].items())
    print(
        f"wrote {_OUT.value}: ViT {out['variant']} at step {out['step']}, "
        f"{out['n_tensors']} tensors, {out['n_params']:,} parameters: {files}"
    )
    print(f"safetensors sha256 {out['safetensors_sha256']}")


if __name__ == "__main__":
    cli.run(main)
