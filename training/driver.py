"""The semi-supervised cascade recipe (paper section 2.3) as a resumable, idempotent driver.

    python -m training --preset demo --data DATA --work WORK --weights weights/ --make-data

Steps, each made of units with their own done-marker (`WORK/state/<unit>.json`):

    data      --make-data: synthetic FLARE23-format data (preset sizes); then every training case is
              canonicalised (inference.io.orientation, the layout the engine shows its networks) and
              HU-sanitised into WORK/canonical; the real CT of ../shared/data/real joins as one
              pseudo-labelled case when the preset (or --real-ct) asks for it.
    1         organ_first: an organ model on the cases annotating all 13 organs;
              organ_labels: its pseudo labels complete every other case (a real label wins, pseudo
              labels fill the classes a case does not annotate; tumor voxels go to their host organ);
              organ: the organ model (14 classes) trained on every training case.
    2         tumor_crops: crops of each tumor-bearing organ (inference's own box: bounding box +
              margins in mm) from the tumor-annotated cases; tumor_plan; tumor1_<organ>: one tumor
              model per organ (0 background, 1 tumor).
    3         pseudo_tumors: the organ model and the step-2 tumor models on the cases that do not
              annotate tumors (organ post-processing and aorta crop as at inference); only credible
              components are kept (volume threshold, bounding-box owner organ).
    4         tumor2_plan, tumor2_<organ>: the tumor models trained AGAIN FROM SCRATCH with the same
              budget and the same plans (spacing, patch, network, CT normalisation) on real + pseudo
              labels. So the step-2 models are the exact no-pseudo-label arm of the ablation.
    export    the organ and step-4 tumor models to WEIGHTS/<stage>, and WEIGHTS/cascade.json.
    evaluate  the exported cascade on the validation cases (evaluation.metrics); metrics go to
              WORK/evaluation/validation.json and the manifest's provenance. With --ablation the
              step-2 tumor models are assembled into WORK/ablation/weights and scored as well.

A unit's key is the hash of its parameters and of the run ids of the units it depends on; a rerun
skips a unit whose marker holds the same key, and redoes (after removing its outputs) a unit whose
key changed, which gives every later unit a new key in turn. An interrupted nnU-Net training
resumes from its checkpoint when its key is unchanged.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from inference.core.labels import TUMOR_HOST_NAMES, TUMOR_HOSTS
from training.case_files import write_json
from training.nnunet_backend import NnUNetBackend
from training.presets import NetworkPreset
from training.recipe_settings import (
    DriverError, INFERENCE_ONLY_PARAMETERS, ORGAN_FIRST_ID, ORGAN_ID, RunOptions, STEPS, TUMOR_ID_BASE,
)
from training.steps.data import DataStep
from training.steps.organ_models import OrganModelSteps
from training.steps.pseudo_tumors import PseudoTumorStep
from training.steps.tumor_models import TumorModelSteps
from training.steps.tumor_retraining import TumorRetrainingStep
from training.steps.validation import ValidationStep
from training.steps.weights_folder import WeightsFolderStep
from training.unit_executor import execute_units, StateStore, Unit


@dataclass
class Driver(DataStep, OrganModelSteps, TumorModelSteps, PseudoTumorStep, TumorRetrainingStep,
             WeightsFolderStep, ValidationStep):
    """The recipe: its unit graph (`units`), the work folder's layout, and the steps' methods (mixins)."""

    options: RunOptions
    backend: object = None  # NnUNetBackend or a test double with the same methods
    _runners: dict = field(default_factory=dict)

    def __post_init__(self):
        self.work = Path(self.options.work).resolve()
        self.data = Path(self.options.data).resolve()
        self.weights = Path(self.options.weights).resolve()
        self.preset = self.options.preset
        self.params = self.preset.cascade_parameters()
        if self.backend is None:
            self.backend = NnUNetBackend(self.work / "nnunet", device=self.options.device,
                                         num_gpus=self.options.num_gpus, threads=self.options.threads,
                                         processes=self.options.processes, nice=self.options.nice,
                                         da_workers=self.options.da_workers)
        self.store = StateStore(self.work / "state")

    # ---- folders
    def p(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def model(self, name: str) -> Path:
        return self.p("models", name)

    def crops(self, step: str, organ: int) -> Path:
        return self.p(step, "crops", TUMOR_HOST_NAMES[organ])

    # ---- the graph
    def units(self) -> list[Unit]:
        preset, opts = self.preset, self.options
        net = lambda n: dataclasses.asdict(n)  # noqa: E731
        margins = {k: getattr(self.params, k) for k in ("tumor_margin_cranio_caudal_mm", "tumor_margin_in_plane_mm")}
        cascade = json.loads(json.dumps(self.manifest_parameters()))
        units = [
            Unit("data", "data", (), self.data_params(), self.run_data,
                 lambda: [self.p("canonical"), self.p("cases.json")]),
            Unit("organ_first", "1", ("data",), {"net": net(preset.organ_first)}, self.run_organ_first,
                 lambda: [self.p("step1", "first_targets"), self.model("organ_first"), *self.datasets(ORGAN_FIRST_ID)],
                 resumable=True),
            Unit("organ_labels", "1", ("organ_first",), {"tumor_hosts": list(TUMOR_HOSTS)}, self.run_organ_labels,
                 lambda: [self.p("step1", "pseudo"), self.p("step1", "targets")]),
            Unit("organ", "1", ("organ_labels",), {"net": net(preset.organ)}, self.run_organ,
                 lambda: [self.model("organ"), *self.datasets(ORGAN_ID)], resumable=True),
            Unit("tumor_crops", "2", ("organ_labels",), {"organs": list(preset.tumor_organs), **margins},
                 self.run_tumor_crops, lambda: [self.p("step2")]),
            Unit("tumor_plan", "2", ("tumor_crops",), {"net": _plan_fields(preset.tumor)}, self.run_tumor_plan,
                 lambda: [p for o in preset.tumor_organs for p in self.datasets(TUMOR_ID_BASE[o])]),
        ]
        for organ in preset.tumor_organs:
            units.append(Unit(f"tumor1_{TUMOR_HOST_NAMES[organ]}", "2", ("tumor_plan",), {"net": net(preset.tumor)},
                              self.tumor_trainer(organ, first_round=True),
                              self.tumor_outputs(organ, first_round=True), resumable=True, concurrent=True))
        round_one = tuple(f"tumor1_{TUMOR_HOST_NAMES[o]}" for o in preset.tumor_organs)
        # step 3 mimics the cascade up to the tumor crops: organ post-processing, aorta crop, margins
        # (the contrast switch and the inference-time tumor filter play no part in it)
        mimicked = {k: v for k, v in cascade.items() if k not in INFERENCE_ONLY_PARAMETERS}
        units.append(Unit("pseudo_tumors", "3", ("organ", *round_one),
                          {"min_mm3": preset.pseudo_tumor_min_mm3, "cascade": mimicked},
                          self.run_pseudo_tumors, lambda: [self.p("step3")]))
        units.append(Unit("tumor2_plan", "4", ("pseudo_tumors", "tumor_plan"), {}, self.run_tumor2_plan,
                          lambda: [p for o in preset.tumor_organs for p in self.datasets(TUMOR_ID_BASE[o] + 10)]))
        for organ in preset.tumor_organs:
            units.append(Unit(f"tumor2_{TUMOR_HOST_NAMES[organ]}", "4", ("tumor2_plan",), {"net": net(preset.tumor)},
                              self.tumor_trainer(organ, first_round=False),
                              self.tumor_outputs(organ, first_round=False), resumable=True, concurrent=True))
        round_two = tuple(f"tumor2_{TUMOR_HOST_NAMES[o]}" for o in preset.tumor_organs)
        export_params = {"cascade": cascade, "preset": preset.as_dict(), "weights": str(self.weights)}
        units.append(Unit("export", "export", ("data", "organ", "pseudo_tumors", *round_two), export_params,
                          self.run_export, lambda: []))
        evaluate_deps = ("export",)
        if opts.ablation:
            units.append(Unit("ablation", "evaluate", ("export", *round_one), {}, self.run_ablation,
                              lambda: [self.p("ablation"), self.p("evaluation", "ablation_no_pseudo.json")]))
            evaluate_deps = ("export", "ablation")
        units.append(Unit("evaluate", "evaluate", evaluate_deps, {"device": opts.device}, self.run_evaluate,
                          lambda: [self.p("evaluation", "validation.json")]))
        return units

    def datasets(self, dataset_id: int) -> list[Path]:
        paths = self.backend.paths
        return [f for base in (paths.raw, paths.preprocessed, paths.results)
                for f in base.glob(f"Dataset{dataset_id:03d}_*")]

    def tumor_outputs(self, organ: int, *, first_round: bool) -> Callable[[], list[Path]]:
        dataset_id = TUMOR_ID_BASE[organ] + (0 if first_round else 10)
        name = f"tumor{'1' if first_round else ''}_{TUMOR_HOST_NAMES[organ]}"
        results = self.backend.paths.results  # raw and preprocessed data belong to the plan unit
        return lambda: [self.model(name), *[p for p in self.datasets(dataset_id) if p.is_relative_to(results)]]


def _plan_fields(net: NetworkPreset) -> dict:
    return {k: v for k, v in dataclasses.asdict(net).items()
            if k in ("patch_size", "batch_size", "spacing", "features_per_stage")}


def run(options: RunOptions, *, steps: Iterable[str] = STEPS, redo: Iterable[str] = (), backend=None) -> list[dict]:
    """Run the recipe's selected steps; returns one record per unit (see execute_units)."""
    steps, redo = list(steps), list(redo)
    unknown = sorted(set(steps + redo) - set(STEPS))
    if unknown:
        raise DriverError(f"unknown step(s) {unknown}; steps are {', '.join(STEPS)}")
    driver = Driver(options, backend)
    driver.work.mkdir(parents=True, exist_ok=True)
    report = execute_units(driver.units(), driver.store, steps=steps, redo=redo, parallel=options.parallel)
    write_json(driver.p("run_report.json"), {"command": options.command, "units": report})
    return report
