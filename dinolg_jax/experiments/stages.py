"""The pipeline's stages as idempotent, resumable functions over their own workdirs.

::

    make_phantom      -> <dir>/release (a COCA-format phantom)       summary: truth path
    convert_release   -> <dir>/manifest.json + shards + report.json  summary: manifest path
    pretrain_encoder  -> train.pretrain.pretrain (encoder/ export)   summary: its summary
    initial_encoder   -> the same run's random init as encoder/      summary: step 0
    supervised_encoder -> train.supervised (the labels' ceiling)    summary: its summary
    measure_attention -> eval.attention (attn_calcium_ratio)         summary: the ratios
    train_probe       -> eval.probe.run_probe (probe/, threshold)   summary: its summary
    train_segmenter   -> train.segment.train_segmenter (checkpoints) summary: its summary
    infer             -> <dir>/out (inference.batch) + <dir>/out/report summary: key numbers

Contract of every stage function ``stage(workdir, ...) -> summary``:

* a workdir holding a finished ``summary.json`` (``status`` absent or ``"done"``) is
  skipped: its summary is returned without recomputing anything (a summary.json cut
  short by a crash, or otherwise not a JSON object, counts as none, as in
  ``runtime.run``: the stage runs again);
* otherwise the stage runs; an interrupted training stage resumes from its own Orbax
  checkpoint (the libraries do that), the converter from its per-study cache, and the
  phantom and inference stages (seconds) are simply redone;
* the resolved config is kept as ``config.json`` in the workdir. Re-running into a
  workdir whose ``config.json`` differs from the requested config (ignoring the
  ``debug`` group, which only injects faults or sleeps, and top-level ``workers``, which
  the data libraries guarantee do not change their output) raises
  :class:`StageConfigError` instead of silently mixing two experiments.

Stages are plain library calls (no subprocesses), so the whole chain runs from a
notebook as well as from ``tools/ablate.py``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from dinolg_jax.runtime.json_file import read_json_dict, write_json

SUMMARY = "summary.json"
CONFIG = "config.json"
IGNORED_CONFIG_KEYS = ("debug", "workers")  # faults and process counts: same results


class StageConfigError(ValueError):
    """A workdir that holds a stage run with another config than the one requested."""


class StageInterrupted(RuntimeError):
    """A stage stopped early (e.g. SIGTERM during pretraining); re-running resumes it."""


def _plain(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """A JSON round trip of a config (tuples -> lists, references resolved)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    return json.loads(json.dumps(dict(config), sort_keys=True, default=str))


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS}


def done_summary(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The workdir's summary.json when the stage finished there (status "done"), else
    None; a missing, truncated or corrupt summary.json is None (the stage re-runs, and a
    training stage resumes from its checkpoints), the rule of ``runtime.run.finished_run``,
    which is a training run's own check."""
    summary = read_json_dict(Path(workdir) / SUMMARY)  # truncated or corrupt: as if missing
    if summary is None:
        return None
    return summary if summary.get("status", "done") == "done" else None


def check_config(workdir: str | os.PathLike, config: Any) -> None:
    """Raises :class:`StageConfigError` if ``workdir/config.json`` differs from ``config``.

    A workdir without a readable config.json (new, interrupted before the stage wrote
    it, or one cut short by a crash) passes.
    """
    stored = read_json_dict(Path(workdir) / CONFIG)  # truncated or corrupt: as if missing
    if stored is None:
        return
    old = _comparable(stored)
    new = _comparable(_plain(config))
    if old != new:
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise StageConfigError(
            f"{workdir} holds a run with another config (differs in {keys}); "
            "use a new workdir or delete this one"
        )


def _begin(workdir: str | os.PathLike, config: Any, *, write: bool) -> dict[str, Any] | None:
    """Shared stage prologue: create, check the config, return a finished summary or None."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_config(workdir, config)
    done = done_summary(workdir)
    if done is not None:
        return done
    if write:  # the training libraries write their own config.json
        write_json(workdir / CONFIG, _plain(config))
    return None


def make_phantom(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A synthetic COCA release under ``workdir/release`` (``phantom.coca_release.make_release``).

    Args:
      workdir: stage folder.
      config: ``n_gated``, ``n_nongated``, ``seed``, ``size``, ``slices`` (min, max),
        ``workers``, ``cardiac_fov_mm`` (min, max: the gated scans' targeted field of
        view, mm; empty: the cardiac field).

    Returns:
      ``{"release", "truth", "n_gated", "n_nongated", "wall_s"}``.
    """
    from dinolg_jax.phantom import coca_release

    if (done := _begin(workdir, config, write=True)) is not None:
        return done
    t0 = time.perf_counter()
    release = Path(workdir).absolute() / "release"
    fov = tuple(config.cardiac_fov_mm) or None
    coca_release.make_release(
        release,
        n_gated=int(config.n_gated),
        n_nongated=int(config.n_nongated),
        seed=int(config.seed),
        size=int(config.size),
        slices=tuple(int(s) for s in config.slices),
        workers=int(config.workers),
        cardiac_fov_mm=None if fov is None else (float(fov[0]), float(fov[1])),
    )
    summary = {
        "release": str(release),
        "truth": str(release / "truth.json"),
        "n_gated": int(config.n_gated),
        "n_nongated": int(config.n_nongated),
        "wall_s": time.perf_counter() - t0,
    }
    write_json(Path(workdir) / SUMMARY, summary)
    return summary


def convert_release(
    workdir: str | os.PathLike, release: str | os.PathLike, config: ml_collections.ConfigDict
) -> dict[str, Any]:
    """ArrayRecord shards + ``workdir/manifest.json`` (``data.convert.convert_release``).

    Args:
      workdir: stage folder (the converted dataset lives directly in it).
      release: COCA release root (or the phantom's).
      config: ``seed`` (split seed), ``shards_per_split``, ``workers``.

    Returns:
      ``{"manifest", "splits" {split: {num_studies, num_records, num_positive}},
      "wall_s"}``.
    """
    from dinolg_jax.data import convert
    from dinolg_jax.data import manifest as manifest_lib

    request = {**_plain(config), "release": str(Path(release).absolute())}
    if (done := _begin(workdir, request, write=True)) is not None:
        return done
    t0 = time.perf_counter()
    out = Path(workdir).absolute()
    convert.convert_release(
        release,
        out,
        seed=int(config.seed),
        workers=int(config.workers),
        shards_per_split=int(config.shards_per_split),
        keep_cache=False,
        progress=False,
    )
    man = manifest_lib.load(out)
    splits = {
        name: {k: int(v[k]) for k in ("num_studies", "num_records", "num_positive")}
        for name, v in man.splits.items()
    }
    summary = {
        "manifest": str(out / "manifest.json"),
        "splits": splits,
        "wall_s": time.perf_counter() - t0,
    }
    write_json(out / SUMMARY, summary)
    return summary


def pretrain_encoder(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, manifest: str | os.PathLike
) -> dict[str, Any]:
    """DINO / DINO-LG pretraining on ``manifest`` (``train.pretrain.pretrain``).

    The encoder export lands in ``workdir/encoder``. A run stopped by SIGTERM (status
    "preempted") or by an exception resumes from ``workdir/checkpoints`` when re-run.

    Raises:
      StageInterrupted: the run was preempted (its checkpoint is written).
      runtime.metrics_log.NonFiniteLossError: the loss became NaN/inf (last good checkpoint kept).
    """
    from dinolg_jax.train import pretrain

    config = _with_manifest(config, manifest)
    return _training_stage(workdir, config, pretrain.pretrain, "pretraining")


def _training_stage(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    train: Callable[[ml_collections.ConfigDict, str | os.PathLike], dict[str, Any]],
    what: str,
) -> dict[str, Any]:
    """A training stage: the finished summary, or ``train(config, workdir)``'s.

    Raises:
      StageInterrupted: the run was preempted (its checkpoint is written).
    """
    if (done := _begin(workdir, config, write=False)) is not None:
        return done
    summary = train(config, workdir)
    if summary.get("status", "done") != "done":
        raise StageInterrupted(
            f"{what} in {workdir} stopped at step {summary['step']} "
            f"({summary.get('status')}); re-run to resume from its checkpoint"
        )
    return summary


def initial_encoder(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, manifest: str | os.PathLike
) -> dict[str, Any]:
    """The random-initialised encoder of a pretraining config (``random_init`` control)."""
    from dinolg_jax.train import pretrain

    config = _with_manifest(config, manifest)
    if (done := _begin(workdir, config, write=False)) is not None:
        return done
    return pretrain.initial_encoder(config, workdir)


def cnn_baseline(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, manifest: str | os.PathLike
) -> dict[str, Any]:
    """The CNN yardstick (``train.cnn_baseline``): val and test slice ROC-AUC.

    Raises:
      StageInterrupted: the run was preempted (its checkpoint is written).
    """
    from dinolg_jax.train import cnn_baseline

    config = _with_manifest(config, manifest)
    return _training_stage(workdir, config, cnn_baseline.train_cnn_baseline, "the CNN yardstick")


def supervised_encoder(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    manifest: str | os.PathLike,
    init_encoder: str | os.PathLike,
) -> dict[str, Any]:
    """The supervised ceiling (``train.supervised``): ``init_encoder`` trained on the slice
    labels of the train split, exported to ``workdir/encoder`` like a pretrained encoder.

    Raises:
      StageInterrupted: the run was preempted (its checkpoint is written).
    """
    from dinolg_jax.train import supervised

    config = _with_manifest(config, manifest)
    config.init_encoder = str(Path(init_encoder).absolute())
    return _training_stage(workdir, config, supervised.train_supervised, "the ceiling")


def measure_attention(
    workdir: str | os.PathLike,
    encoder: str | os.PathLike,
    manifest: str | os.PathLike,
    split: str = "test",
) -> dict[str, Any]:
    """``attn_calcium_ratio`` of a pretraining workdir's encoder on the calcified slices of
    ``split`` (``eval.attention``), at the encoder's global crop size and HU window.

    Returns:
      ``{"mean", "per_head", "per_slice", "slice_rows" (their record indices in
      ``split``), "n_slices", "split", "size"}``.
    """
    import grain

    from dinolg_jax.data import manifest as manifest_lib
    from dinolg_jax.data import records
    from dinolg_jax.eval.attention import slices_attention_ratio
    from dinolg_jax.runtime.checkpoint import load_encoder

    pre = json.loads((Path(encoder) / CONFIG).read_text())
    request = {"encoder": str(Path(encoder).absolute()), "manifest": str(manifest),
               "split": split}  # fmt: skip
    if (done := _begin(workdir, request, write=True)) is not None:
        return done
    m = manifest_lib.load(manifest)
    source = grain.sources.ArrayRecordDataSource(m.shard_paths(split))
    slices, index = [], []
    for i in range(len(source)):
        rec = records.decode(source[i], fields=("image", "labels"))
        if rec["has_calcium"]:
            slices.append(rec)
            index.append(i)
    params, model_config = load_encoder(encoder)
    size = int(pre["data"]["global_size"])
    out = slices_attention_ratio(params, model_config, slices, pre["data"]["hu_window"], size)
    out["slice_rows"] = [index[j] for j in out["slice_rows"]]  # record indices of the split
    summary = {**out, "split": split, "size": size}
    write_json(Path(workdir) / SUMMARY, summary)
    return summary


def train_probe(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    manifest: str | os.PathLike,
    encoder: str | os.PathLike,
) -> dict[str, Any]:
    """The calcified-slice probe on the frozen ``encoder`` (``eval.probe.run_probe``).

    Its features are cached under the workdir; the probe and the threshold chosen on val
    are saved to ``workdir/probe`` for the integrated system.
    """
    from dinolg_jax.eval import probe

    config = _with_manifest(config, manifest)
    config.encoder = str(Path(encoder).absolute())
    if (done := _begin(workdir, config, write=False)) is not None:
        return done
    return probe.run_probe(config, workdir)


def train_segmenter(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    manifest: str | os.PathLike,
    encoder: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """A U-Net-family segmenter (``train.segment.train_segmenter``).

    ``encoder`` is only used by the ``vit_unet`` model (its encoder is the pretrained ViT).
    A run stopped by SIGTERM resumes from ``workdir/checkpoints`` when re-run.

    Raises:
      StageInterrupted: the run was preempted (its checkpoint is written).
    """
    from dinolg_jax.train import segment

    config = _with_manifest(config, manifest)
    if encoder is not None and str(config.model.name) == "vit_unet":
        config.encoder = str(Path(encoder).absolute())
    return _training_stage(workdir, config, segment.train_segmenter, "segmentation")


def seeded(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """A resolved copy of a training config with ``seed`` and ``data.seed`` set to ``seed``."""
    c = config.copy_and_resolve_references()
    c.seed = int(seed)
    c.data.seed = int(seed)
    return c


def _with_manifest(config: ml_collections.ConfigDict, manifest: Any) -> ml_collections.ConfigDict:
    """A resolved copy of ``config`` (tuples kept) reading ``manifest``."""
    config = config.copy_and_resolve_references()
    config.data.manifest = str(Path(manifest).absolute())
    return config


def infer(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    manifest: str | os.PathLike,
    probe_workdir: str | os.PathLike | None,
    segmenter_workdir: str | os.PathLike,
) -> dict[str, Any]:
    """Integrated scoring of one manifest split (``inference.batch.infer_from_config``).

    Writes ``workdir/out`` (results.csv, per-study JSON, throughput summary) and
    ``workdir/out/report/report.md``; the stage's own ``summary.json`` holds the
    per-patient rows and the evaluation (Table 6 presence, risk confusion matrices,
    agreement) of every mode: the report's own, from the in-memory results.

    Args:
      workdir: stage folder.
      config: ``config.infer`` of an experiment (``configs/common.py:stage_infer_config``).
      manifest: the converted dataset.
      probe_workdir: the probe stage's workdir (None: U-Net only).
      segmenter_workdir: the segment stage's workdir.

    Returns:
      ``{"report", "patients" [{study, mode, true/pred total and paper4 category,
      flagged}], "evals" {mode: eval.report.evaluate_mode}, "timings"}``.
    """
    from dinolg_jax.inference import batch as batch_lib

    request = {
        **_plain(config),
        "manifest": str(Path(manifest).absolute()),
        "probe_workdir": str(Path(probe_workdir).absolute()) if probe_workdir else "",
        "segmenter_workdir": str(Path(segmenter_workdir).absolute()),
    }
    if (done := _begin(workdir, request, write=True)) is not None:
        return done
    # The inference config (configs/common.py:infer_config): the experiment's settings
    # (mode, threshold, batch sizes, note, scoring, mesh) with this stage's workdirs,
    # source (the manifest split) and out_dir; the encoder the probe names, no NIfTI or
    # DICOM SEG files, the report.
    c = ml_collections.ConfigDict(config.to_dict())  # an unlocked, resolved copy
    del c["split"]
    c.probe_workdir = request["probe_workdir"]
    c.encoder_workdir = ""
    c.segmenter_workdir = request["segmenter_workdir"]
    c.write_nifti = False
    c.write_seg = False
    c.report = True
    c.source = ml_collections.ConfigDict(
        {"kind": "manifest", "path": request["manifest"], "split": str(config.split)}
    )
    c.out_dir = str(Path(workdir).absolute() / "out")
    if not probe_workdir:
        c.mode = "unet_only"
    out = batch_lib.infer_from_config(c)
    summary = {
        "report": out["report"],
        "results_csv": str(Path(c.out_dir) / "results.csv"),
        "threshold": out["threshold"],
        "patients": patient_rows(out["results"]),
        "evals": out["evals"] or {},
        "errors": {m: v["errors"] for m, v in out["modes"].items()},
        "timings": {
            m: {k: v[k] for k in ("compute_s", "slices_per_s", "studies_per_s")}
            for m, v in out["modes"].items()
        },
    }
    write_json(Path(workdir) / SUMMARY, summary)
    return json.loads(json.dumps(summary, default=str))


def patient_rows(results: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Per (study, mode), in results.csv's order: true and predicted total Agatston and
    paper4 category (totals to 4 decimals, as the CSV holds them).

    Args:
      results: ``{mode: [inference.system.StudyResult]}``, one result per study in
        every mode (``inference.batch.run_inference``).

    Error rows keep their error type in ``error`` and no prediction.
    """
    rows = []
    for by_mode in zip(*results.values(), strict=True):
        for r in by_mode:
            pred, truth = r.summary or {}, r.truth or {}
            rows.append(
                {
                    "study": r.study_id,
                    "mode": r.mode,
                    "num_slices": int(r.num_slices),
                    "num_flagged": len(r.flagged),
                    "true_total": round(float(truth["total"]), 4) if truth else None,
                    "true_category": truth.get("paper4", ""),
                    "pred_total": round(float(pred["total"]), 4) if pred else None,
                    "pred_category": pred.get("paper4", ""),
                    "error": (r.error or {}).get("type") or None,
                }
            )
    return rows
