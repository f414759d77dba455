"""What a run of the recipe is given (`RunOptions`), its one error type, and the fixed names of
the recipe: steps, nnU-Net dataset ids and plans, the data folder layout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.presets import Preset


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL_CT = REPO_ROOT.parent / "shared" / "data" / "real"
REAL_CT_ID = "TS_example_ct"
STEPS = ("data", "1", "2", "3", "4", "export", "evaluate")
CONFIGURATION = "3d_fullres"
ORGAN_PLANS, TUMOR_PLANS = "FlareOrganPlans", "FlareTumorPlans"
ORGAN_FIRST_ID, ORGAN_ID = 301, 302
TUMOR_ID_BASE = {1: 311, 4: 312, 2: 313, 13: 314}  # step 2; step 4 adds 10
INFERENCE_ONLY_PARAMETERS = ("contrast_hu_threshold", "tumor_min_total_mm3", "tumor_min_component_mm3",
                             "tumor_min_organ_overlap_mm3", "tumor_require_organ_contact")
DATA_FOLDERS = ("imagesTr", "labelsTr", "unlabeledTr", "imagesVal", "labelsVal")
DATA_STAMP = ".training_data.json"  # written by --make-data: the parameters the folder was made with
FORMAT_VERSION = 1  # bump when what a unit writes changes meaning: every marker becomes stale


class DriverError(RuntimeError):
    """A problem with the inputs or the order of steps, explained in one message."""


@dataclass(frozen=True)
class RunOptions:
    preset: Preset
    data: Path
    work: Path
    weights: Path
    make_data: bool = False
    real_ct: Path | None = DEFAULT_REAL_CT  # used only when preset.use_real_ct
    device: str = "cpu"
    num_gpus: int = 1
    threads: int = 1
    processes: int = 2
    nice: int = 0
    ablation: bool = False
    command: str = ""
    parallel: int = 1  # tumor trainings run side by side (execute_units)
    da_workers: int = 0  # nnU-Net data-augmentation worker processes per training (0: in the trainer)
