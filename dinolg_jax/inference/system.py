"""The integrated calcium-scoring system: slice gate (encoder + probe) -> U-Net -> Agatston.

Per study (``CacPipeline.score``)::

    hu int16 [Z, H, W]
      -> gate:     prepare_gate(hu) -> encoder + probe -> p(calcium) [Z]
      -> flagged:  slices with p >= threshold                       (mode "gated")
                   every slice                                      (mode "unet_only")
      -> segment:  prepare_seg(hu[flagged]) -> U-Net -> argmax -> labels [F, H, W]
      -> labels:   [Z, H, W], zero on slices that were not segmented
      -> agatston(hu, labels, pixel_mm, slice_thickness_mm, **scoring) per vessel, total,
         categories (paper4, standard5) and CAC-DRS.
      -> result.labels: the scored voxels only (labelled, HU >= threshold, in a lesion of
         at least the minimum area: ``inference/scored_labels.py``), what NIfTI and SEG hold.

Resolution: a model with a :class:`~dinolg_jax.inference.resolution.ModelGrid` (the
spacing and slice size it learnt at) sees a study of another spacing or size resampled
in-plane to its grid; the segmenter's class probabilities come back onto the study's
grid (``inference/resolution.py``), and Agatston is computed on the original HU at the
original spacing. A study like the training slices is scored as it is. A segmenter with
only an ``input_shape`` (spacing unknown) refuses a study of another slice size.

The models are injected as :class:`SliceModel` (a pure ``apply(params, x)``, its params
and a host-side ``prepare`` that turns HU slices into the model's input, i.e. the same
normalisation / resize the model was trained with), so tests drive the pipeline with
tiny stand-ins and :mod:`dinolg_jax.inference.loading` builds the real ones from workdirs.

Batching: each model is one ``jax.jit`` with explicit shardings over the mesh: params
replicated, the batch split over every device (the ``data`` and ``fsdp`` axes). The batch
size is fixed (rounded up to a multiple of the device count) and the last batch of a study
is zero-padded and its padded rows dropped, so a model compiles once per slice size, and
every slice's output is independent of which slices share its batch (the models have no
batch statistics). All batches of a study are dispatched before the first is read back,
so host preparation overlaps device compute.

Timings per study (seconds, host wall clock): ``read`` (filled by the caller),
``gate``, ``segment`` (each including host preparation and the transfer back) and
``score`` (Agatston on the host).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from dinolg_jax.data.volume import CTVolume
from dinolg_jax.inference.resolution import InPlaneMap, ModelGrid
from dinolg_jax.inference.scored_labels import split_scored
from dinolg_jax.runtime import mesh as mesh_lib
from dinolg_jax.scoring.agatston import (
    CONVENTION_OPTIONS,
    VESSELS,
    AgatstonResult,
    agatston,
    cac_drs,
    risk_category,
)

MODES = ("gated", "unet_only")
CATEGORY_SCHEMES = ("paper4", "standard5")


@dataclass(frozen=True)
class SliceModel:
    """A per-slice model as the pipeline sees it.

    Attributes:
      apply: pure, jittable ``(params, x [B, h, w, C]) -> y [B, ...]``. For the gate, y
        is p(calcium) [B] in [0, 1]; for the segmenter, logits [B, H, W, K] at the input
        slice's resolution.
      params: the model's parameter pytree (host or device arrays).
      prepare: host-side ``hu [B, H, W] int16 -> float32 [B, h, w, C]``: the exact
        normalisation (and resize) the model was trained with.
      name: for logs and reports.
      input_shape: (H, W) of the slices the model was trained on when it must see exactly
        that size (a segmenter: it finds lesions at the scale it learnt, and its labels
        are scored on the study's grid); None when unknown or when ``prepare`` resizes.
      grid: the in-plane grid (spacing, size) it learnt at: studies of another spacing
        are resampled to it; None when unknown.
    """

    apply: Callable[[Any, jax.Array], jax.Array]
    params: Any
    prepare: Callable[[np.ndarray], np.ndarray]
    name: str = ""
    input_shape: tuple[int, int] | None = None
    grid: ModelGrid | None = None


class BatchedRunner:
    """Runs a jitted per-slice function over any number of slices in fixed-size batches.

    Attributes:
      batch_size: the global batch (a multiple of the mesh's device count).
      calls: number of batches run so far.
      slices: number of real (unpadded) slices run so far.
    """

    def __init__(
        self,
        fn: Callable[[Any, jax.Array], jax.Array],
        params: Any,
        prepare: Callable[[np.ndarray], np.ndarray],
        mesh: Mesh,
        batch_size: int,
    ):
        """Places the params (replicated) and jits ``fn`` with batch-sharded in/outputs.

        Args:
          fn: ``(params, x [B, ...]) -> y [B, ...]``, jittable.
          params: parameter pytree.
          prepare: host-side preprocessing of a chunk of HU slices.
          mesh: device mesh; the batch is split over all of its devices.
          batch_size: requested batch; rounded up to a multiple of the device count.
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n_dev = mesh.devices.size
        self.batch_size = int(math.ceil(int(batch_size) / n_dev) * n_dev)
        self.mesh = mesh
        self.prepare = prepare
        self.params = jax.device_put(params, mesh_lib.replicated(mesh))
        batch_sh = mesh_lib.batch_sharding(mesh)
        self._fn = jax.jit(
            fn, in_shardings=(mesh_lib.replicated(mesh), batch_sh), out_shardings=batch_sh
        )
        self.calls = 0
        self.slices = 0

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        """Runs every slice of ``hu`` [N, H, W]; returns the stacked outputs [N, ...]."""
        n = int(hu.shape[0])
        if n == 0:
            raise ValueError("no slices to run")
        pending = []
        for start in range(0, n, self.batch_size):
            x = np.asarray(self.prepare(hu[start : start + self.batch_size]), np.float32)
            real = x.shape[0]
            if real < self.batch_size:  # pad the last batch: one compiled shape
                pad = np.zeros((self.batch_size - real, *x.shape[1:]), x.dtype)
                x = np.concatenate([x, pad])
            y = self._fn(self.params, mesh_lib.global_batch_from_numpy(x, self.mesh))
            pending.append((y, real))
            self.calls += 1
            self.slices += real
        outs = [np.asarray(jax.device_get(y))[:real] for y, real in pending]
        return np.concatenate(outs)

    def warmup(self, slice_shape: tuple[int, int]) -> None:
        """Compiles for slices of ``slice_shape`` (H, W) with one zero batch (not counted)."""
        hu = np.zeros((1, *slice_shape), np.int16)
        x = np.asarray(self.prepare(hu), np.float32)
        x = np.broadcast_to(x, (self.batch_size, *x.shape[1:])).copy()
        jax.block_until_ready(self._fn(self.params, mesh_lib.global_batch_from_numpy(x, self.mesh)))


def score_summary(result: AgatstonResult) -> dict[str, Any]:
    """Per-vessel and total Agatston, volume, mass, categories and CAC-DRS of one result."""
    out: dict[str, Any] = {
        "total": float(result.total),
        "per_vessel": {v: float(result.per_vessel[v]) for v in VESSELS},
        "volume_mm3": float(result.volume_mm3),
        "mass_mg": None if result.mass_mg is None else float(result.mass_mg),
        "num_lesions": len(result.lesions),
    }
    for scheme in CATEGORY_SCHEMES:
        out[scheme] = risk_category(result.total, scheme)
    out["cac_drs"] = cac_drs(result.per_vessel, result.total)
    return out


@dataclass
class StudyResult:
    """The outcome of one study in one mode (or an error row).

    Attributes:
      study_id: de-identified id.
      mode: "gated" or "unet_only".
      num_slices: Z.
      flagged: int [F] slices sent to the U-Net (over the threshold, or all).
      probabilities: float32 [Z] gate output, None in "unet_only" mode.
      scores: the Agatston result of the predicted labels (None on error).
      summary: :func:`score_summary` of ``scores``.
      truth: :func:`score_summary` of the ground-truth labels, when the study has them.
      labels: uint8 [Z, H, W] the scored voxels of the predicted labels (labelled, HU >=
        threshold, in a lesion of at least the minimum area) when kept, else None.
      unscored: int32 [M, 3] (slice, row, column) of predicted calcium voxels (labelled,
        HU >= threshold) in lesions below the minimum area, when the labels are kept.
      resampled: per model ("gate", "segmenter") the grid it saw the study at, when the
        study was resampled for it (``resolution.ModelGrid.describe``); empty otherwise.
      timings: seconds: read, gate, segment, score, total.
      error: {"stage", "type", "message"} when the study failed, else None.
    """

    study_id: str
    mode: str
    num_slices: int = 0
    flagged: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    probabilities: np.ndarray | None = None
    scores: AgatstonResult | None = None
    summary: dict[str, Any] | None = None
    truth: dict[str, Any] | None = None
    labels: np.ndarray | None = None
    unscored: np.ndarray | None = None
    resampled: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lesions included, label volume left out; ``resampled`` only
        when a model saw the study resampled)."""
        out = {
            "study": self.study_id,
            "mode": self.mode,
            "num_slices": int(self.num_slices),
            "flagged_slices": [int(i) for i in self.flagged],
            "probabilities": None
            if self.probabilities is None
            else [round(float(p), 6) for p in self.probabilities],
            "prediction": self.summary,
            "truth": self.truth,
            "lesions": None if self.scores is None else self.scores.to_dict()["lesions"],
            "convention": None if self.scores is None else self.scores.convention,
            "timings_s": dict(self.timings),
            "error": self.error,
        }
        if self.resampled:
            out["resampled"] = dict(self.resampled)
        return out


class CacPipeline:
    """Study -> gated (or U-Net-only) segmentation -> Agatston scores.

    Build it from a gate (encoder + probe as one :class:`SliceModel` returning
    p(calcium)), its threshold, a segmenter and a mesh; call :meth:`score` per study.
    """

    def __init__(
        self,
        segmenter: SliceModel,
        mesh: Mesh,
        *,
        gate: SliceModel | None = None,
        threshold: float = 0.5,
        batch_size: int = 32,
        seg_batch_size: int | None = None,
        scoring: Mapping[str, Any] | None = None,
    ):
        """Jits both models over the mesh.

        Args:
          segmenter: returns logits [B, H, W, K]; labels are their argmax (0 background,
            1 RCA, 2 LAD, 3 LCA, 4 LCX).
          mesh: device mesh; batches are split over all its devices.
          gate: returns p(calcium) [B]; None allows only the "unet_only" mode.
          threshold: a slice is segmented when ``p >= threshold``.
          batch_size: gate batch (global; rounded up to a multiple of the device count).
          seg_batch_size: U-Net batch; defaults to ``batch_size``.
          scoring: keyword options of ``agatston`` (threshold_hu, connectivity,
            min_area_mm2, thickness_normalisation).
        """
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self.scoring = dict(scoring or {})
        unknown = set(self.scoring) - set(CONVENTION_OPTIONS)
        if unknown:
            raise ValueError(f"unknown scoring options {sorted(unknown)}")
        self.mesh = mesh
        self.gate_name = gate.name if gate is not None else ""
        self.seg_name = segmenter.name
        self._gate = None
        if gate is not None:
            gate_fn = gate.apply

            def gate_prob(params, x):
                return jnp.asarray(gate_fn(params, x), jnp.float32).reshape(x.shape[0])

            self._gate = BatchedRunner(gate_prob, gate.params, gate.prepare, mesh, batch_size)
        seg_fn = segmenter.apply

        def seg_labels(params, x):
            return jnp.argmax(seg_fn(params, x), axis=-1).astype(jnp.uint8)

        self._seg = BatchedRunner(
            seg_labels, segmenter.params, segmenter.prepare, mesh, seg_batch_size or batch_size
        )

        def seg_probs(params, x):
            return jax.nn.softmax(jnp.asarray(seg_fn(params, x), jnp.float32), axis=-1)

        # The same model returning class probabilities, for studies resampled to its grid
        # (compiled only when one is scored).
        self._seg_probs = BatchedRunner(
            seg_probs, self._seg.params, segmenter.prepare, mesh, seg_batch_size or batch_size
        )
        self._seg_shape = segmenter.input_shape
        self._seg_grid = segmenter.grid
        self._gate_grid = gate.grid if gate is not None else None

    @property
    def gate_runner(self) -> BatchedRunner | None:
        """The gate's runner (its ``calls`` / ``slices`` counters), None without a gate."""
        return self._gate

    @property
    def seg_runner(self) -> BatchedRunner:
        """The segmenter's runner (its ``calls`` / ``slices`` counters)."""
        return self._seg

    def warmup_plan(
        self, slice_shape: tuple[int, int], pixel_mm: Sequence[float] | None = None
    ) -> tuple[tuple[str, tuple[int, int]], ...]:
        """What :meth:`warmup` compiles for slices of ``slice_shape`` at ``pixel_mm``.

        Returns:
          ``((runner, (H, W)), ...)``: each jitted runner that scoring such a study uses
          ("gate", "segmenter", or "segmenter probabilities" for a study resampled to the
          segmenter's grid) and the slice shape it is handed, as :meth:`score` hands it.
          Studies with the same plan share their compilations.
        """
        shape = (int(slice_shape[0]), int(slice_shape[1]))
        plan = []
        if self._gate is not None:
            gate_map = self._map(self._gate_grid, shape, pixel_mm)
            plan.append(("gate", gate_map.model_shape if gate_map else shape))
        seg_map = self._map(self._seg_grid, shape, pixel_mm)
        if seg_map is None:
            plan.append(("segmenter", shape))
        else:
            plan.append(("segmenter probabilities", seg_map.model_shape))
        return tuple(plan)

    def warmup(
        self, slice_shape: tuple[int, int], pixel_mm: Sequence[float] | None = None
    ) -> float:
        """Compiles both models for slices of ``slice_shape`` (at ``pixel_mm``: whether
        they are resampled; None: resampled when the size is not the model's); returns
        the seconds it took. What it compiles is :meth:`warmup_plan`.

        Call it before timing a run so that per-study timings exclude compilation; give
        the study's pixel spacing, so that it compiles the shapes :meth:`score` will use.
        """
        t0 = time.perf_counter()
        runners = {"gate": self._gate, "segmenter": self._seg,
                   "segmenter probabilities": self._seg_probs}  # fmt: skip
        for name, shape in self.warmup_plan(slice_shape, pixel_mm):
            runners[name].warmup(shape)
        return time.perf_counter() - t0

    @staticmethod
    def _map(
        grid: ModelGrid | None, shape: tuple[int, ...], pixel_mm: Sequence[float] | None
    ) -> InPlaneMap | None:
        """The in-plane map of slices ``shape`` at ``pixel_mm`` onto ``grid`` (None: scored
        as they are). Without a spacing, slices of another size than the grid's are
        assumed to need it (for :meth:`warmup`)."""
        if grid is None:
            return None
        if pixel_mm is None:
            if tuple(shape) == grid.shape or grid.resizes:
                return None
            return InPlaneMap(tuple(shape), grid.shape, grid.shape)
        return grid.mapping(shape, pixel_mm)

    def gate_probabilities(
        self, hu: np.ndarray, pixel_mm: Sequence[float] | None = None
    ) -> np.ndarray:
        """p(calcium) float32 [Z] of every slice of ``hu`` [Z, H, W].

        With ``pixel_mm`` (row, col mm) and a gate that knows its grid, slices unlike
        its training slices are resampled to that grid first; otherwise its ``prepare``
        alone resizes them.
        """
        if self._gate is None:
            raise ValueError("this pipeline has no gate (built for unet_only)")
        mapping = None if pixel_mm is None else self._map(self._gate_grid, hu.shape[1:], pixel_mm)
        if mapping is not None:
            hu = mapping.to_model(hu)
        return self._gate(hu).astype(np.float32)

    def segment(
        self, hu: np.ndarray, slices: Sequence[int], pixel_mm: Sequence[float] | None = None
    ) -> np.ndarray:
        """uint8 [Z, H, W] labels: the U-Net's argmax on ``slices``, zero elsewhere.

        With ``pixel_mm`` (row, col mm) and a segmenter that knows its grid, slices unlike
        its training slices are resampled to that grid, segmented there, and the argmax
        of their class probabilities resampled back is returned (module docstring).

        Raises:
          ValueError: slices of another size than the segmenter's and no grid (or no
            ``pixel_mm``) to resample them with.
        """
        labels = np.zeros(hu.shape, np.uint8)
        idx = np.asarray(slices, np.int64)
        mapping = None
        if pixel_mm is not None:
            mapping = self._map(self._seg_grid, hu.shape[1:], pixel_mm)
        trained = self._seg_shape
        if (
            idx.size
            and mapping is None
            and trained is not None
            and tuple(hu.shape[1:]) != tuple(trained)
        ):
            why = (
                "its training pixel spacing is unknown (no training manifest): pass "
                "--model_spacing_mm (the spacing it was trained at) to resample studies to it"
                if self._seg_grid is None
                else "pass the study's pixel spacing to resample it to the segmenter's grid"
            )
            raise ValueError(
                f"segmenter {self.seg_name} was trained on {trained[0]} x {trained[1]} px "
                f"slices and this study's are {hu.shape[1]} x {hu.shape[2]} px, and {why}"
            )
        if idx.size and mapping is not None:
            probs = self._seg_probs(mapping.to_model(hu[idx]))
            labels[idx] = mapping.labels_to_study(probs)
        elif idx.size:
            out = self._seg(hu[idx])
            if out.shape != (idx.size, *hu.shape[1:]):
                raise ValueError(
                    f"segmenter returned labels of shape {out.shape[1:]} for slices of "
                    f"shape {hu.shape[1:]}; it must keep the input resolution"
                )
            labels[idx] = out
        return labels

    def score(
        self, study: CTVolume, mode: str = "gated", *, keep_labels: bool = False
    ) -> StudyResult:
        """Scores one study.

        Args:
          study: the volume and its geometry (``data.volume.CTVolume``; ground-truth
            labels optional).
          mode: "gated" (segment the slices the gate flags) or "unet_only" (every slice).
          keep_labels: keep the predicted label volume in the result (for NIfTI output).

        Returns:
          A :class:`StudyResult`; ``timings["read"]`` is left for the caller.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        hu = np.asarray(study.hu)
        if hu.ndim != 3 or hu.shape[0] == 0:
            raise ValueError(f"hu must be [Z, H, W] with Z >= 1, got shape {hu.shape}")
        result = StudyResult(study.study_id, mode, num_slices=int(hu.shape[0]))
        t0 = time.perf_counter()
        pixel_mm = study.pixel_mm
        for name, grid in (("gate", self._gate_grid if mode == "gated" else None),
                           ("segmenter", self._seg_grid)):  # fmt: skip
            if self._map(grid, hu.shape[1:], pixel_mm) is not None:
                result.resampled[name] = grid.describe()
        if mode == "gated":
            probs = self.gate_probabilities(hu, pixel_mm)
            result.probabilities = probs
            result.flagged = np.flatnonzero(probs >= self.threshold)
        else:
            result.flagged = np.arange(hu.shape[0])
        t1 = time.perf_counter()
        labels = self.segment(hu, result.flagged, pixel_mm)
        t2 = time.perf_counter()
        options = dict(self.scoring, mass_factor=study.mass_factor)
        result.scores = agatston(hu, labels, study.pixel_mm, study.slice_thickness_mm, **options)
        result.summary = score_summary(result.scores)
        t3 = time.perf_counter()
        if study.labels is not None:
            truth = agatston(hu, study.labels, study.pixel_mm, study.slice_thickness_mm, **options)
            result.truth = score_summary(truth)
        if keep_labels:
            result.labels, unscored = split_scored(hu, labels, pixel_mm, result.scores.convention)
            result.unscored = np.argwhere(unscored).astype(np.int32)
        result.timings = {"gate": t1 - t0, "segment": t2 - t1, "score": t3 - t2}
        return result
