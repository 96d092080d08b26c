"""Official DINO ViT weights (.pth) -> an encoder export usable as init / by the probe.

    python tools/import_torch_dino.py --pth dino_deitsmall8_pretrain.pth --variant S/8 \
        --out runs/imported_s8/encoder

Writes ``runtime.checkpoint.save_encoder``'s layout (``OUT/params`` Orbax PyTree,
``OUT/model_config.json``). PyTorch is needed only here and only for ``.pth`` files
(imported lazily; not a project requirement); a ``.npz`` of the same names needs none.
Full training checkpoints take their ``--which`` (teacher) backbone; RGB patch weights
are summed to one channel (see ``models/torch_import.py``).
"""

from pathlib import Path

import jax
import numpy as np
from absl import flags

from dinolg_jax.models import torch_import
from dinolg_jax.runtime import checkpoint, cli

_PTH = flags.DEFINE_string("pth", None, "Official DINO checkpoint (.pth) or a .npz of it.")
_VARIANT = flags.DEFINE_string("variant", "S/8", "ViT variant of the weights, e.g. S/8, B/16.")
_OUT = flags.DEFINE_string("out", None, "Output encoder folder.")
_WHICH = flags.DEFINE_enum("which", "teacher", ["teacher", "student"], "For full checkpoints.")
_REF = flags.DEFINE_integer("ref_image_size", 224, "Image side of the position table.")
_PICKLE = flags.DEFINE_bool(
    "allow_pickle", False, "Full torch unpickling (full training checkpoints; trusted files only)."
)
flags.mark_flags_as_required(["pth", "out"])


def load_state_dict(path: Path, allow_pickle: bool) -> dict:
    """Names -> float32 numpy arrays from a .pth (via torch) or a .npz."""
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    try:
        import torch
    except ImportError as err:
        raise cli.UsageError("reading .pth files needs PyTorch (pip install torch)") from err
    payload = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    payload = torch_import.backbone_state_dict(payload, _WHICH.value)
    return {k: v.detach().float().numpy() for k, v in payload.items() if hasattr(v, "detach")}


def main(argv: list[str]) -> None:
    cli.no_arguments(argv)
    cli.require_file(_PTH.value, "--pth", "an official DINO checkpoint (.pth) or a .npz of it")
    sd = torch_import.backbone_state_dict(
        load_state_dict(Path(_PTH.value), _PICKLE.value), _WHICH.value
    )
    params = torch_import.vit_params_from_torch(sd, _VARIANT.value, ref_image_size=_REF.value)
    model_config = {
        "variant": _VARIANT.value,
        "ref_image_size": _REF.value,
        "dtype": "float32",
        "source": Path(_PTH.value).name,
    }
    out = checkpoint.save_encoder(_OUT.value, params, model_config)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(f"wrote {out}: ViT {_VARIANT.value}, {n:,} parameters")


if __name__ == "__main__":
    cli.run(main)
