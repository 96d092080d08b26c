"""The blocks every experiment file starts from, each value written out.

``pretrain_config()`` (the DINO recipe of the official ``main_dino.py``), ``probe_config()``
and ``segment_config()`` (the paper's Fig. 5 probe and Table 4 U-Nets),
``data_config()`` (the Grain pipeline's ``config.data``, Table 1's augmentations),
``infer_config()`` (integrated scoring, ``inference.batch.infer_from_config``) and its
experiment part ``stage_infer_config()``; ``cpu_size(c)`` shrinks a config to what two CPU
cores run; ``parse_arg`` reads a file's ``get_config`` argument. An experiment file
(``configs/<name>.py``) takes one of these and sets what its experiment changes, line by
line: the paper's scale by default, the CPU size with ``:runlocal`` (big_vision's
convention). The library holds none of these values: it reads a config.

``configs`` is a package of the project (``pyproject.toml``; ``make setup`` installs it
editable), so ``from configs import common`` works from any folder and from
``config_flags``.
"""

from collections.abc import Sequence

import ml_collections


def data_config(variant: str = "dinolg") -> ml_collections.ConfigDict:
    """The ``config.data`` section (``data.pipeline``; crops: ``data.multicrop.MultiCrop``).

    Args:
      variant: ``"dinolg"`` (12 random + 4 guided local crops) or ``"dino"`` (16 + 0),
        the paper's Table 3.
    """
    if variant not in ("dino", "dinolg"):
        raise ValueError(f"variant must be 'dino' or 'dinolg', got {variant!r}")
    c = ml_collections.ConfigDict()
    c.manifest = ""  # path of manifest.json (or its folder)
    # Intensity: HU window mapped to [-1, 1]. [-1000, 1000] keeps air, lung, soft tissue
    # and calcium up to 1000 HU distinct (calcium threshold 130 HU -> 0.13).
    c.hu_window = (-1000.0, 1000.0)
    # Multi-crop (DINO recipe; sizes in pixels, scales as fractions of the slice area).
    c.global_size = 224
    c.local_size = 96
    c.global_scale = (0.4, 1.0)
    c.local_scale = (0.05, 0.4)
    c.ratio = (3 / 4, 4 / 3)  # width / height range of random resized crops
    c.n_global = 2
    c.n_local_random = 16 if variant == "dino" else 12
    c.n_local_guided = 0 if variant == "dino" else 4
    c.guided_offset_px = 8.0  # max offset of a guided crop's centre from its lesion, px
    # Augmentations (Table 1: no solarisation, no colour jitter).
    c.blur_probs = (1.0, 0.1, 0.5)  # first global, other globals, locals
    c.blur_sigma = (0.1, 2.0)  # output pixels
    c.blur_truncate = 3.0  # kernel radius in sigmas
    c.hflip_prob = 0.5
    c.vflip_prob = 0.5
    c.brightness_prob = 0.8
    c.brightness_delta = 0.1  # normalised units (0.1 = 100 HU with the default window)
    c.noise_prob = 0.5
    c.noise_std = 0.02  # normalised units (20 HU)
    # Loading.
    # Crops of a pretraining batch: "float32", or "uint16" fixed point (half the bytes,
    # error <= 6.1e-5; the training step decodes it on device, see crop_codec).
    c.batch_dtype = "float32"
    c.batch_size = 64  # GLOBAL batch (all processes); must divide by process_count
    c.worker_count = 0  # Grain multiprocess workers (0: in this process)
    c.worker_buffer_size = 2  # batches buffered per worker
    c.read_threads = 1  # threads per process computing elements (0: synchronous)
    c.read_buffer_size = 2  # elements (batches) buffered per process
    c.seed = 0
    c.shuffle = True
    c.eval_size = 0  # whole-slice datasets: 0 keeps the record size, else resize to this
    c.positive_fraction = 0.5  # labelled_dataset: share of slices with calcium (0: all)
    # pretrain_dataset: calcified slices repeated so they make about this share of an
    # epoch (0: every slice once, as the paper). The same stream for every arm.
    c.pretrain_positive_fraction = 0.0
    return c


def mesh_config() -> ml_collections.ConfigDict:
    """``config.mesh``: every device on the data axis, no FSDP (``runtime.mesh``)."""
    c = ml_collections.ConfigDict()
    c.data = -1  # devices on the data axis (-1: all the rest)
    c.fsdp = 1  # devices a parameter is sharded over
    c.fsdp_min_size = 2**18  # parameters smaller than this stay replicated
    return c


def checkpoint_config(every_steps: int) -> ml_collections.ConfigDict:
    """``config.checkpoint`` (``runtime.checkpoint.Checkpointer``) of a training run."""
    c = ml_collections.ConfigDict()
    c.every_steps = every_steps  # steps between checkpoints (and at the end)
    c.keep = 3  # checkpoints kept (the newest)
    c.async_save = True  # write in the background while training goes on
    return c


def phantom_config() -> ml_collections.ConfigDict:
    """``config.phantom``: the small phantom a training tool makes when no manifest is set."""
    c = ml_collections.ConfigDict()
    c.n_gated = 6
    c.n_nongated = 2
    c.seed = 0
    c.size = 128
    return c


def splits_config() -> ml_collections.ConfigDict:
    """``config.splits``: the manifest split of each role, one layout for every trainer
    (``eval.probe``, ``train.segment``, ``train.supervised``), which reads the roles it has:
    ``train`` (fitted), ``val`` (threshold, model choice), ``test`` (reported)."""
    return ml_collections.ConfigDict({"train": "train", "val": "val", "test": "test"})


def pretrain_config() -> ml_collections.ConfigDict:
    """The DINO recipe shared by every pretraining config (official ``main_dino.py`` values).

    Experiment files (``configs/dinolg.py``, its ``runlocal`` and ``tiny`` sizes included)
    start from this and set the model, the crops, the batch and the length. Groups:
    ``online_eval`` and ``monitor`` (``eval.online_eval``, ``eval.health``), ``model``
    (the ViT), ``dino`` (head, temperatures, momenta), ``optim``, ``data``
    (:func:`data_config`; ``data.batch_size`` is the global batch, ``data.seed`` a
    reference to the one ``seed``), ``mesh``, ``checkpoint``, ``phantom`` (used only when
    ``data.manifest`` is empty), ``debug``.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_epochs = 100.0  # schedule length in epochs (may be fractional)
    c.num_steps = 0  # > 0: stop after this many steps (schedules keep num_epochs)
    c.log_every = 10  # steps between metrics lines
    c.eval_every = 1000  # steps between online evaluations (0: none); also step 0 and last
    c.online_eval = ml_collections.ConfigDict()
    c.online_eval.bank_split = "train"  # kNN bank and probe training slices
    c.online_eval.query_split = "val"  # scored slices
    c.online_eval.max_bank = 1024  # slices kept of the bank split (evenly spaced)
    c.online_eval.max_query = 1024  # slices kept of the query split
    c.online_eval.batch_size = 64  # images per feature-pass call
    c.online_eval.k = 20  # neighbours of the kNN
    c.online_eval.temperature = 0.07  # kNN vote temperature
    c.online_eval.probe_steps = 300  # full-batch Adam steps of the logistic probe
    c.online_eval.probe_lr = 0.05
    c.online_eval.probe_l2 = 1e-3  # weight of 0.5 ||w||^2
    c.monitor = ml_collections.ConfigDict()  # thresholds of eval.health's verdicts
    c.monitor.min_teacher_kl = 0.1  # nats: below, every image gets the same teacher output
    c.monitor.uniform_fraction = 0.9  # H_bar above this share of ln K: uniform collapse
    c.monitor.min_auc_gain = 0.01  # best online ROC-AUC gain over the init to count as left
    c.tensorboard = False  # also write TensorBoard event files
    c.model = ml_collections.ConfigDict()
    c.model.variant = "S/8"
    c.model.dtype = "float32"  # compute dtype; params stay float32
    c.model.drop_path_rate = 0.1  # student only
    c.model.attention_impl = ""  # "" / "xla" (CPU) or "cudnn" (GPU, bf16)
    c.model.pad_tokens_to = 0  # cuDNN: pad tokens to a multiple of 64
    c.model.remat = False
    c.model.remat_policy = ""
    c.dino = ml_collections.ConfigDict()
    c.dino.out_dim = 65536
    c.dino.hidden_dim = 2048
    c.dino.bottleneck_dim = 256
    c.dino.norm_last_layer = True
    c.dino.student_temp = 0.1
    c.dino.warmup_teacher_temp = 0.04
    c.dino.teacher_temp = 0.07
    c.dino.warmup_teacher_temp_epochs = 30.0
    c.dino.momentum_teacher = 0.996
    c.dino.center_momentum = 0.9
    c.dino.centering = "ema"  # DINO's EMA centre; "sinkhorn": Sinkhorn-Knopp (DINOv2)
    c.dino.sinkhorn_iters = 3
    c.dino.koleo_weight = 0.0  # DINOv2's KoLeo on the student CLS of the global crops (0: off)
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 5e-4  # per 256 images
    c.optim.min_lr = 1e-6
    c.optim.warmup_epochs = 10.0
    c.optim.weight_decay = 0.04
    c.optim.weight_decay_end = 0.4
    c.optim.clip_grad = 3.0
    c.optim.clip_mode = "per_param"  # official DINO; "global": one norm over all gradients
    c.optim.freeze_last_layer = 1.0  # epochs
    c.data = data_config("dinolg")
    c.data.manifest = ""  # "" -> a phantom under the workdir
    c.data.batch_size = 256  # GLOBAL batch: images per step over all devices
    c.data.seed = c.get_ref("seed")  # one seed for the whole run
    c.mesh = mesh_config()
    c.checkpoint = checkpoint_config(every_steps=1000)
    c.phantom = phantom_config()
    c.debug = ml_collections.ConfigDict()
    c.debug.nan_at_step = -1  # make the loss NaN in the step from this step (tests the guard)
    c.debug.step_sleep_s = 0.0  # sleep after each step (widens test windows; no effect on results)
    return c


def probe_config(probe: str = "linear") -> ml_collections.ConfigDict:
    """The calcified-slice probe (``eval.probe``) at GPU scale; ``probe``: a PROBES name."""
    kwargs = {"linear": {}, "transformer": {"width": 128, "depth": 2, "heads": 4}}
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.encoder = ""  # pretraining workdir (or its encoder/ folder): required
    c.data = data_config()
    c.data.manifest = ""  # "" -> a phantom under the workdir (config.phantom)
    c.data.seed = c.get_ref("seed")
    c.data.batch_size = 64  # global batch of the feature extraction pass
    c.data.eval_size = 0  # keep the record size
    c.features = ml_collections.ConfigDict()
    c.features.n_last_blocks = 4  # CLS of the last n blocks in the linear feature (DINO: 4)
    c.features.token_pool = 4  # transformer input: patch-token grid pooled 4x4 (64x64 -> 16x16)
    c.features.pooling = "cls_mean"  # linear input: "cls_mean" (DINO), "cls_mean_max", "max"
    c.features.cache_dir = ""  # "" -> WORKDIR/features
    c.features.dtype = ""  # encoder compute dtype; "" -> the export's
    c.probe = ml_collections.ConfigDict()
    c.probe.name = probe
    c.probe.kwargs = kwargs[probe]
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.epochs = 10  # the paper trains the linear classifier for 10 epochs
    c.optim.batch_size = 256
    c.optim.weight_decay = 0.0
    c.loss = ml_collections.ConfigDict()
    c.loss.pos_weight = "balanced"  # positives weigh n_negative / n_positive
    # The dense probe (eval.patch_probe): a linear classifier on each frozen patch token,
    # "does this patch hold calcium?", from the pixel labels; a measurement beside the
    # slice probe (summary["patch"]), not the gate.
    c.patch_probe = ml_collections.ConfigDict()
    c.patch_probe.enabled = True
    c.patch_probe.max_rows = 262144  # train tokens fitted (calcium ones kept, others drawn)
    # lr 1e-2 x 20 epochs: 1e-3 x 5 underfits (docs/measurements.md#dense-probe-learning-rate).
    c.patch_probe.lr = 1e-2
    c.patch_probe.epochs = 20
    c.patch_probe.batch_size = 1024
    c.eval = ml_collections.ConfigDict()
    c.eval.target_recall = 0.95  # the threshold: the largest with this recall on val
    c.splits = splits_config()  # features of all three; threshold on val, metrics on test
    c.mesh = mesh_config()
    c.phantom = phantom_config()
    return c


def segment_config(model: str = "unet") -> ml_collections.ConfigDict:
    """Segmentation (``train.segment``): the paper's Table 4 (64 filters, 512 px, batch 64,
    lr 1e-4, 100 epochs) for ``model`` in ``models.segmenters.SEGMENTERS``."""
    kwargs = {
        "unet": {"filters": 64},
        "attention_unet": {"filters": 64},
        "swin_unet": {"embed_dim": 64, "window": 8},
        "vit_unet": {"decoder_filters": 16},
    }
    if model not in kwargs:
        raise ValueError(f"unknown segmentation model {model!r}; choose from {sorted(kwargs)}")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.encoder = ""  # vit_unet: pretraining workdir (or its encoder/) to start from
    c.data = data_config()
    c.data.manifest = ""  # "" -> a phantom under the workdir (config.phantom)
    c.data.seed = c.get_ref("seed")
    c.data.batch_size = 64  # global batch (Table 4)
    c.data.eval_size = 0  # keep the record size (512 for COCA)
    c.data.positive_fraction = 0.5  # share of training slices with calcium
    c.data.augment = False  # flips would swap left/right anatomy; off by default
    c.data.hflip_prob = 0.0
    c.data.vflip_prob = 0.0
    c.model = ml_collections.ConfigDict()
    c.model.name = model
    c.model.dtype = "float32"
    # p(background) at init (models.unet.prior_bias_init): ~0.1 % of pixels are calcium.
    c.model.kwargs = {**kwargs[model], "background_prior": 0.999}
    c.loss = ml_collections.ConfigDict()
    c.loss.class_weights = (1.0, 100.0, 100.0, 100.0, 100.0)  # background, RCA, LAD, LCA, LCX
    c.loss.ce_weight = 1.0
    c.loss.dice_weight = 1.0
    c.loss.smooth = 1.0  # Dice smoothing, pixels
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4
    c.optim.epochs = 100
    c.optim.num_steps = 0  # > 0: train this many steps instead of epochs
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 0.0  # 0: no clipping
    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 64
    c.splits = splits_config()  # trained on train, evaluated on test (val unused)
    c.mesh = mesh_config()
    c.checkpoint = checkpoint_config(every_steps=500)
    c.phantom = phantom_config()
    c.log_every = 50
    c.tensorboard = False  # also write TensorBoard event files
    return c


def infer_config() -> ml_collections.ConfigDict:
    """Integrated scoring (``inference.batch.infer_from_config``): the one inference shape.

    ``tools/infer.py`` fills the workdirs, ``source`` and ``out_dir``; the experiments'
    infer stage fills them from its own stages (:func:`stage_infer_config`).
    """
    c = ml_collections.ConfigDict()
    c.probe_workdir = ""  # eval/probe.py workdir (encoder + probe + threshold)
    c.encoder_workdir = ""  # "" -> the encoder named in the probe workdir's config.json
    c.segmenter_workdir = ""  # tools/segment.py workdir
    c.source = ml_collections.ConfigDict()
    c.source.kind = "manifest"  # manifest | release | dicom
    c.source.path = ""
    c.source.split = "test"  # manifest only
    c.source.release_kind = "gated"  # release only: gated | nongated
    c.out_dir = ""
    c.mode = "both"  # gated | unet_only | both
    c.threshold = -1.0  # gate threshold; -1: the probe's own (chosen on val)
    c.batch_size = 32  # gate batch (global, rounded up to the device count)
    c.seg_batch_size = 0  # U-Net batch; 0: batch_size
    c.write_nifti = False  # label and CT volumes as .nii.gz on the DICOM's geometry (Slicer)
    c.write_seg = False  # labels as DICOM SEG (OUT/seg/), for studies read from DICOM
    c.report = True  # write OUT/report/report.md when ground truth is available
    c.note = ""  # a line stated in the report (e.g. "demo-size run")
    c.scoring = ml_collections.ConfigDict()
    c.scoring.threshold_hu = 130.0  # 147 for 100 kVp protocols
    c.scoring.connectivity = 4
    c.scoring.min_area_mm2 = 1.0
    c.scoring.thickness_normalisation = True
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    return c


# The fields of infer_config() an experiment's infer stage takes from its config; the
# stage fills the workdirs, the source (a manifest split: ``split``) and out_dir.
STAGE_INFER_FIELDS = ("mode", "threshold", "batch_size", "seg_batch_size", "note", "scoring",
                      "mesh")  # fmt: skip


def stage_infer_config() -> ml_collections.ConfigDict:
    """``config.infer`` of an experiment (``experiments.stages.infer``): the manifest split
    scored and the :data:`STAGE_INFER_FIELDS` of :func:`infer_config`, same values."""
    full = infer_config()
    c = ml_collections.ConfigDict()
    c.split = full.source.split  # manifest split scored
    for key in STAGE_INFER_FIELDS:
        c[key] = full[key]
    return c


def cpu_size(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config to two CPU cores: float32 compute, XLA attention, data read in this
    process (no Grain workers), two checkpoints kept. A training config (pretrain, probe,
    segment) or an experiment holding them (``pretrain``, ``probe``, ``segment``); returns
    ``c``. Sizes (model, crops, batch, steps) stay each experiment's own lines."""
    stages = [c.pretrain, c.probe, c.segment] if "pretrain" in c else [c]
    for s in stages:
        if "model" in s:
            s.model.dtype = "float32"
            if "attention_impl" in s.model:  # the ViT of pretraining
                s.model.attention_impl = "xla"
        s.data.worker_count = 0
        if "checkpoint" in s:
            s.checkpoint.keep = 2
    return c


def parse_arg(
    arg: str | None, name: str, *, flags: Sequence[str] = (), **options: Sequence[str]
) -> ml_collections.ConfigDict:
    """A ``get_config`` argument: comma-separated words (big_vision's convention).

    ``key=value`` picks one of ``options[key]`` (its first value is the default); a bare
    word is a flag (``runlocal``, ``tiny``: True when present) or a value of an option
    (``configs/probe.py:transformer`` is ``probe=transformer``).

    Args:
      arg: the text after ``:`` in ``--config configs/<name>.py:<arg>``; None or "" for
        the defaults.
      name: the config file's name, for the error message.
      flags: the bare words the file takes.
      options: per key, its valid values, the default first.

    Returns:
      A ConfigDict with every option (str) and every flag (bool).

    Raises:
      ValueError: a word that is none of these (one line naming the valid choices).
    """
    out = ml_collections.ConfigDict({k: str(v[0]) for k, v in options.items()})
    out.update({f: False for f in flags})
    by_value = {str(v): k for k, values in options.items() for v in values}
    for word in filter(None, (w.strip() for w in (arg or "").split(","))):
        key, eq, value = word.partition("=")
        if not eq and word in flags:
            out[word] = True
        elif not eq and word in by_value:
            out[by_value[word]] = word
        elif eq and key in options and value in options[key]:
            out[key] = value
        else:
            valid = [f"{k}={'|'.join(v)}" for k, v in options.items()] + list(flags)
            where = f" (in {arg!r})" if word != arg else ""
            raise ValueError(
                f"configs/{name}.py: bad argument {word!r}{where}; valid, comma-separated: "
                f"{', '.join(valid)}"
            )
    return out
