"""What `--model PATH` names, turned into a Segmenter.

- a folder with `cascade.json`: the cascade it describes (organ model, tumor models, post-processing);
- an nnU-Net v2 model folder (`plans.json`): that model alone, its labels written as they are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.engine.runner import EngineOptions, ModelRunner
from inference.core.geometry import Geometry
from inference.cascade.cascade_json import is_manifest_folder, load_manifest
from inference.engine.model import ModelError, load_model
from inference.engine.precision import PrecisionChoice, with_resolved_precision

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"  # beside inference/, in the repository and the image


class SingleModelSegmenter:
    def __init__(self, runner: ModelRunner, precision_choices: dict[str, PrecisionChoice] | None = None):
        self.runner = runner
        self.precision_choices = precision_choices or {}  # {model folder name: precision and why}

    def segment(self, volume: np.ndarray, geometry: Geometry, timings: dict[str, float]) -> np.ndarray:
        return self.runner.segment(volume, geometry.spacing, timings, clamp_hu=True)


def build_segmenter(model_path, options: EngineOptions, case_time_budget_s: float | None = None):
    """Verify and load everything before any case is touched (errors here are fatal, exit 3).

    `case_time_budget_s` bounds a cascade's tumor stages per case; a single model has one stage,
    which always runs."""
    model_path = Path(model_path)
    if is_manifest_folder(model_path):
        from inference.cascade.segmenter import CascadeSegmenter  # the cascade pulls in cc3d; only load it when used
        return CascadeSegmenter(load_manifest(model_path), options, case_time_budget_s=case_time_budget_s)
    if (model_path / "plans.json").is_file():
        # a plain nnU-Net folder records no bf16-vs-fp32 agreement: "auto" takes bf16 on capable CPUs
        model_options, choice = with_resolved_precision(options, None, str(model_path))
        runner = ModelRunner(load_model(model_path), model_options)
        return SingleModelSegmenter(runner, {model_path.resolve().name: choice})
    raise ModelError(f"{model_path}: neither a cascade folder ({model_path}/cascade.json) nor an nnU-Net "
                     "model folder (plans.json)")
