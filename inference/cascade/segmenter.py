"""The FLARE23 cascade: organ stage -> organ clean-up -> aorta crop -> tumor stages -> merge.

Each step is a small pure function taking the Geometry explicitly; `CascadeSegmenter` strings
them together. Stages are callables, so tests drive the whole cascade with oracle "networks":

- organ stage: `(volume, spacing, timings) -> uint8 labels 0..13` on the grid of `volume`;
- tumor stage (one per host organ): `(crop, spacing, timings) -> labels on the crop`, in the tumor
  nnU-Net model's own label values: 0 background, 1 tumor. The cascade turns 1 into label 14.

Order, and why: organ post-processing runs first, so that a stray aorta speck can neither stretch
the aorta crop nor sway the contrast decision, and so that tumor crops are boxes around clean
organs; it works on organ labels only, before the tumor merge, so no tumor voxel is ever removed
by an organ rule.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cc3d
import numpy as np
from scipy import ndimage

from inference.cascade.case_budget import CaseBudget, Clock, StageCostModel
from inference.cascade.parameters import CascadeParameters
from inference.engine.runner import EngineOptions, ModelRunner, Timer
from inference.core.boxes import axis_extent, foreground_extents
from inference.core.geometry import Geometry
from inference.cascade.cascade_json import Manifest, ManifestError, TumorStage
from inference.engine.model import load_model, read_label_values
from inference.cascade.organ_plausibility import implausible_organ
from inference.engine.precision import PrecisionChoice, recorded_agreement, with_resolved_precision
from inference.cascade.postprocessing import postprocess_organs
from inference.engine.preprocessing import sanitize_hu
from inference.core.labels import LABEL_NAMES, TUMOR_LABEL, TUMOR_MODEL_LABEL

log = logging.getLogger(__name__)

AORTA = 5
TUMOR_CONNECTIVITY = 26
FILTER_REASONS = ("not_connected", "too_small", "low_overlap", "total_too_small")
_ROUNDING = 1e-6  # so that 50 mm / 2.5 mm is 20 slices, not 19.999999

StageFn = Callable[[np.ndarray, tuple, dict], np.ndarray]


# ---------------------------------------------------------------- geometry helpers

def cranio_caudal_axis(geometry: Geometry) -> tuple[int, float]:
    """(array axis most aligned with the patient's head-feet axis, +1/-1 if increasing index goes cranial)."""
    axis = geometry.array_axis_along(2)
    return axis, geometry.cranial_sign(axis)


def voxel_mm3(geometry: Geometry) -> float:
    return float(np.prod(geometry.spacing))


def voxels_for_mm3(mm3: float, geometry: Geometry) -> int:
    """Smallest voxel count whose volume reaches `mm3`."""
    return max(0, math.ceil(mm3 / voxel_mm3(geometry) - _ROUNDING))


# ---------------------------------------------------------------- aorta crop and contrast

@dataclass(frozen=True)
class SlabCrop:
    """Index range [start, stop) kept along array `axis`."""
    axis: int
    start: int
    stop: int

    def as_dict(self) -> dict:
        return {"axis": self.axis, "start": self.start, "stop": self.stop}


def aorta_crop(organs: np.ndarray, geometry: Geometry, params: CascadeParameters) -> SlabCrop | None:
    """Slices from the aorta's most cranial one down to `aorta_caudal_margin_mm` below its most
    caudal one, along the array axis closest to the patient's z; None without a usable aorta."""
    aorta = organs == AORTA
    if np.count_nonzero(aorta) < max(1, voxels_for_mm3(params.aorta_min_mm3, geometry)):
        return None
    axis, cranial = cranio_caudal_axis(geometry)
    first, stop = axis_extent(aorta, axis)
    margin = math.floor(params.aorta_caudal_margin_mm / geometry.spacing[axis] + _ROUNDING)
    if cranial > 0:  # caudal = lower indices
        return SlabCrop(axis, max(0, first - margin), stop)
    return SlabCrop(axis, first, min(organs.shape[axis], stop + margin))


def apply_slab_crop(labels: np.ndarray, crop: SlabCrop) -> np.ndarray:
    """A copy of `labels` with everything outside the slab set to background."""
    result = labels.copy()
    index = [slice(None)] * labels.ndim
    index[crop.axis] = slice(0, crop.start)
    result[tuple(index)] = 0
    index[crop.axis] = slice(crop.stop, None)
    result[tuple(index)] = 0
    return result


def aorta_median_hu(volume: np.ndarray, organs: np.ndarray, geometry: Geometry,
                    params: CascadeParameters) -> float | None:
    """Median HU of the aorta, clamped like every network input (`sanitize_hu`) but on the
    aorta's voxels only, so the scan needs no clamped copy."""
    aorta = organs == AORTA
    if np.count_nonzero(aorta) < max(1, voxels_for_mm3(params.aorta_min_mm3, geometry)):
        return None
    return float(np.median(sanitize_hu(volume[aorta])))


# ---------------------------------------------------------------- tumor crops

def organ_crop_box(mask: np.ndarray, geometry: Geometry, params: CascadeParameters) -> tuple[slice, ...] | None:
    """Bounding box of `mask` plus the tumor margins (mm, rounded up to whole voxels per axis), clamped."""
    cc_axis, _ = cranio_caudal_axis(geometry)
    extents = foreground_extents(mask)
    if extents is None:
        return None
    box = []
    for axis, (start, stop) in enumerate(extents):
        margin_mm = params.tumor_margin_cranio_caudal_mm if axis == cc_axis else params.tumor_margin_in_plane_mm
        margin = max(0, math.ceil(margin_mm / geometry.spacing[axis] - _ROUNDING))
        box.append(slice(max(0, start - margin), min(mask.shape[axis], stop + margin)))
    return tuple(box)


@dataclass
class TumorFilterResult:
    kept: np.ndarray  # bool mask on the crop
    kept_components: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTER_REASONS, 0))

    def as_dict(self) -> dict:
        return {"kept": self.kept_components, "removed": dict(self.removed)}


def filter_tumor(tumor: np.ndarray, organ: np.ndarray, geometry: Geometry,
                 params: CascadeParameters) -> TumorFilterResult:
    """Credible tumor of one host organ (both masks on the same crop; the public FLARE23 rules).

    Per 26-connected component, in this order (the first failed test is the recorded reason):
    not touching or overlapping the organ; smaller than `tumor_min_component_mm3`; fewer voxels
    on the organ than `tumor_min_organ_overlap_mm3`. Then, if what is left totals less than
    `tumor_min_total_mm3`, all of it goes. With the default values the size test only names the
    reason (a component under 32 voxels cannot overlap the organ by 80); it decides on its own
    when the overlap threshold is lowered.
    """
    result = TumorFilterResult(np.zeros(tumor.shape, dtype=bool))
    components, count = cc3d.connected_components(tumor, connectivity=TUMOR_CONNECTIVITY, return_N=True)
    if count == 0:
        return result
    stats = cc3d.statistics(components, no_slice_conversion=True)
    sizes = np.asarray(stats["voxel_counts"], dtype=np.int64)
    overlap = np.bincount(components[organ], minlength=count + 1)
    reason = np.full(count + 1, "", dtype=object)
    if params.tumor_require_organ_contact:
        bounds = stats["bounding_boxes"][1:]  # per component: min, max (inclusive) per array axis
        tumor_box = tuple(slice(int(bounds[:, 2 * a].min()), int(bounds[:, 2 * a + 1].max()) + 1)
                          for a in range(tumor.ndim))
        touching = np.bincount(components[_dilated_near(organ, tumor_box)], minlength=count + 1) > 0
        reason[~touching] = "not_connected"
    checks = [(sizes < voxels_for_mm3(params.tumor_min_component_mm3, geometry), "too_small"),
              (overlap < voxels_for_mm3(params.tumor_min_organ_overlap_mm3, geometry), "low_overlap")]
    for failed, name in checks:
        reason[failed & (reason == "")] = name
    reason[0] = "background"
    kept = reason == ""
    if sizes[kept].sum() < voxels_for_mm3(params.tumor_min_total_mm3, geometry):
        reason[kept] = "total_too_small"
        kept[:] = False
    for name in FILTER_REASONS:
        result.removed[name] = int(np.count_nonzero(reason == name))
    result.kept_components = int(np.count_nonzero(kept))
    if result.kept_components:
        result.kept = kept[components]
    return result


def _dilated_near(organ: np.ndarray, tumor_box: tuple[slice, ...]) -> np.ndarray:
    """`organ` dilated by one voxel (26-neighbourhood); exact inside `tumor_box`, which is all the
    contact test reads, so only that box plus a one-voxel rim is dilated."""
    dilated = np.zeros(organ.shape, dtype=bool)
    box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in tumor_box)
    dilated[box] = ndimage.binary_dilation(organ[box], structure=np.ones((3,) * organ.ndim, dtype=bool))
    return dilated


def merge_tumor(organs: np.ndarray, tumor: np.ndarray) -> np.ndarray:
    """Tumor (14) overrides organ labels."""
    labels = organs.astype(np.uint8, copy=True)
    labels[tumor] = TUMOR_LABEL
    return labels


# ---------------------------------------------------------------- the segmenter

def release_gpu_cache(device) -> None:
    """Hand cached GPU blocks back after a stage: NVML counts the caching pool as used memory."""
    if getattr(device, "type", None) == "cuda":
        import torch
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def _checked_labels(labels, shape, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise ValueError(f"{what} returned shape {labels.shape}, expected {tuple(shape)}")
    return labels


def _as_organ_labels(labels: np.ndarray) -> np.ndarray:
    """uint8 organ labels 0..13 (cc3d and the merge are fastest on uint8; anything else is a wiring error)."""
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if not np.issubdtype(labels.dtype, np.integer) or low < 0 or high >= TUMOR_LABEL:
        raise ValueError(f"organ stage returned {labels.dtype} labels in [{low}, {high}]; expected integers 0..13")
    return labels.astype(np.uint8, copy=False)


def _check_tumor_labels(stage: TumorStage) -> None:
    """A tumor model declares background and tumor only; checked before its weights load."""
    values = read_label_values(stage.folder)
    if values != [0, TUMOR_MODEL_LABEL]:
        raise ManifestError(f"{stage.folder}: a tumor model must have labels [0, {TUMOR_MODEL_LABEL}] "
                            f"(background, tumor), got {values}")


class CascadeSegmenter:
    """Segmenter protocol (`segment(volume, geometry, timings) -> uint8 labels`) for the cascade.

    `organ_stage` / `tumor_stage_fns` ({host organ label: callable}) replace the models the
    manifest names (tests); which tumor stages exist and whether they need contrast always comes
    from the manifest. After each case `last_case_info` describes what the cascade decided.

    Every stage sees HU clamped by `sanitize_hu`. The scan itself is never copied whole for that:
    the organ model clamps slab by slab in its preprocessing, tumor stages get clamped copies of
    their crops, and only an injected organ stage is handed a clamped copy of the whole scan.

    `case_time_budget_s` bounds each case (`inference.cascade.case_budget`): the organ stage always runs,
    a tumor stage only when it is expected to end within the budget; `clock` measures it.
    """

    def __init__(self, manifest: Manifest, options: EngineOptions | None = None, *,
                 organ_stage: StageFn | None = None, tumor_stage_fns: dict[int, StageFn] | None = None,
                 case_time_budget_s: float | None = None, clock: Clock = time.monotonic):
        self.options = options or EngineOptions()
        self.case_time_budget_s, self.clock, self.stage_costs = case_time_budget_s, clock, StageCostModel()
        try:
            self.params = CascadeParameters.from_manifest(manifest.parameters)
        except (TypeError, ValueError) as error:
            raise ManifestError(f"{manifest.root}: {error}") from None
        self.tumor_stages = tuple(manifest.tumor_stages)
        hosts = [stage.organ for stage in self.tumor_stages]
        if len(set(hosts)) != len(hosts) or not all(h in LABEL_NAMES and h != TUMOR_LABEL for h in hosts):
            raise ManifestError(f"{manifest.root}: tumor stages must serve distinct organ labels 1..13, got {hosts}")
        if tumor_stage_fns is not None and set(tumor_stage_fns) != set(hosts):
            raise ValueError(f"tumor_stage_fns serve organs {sorted(tumor_stage_fns)}, "
                             f"the manifest's stages {sorted(hosts)}")
        self._organ_stage_clamps = organ_stage is None  # a model stage clamps while preprocessing
        # {stage folder name: the precision its network runs in and why}, for the run report
        self.precision_choices: dict[str, PrecisionChoice] = {}
        self._stage_options = self._resolve_precisions(manifest)
        self.organ_stage = organ_stage or self._load(manifest.organ_folder)
        self._tumor_fns: dict[int, StageFn | Future] = dict(tumor_stage_fns or {})
        if tumor_stage_fns is None:
            for stage in self.tumor_stages:
                _check_tumor_labels(stage)
            # The tumor models load on a thread while the first case's organ stage runs (1.3-1.9 s
            # of a fresh GPU process, BENCHMARKS.md "GPU memory and time"). Their files were checksummed with
            # the manifest and their labels checked above; a network that still fails to load
            # fails each case that reaches its stage, naming the folder.
            loader = ThreadPoolExecutor(1, thread_name_prefix="tumor-models")
            self._tumor_fns = {stage.organ: loader.submit(self._load, stage.folder)
                               for stage in self.tumor_stages}
            loader.shutdown(wait=False)
        self.last_case_info: dict = {}

    @property
    def tumor_stage_fns(self) -> dict[int, StageFn]:
        """{host organ label: stage callable}, waiting for models still loading."""
        return {organ: self._tumor_fn(organ) for organ in self._tumor_fns}

    def _tumor_fn(self, organ: int) -> StageFn:
        fn = self._tumor_fns[organ]
        return fn.result() if isinstance(fn, Future) else fn

    def _resolve_precisions(self, manifest: Manifest) -> dict[Path, EngineOptions]:
        """Each model's options with `--precision auto` resolved against its recorded bf16-vs-fp32
        agreement (cascade.json); a malformed record is a manifest error, raised before any case."""
        stage_options = {}
        for folder in [manifest.organ_folder, *(stage.folder for stage in self.tumor_stages)]:
            name = folder.relative_to(manifest.root).as_posix()  # the stage's folder as cascade.json names it
            try:
                agreement = recorded_agreement(manifest.raw, name)
            except ValueError as error:
                raise ManifestError(f"{manifest.root / 'cascade.json'}: {error}") from None
            stage_options[folder], self.precision_choices[name] = with_resolved_precision(
                self.options, agreement, str(folder))
        return stage_options

    def _load(self, folder) -> StageFn:
        model = load_model(folder)  # ModelRunner places the weights (host RAM under a budget)
        return functools.partial(ModelRunner(model, self._stage_options[folder]).segment, clamp_hu=True)

    def segment(self, volume: np.ndarray, geometry: Geometry, timings: dict[str, float]) -> np.ndarray:
        if tuple(volume.shape) != geometry.shape:
            raise ValueError(f"volume shape {volume.shape} does not match its geometry {geometry.shape}")
        timer, stage_seconds = Timer(timings), {}
        budget = CaseBudget(self.case_time_budget_s, self.clock)
        info = {"aorta_found": False, "aorta_median_hu": None, "contrast_enhanced": False, "z_crop": None,
                "tumor_stages_run": [], "tumor_stages_skipped": {}, "tumor_components": {},
                "stage_seconds": stage_seconds}
        self.last_case_info = info
        with timer("organ_network"):
            organ_input = volume if self._organ_stage_clamps else sanitize_hu(volume)
            organs = _as_organ_labels(self._run(self.organ_stage, organ_input, geometry,
                                                stage_seconds.setdefault("organ", {}), "organ stage"))
            del organ_input
            self.stage_costs.record_organ(budget.elapsed, volume.size)
        with timer("postprocess"):
            organs = postprocess_organs(organs, self.params.organ_postprocessing)
        with timer("aorta_crop"):
            organs = self._aorta_step(volume, organs, geometry, info)
        tumor = np.zeros(geometry.shape, dtype=bool)
        for stage in self.tumor_stages:
            self._tumor_step(stage, volume, organs, geometry, tumor, info, timer, budget)
        info["time_budget"] = budget.as_dict()
        with timer("merge"):
            return merge_tumor(organs, tumor)

    def _run(self, fn: StageFn, volume, geometry, seconds: dict, what: str) -> np.ndarray:
        try:
            return _checked_labels(fn(volume, geometry.spacing, seconds), volume.shape, what)
        finally:
            release_gpu_cache(self.options.device)

    def _aorta_step(self, volume, organs, geometry, info) -> np.ndarray:
        crop = aorta_crop(organs, geometry, self.params)
        if crop is None:
            log.info("no aorta found (under %.0f mm3): no cranio-caudal crop, scan taken as not contrast-enhanced",
                     self.params.aorta_min_mm3)
            return organs
        median = aorta_median_hu(volume, organs, geometry, self.params)
        info.update(aorta_found=True, aorta_median_hu=median, z_crop=crop.as_dict(),
                    contrast_enhanced=median >= self.params.contrast_hu_threshold)
        log.info("aorta crop: axis %d, slices [%d, %d); aorta median %.0f HU -> %s", crop.axis, crop.start,
                 crop.stop, median, "contrast-enhanced" if info["contrast_enhanced"] else "not contrast-enhanced")
        return apply_slab_crop(organs, crop)

    def _tumor_step(self, stage: TumorStage, volume, organs, geometry, tumor, info, timer: Timer,
                    budget: CaseBudget) -> None:
        name = LABEL_NAMES[stage.organ]
        if stage.needs_contrast and not info["contrast_enhanced"]:
            info["tumor_stages_skipped"][name] = "not contrast-enhanced"
            return
        with timer(f"tumor_{name}"):
            organ = organs == stage.organ
            box = organ_crop_box(organ, geometry, self.params)
            if box is None:
                info["tumor_stages_skipped"][name] = "organ absent"
                return
            crop_voxels = math.prod(s.stop - s.start for s in box)
            refusal = budget.refusal(self.stage_costs.tumor_seconds(name, crop_voxels)) or implausible_organ(organ)
            if refusal:
                info["tumor_stages_skipped"][name] = budget.skipped[name] = refusal
                log.warning("tumor stage for %s skipped: %s", name, refusal)
                return
            started = budget.elapsed
            crop = sanitize_hu(volume[box])
            output = self._run(self._tumor_fn(stage.organ), crop, geometry,
                               info["stage_seconds"].setdefault(name, {}), f"tumor stage for {name}")
            self.stage_costs.record_tumor(name, budget.elapsed - started, crop_voxels)
            found = _tumor_mask(output, name)
            result = filter_tumor(found, organ[box], geometry, self.params)
            tumor[box] |= result.kept
            info["tumor_stages_run"].append(name)
            info["tumor_components"][name] = result.as_dict()


def _tumor_mask(output: np.ndarray, name: str) -> np.ndarray:
    """The tumor model's label 1 as a mask; anything but 0/1 (e.g. 14 already) is a wiring error."""
    if output.dtype == bool:
        return output.copy()
    low, high = (output.min(), output.max()) if output.size else (0, 0)
    if not np.issubdtype(output.dtype, np.integer) or low < 0 or high > TUMOR_MODEL_LABEL:
        raise ValueError(f"tumor stage for {name} returned {output.dtype} labels in [{low}, {high}]; expected "
                         f"integers 0 (background) and {TUMOR_MODEL_LABEL} (tumor)")
    return output == TUMOR_MODEL_LABEL
