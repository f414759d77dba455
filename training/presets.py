"""Training presets: every number of the semi-supervised cascade recipe, as frozen dataclasses.

- `paper`: the method paper's tables 2 and 3 (organ patch 96x160x160 batch 2, tumor patch
  56x112x176 batch 4, 1000 epochs x 250 iterations, SGD Nesterov 0.99, lr 0.01 poly 0.9, Dice + CE),
  for real FLARE23 data on GPUs. Spacing and network width are left to nnU-Net's planner
  (`None`): its median spacing, 32 features doubling up to 320, as many stages as the patch allows.
- `demo`: small networks and a short schedule that run the whole cascade (both organ models, tumor
  models for liver, pancreas and both kidneys, the pseudo-label round) on synthetic phantoms on a
  2-core CPU in at most 90 minutes (see `DEMO_BUDGET_MINUTES` for the measurements behind it).
- `smoke`: a handful of tiny cases, 1 epoch x 2 iterations per model, tumor models for liver and
  left kidney only; proves the driver end to end in the test suite.

Schedule and loss are nnU-Net's `nnUNetTrainer` defaults (poly decay exponent 0.9, Dice +
cross-entropy with deep supervision); the optimizer is its SGD Nesterov momentum 0.99 (`paper`) or
the AdamW of its nnUNetTrainerAdam variant (`demo`, `gpu`, the smoke organ models); a preset sets the
initial lr.
Any field can be overridden on the command line (`--set tumor.epochs=50`), see `apply_overrides`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from inference.cascade.parameters import REFERENCE_VOXEL_MM3, CascadeParameters
from inference.core.labels import TUMOR_HOST_NAMES

TUMOR_ORGANS = (1, 4, 2, 13)  # liver, pancreas, right kidney, left kidney: the order tumour models train in
CONTRAST_ORGANS = (2, 13)  # kidney tumor models run only on contrast-enhanced scans (public code)
# Public code: a pseudo-labelled tumor component needs at least 2048 voxels; in mm3 at the FLARE
# reference voxel (2.5 x 0.8 x 0.8 mm), like every other volume threshold of the cascade.
PUBLIC_PSEUDO_TUMOR_MIN_MM3 = 2048 * REFERENCE_VOXEL_MM3  # 3276.8


# NetworkPreset.optimizer -> what trains with it (the manifest's description; nnunet_train's choices)
OPTIMIZERS = {"sgd": "SGD Nesterov momentum 0.99 (nnUNetTrainer)", "adam": "AdamW amsgrad (nnUNetTrainerAdam)"}
# NetworkPreset.cpu_precision: what a CPU training computes in (training.cpu_autocast)
CPU_PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class NetworkPreset:
    """One nnU-Net model: plan overrides and training schedule.

    spacing (z, y, x mm) None: nnU-Net's planned spacing. features_per_stage None: nnU-Net's rule
    (32 doubling to 320) with as many stages as the patch allows at that spacing.
    """
    patch_size: tuple[int, int, int]
    batch_size: int
    epochs: int
    iterations_per_epoch: int
    spacing: tuple[float, float, float] | None = None
    features_per_stage: tuple[int, ...] | None = None
    val_iterations: int = 2
    initial_lr: float = 0.01
    # False: nnU-Net's nnUNetTrainerNoDA (no spatial/intensity augmentation, no mirroring). The short
    # CPU schedules use it: it is several times cheaper per iteration on a CPU. The demo organ model
    # is limited by generalisation, not iterations (BENCHMARKS.md, "How we got here":
    # "Twice the organ iterations, or more phantoms, same iterations"); whether augmentation pays within its budget is not measured.
    augmentation: bool = True
    # "sgd": nnU-Net's default (SGD Nesterov momentum 0.99). "adam": the AdamW of nnU-Net's
    # nnUNetTrainerAdam variant. The demo's 8-feature networks need Adam: with SGD at lr 0.01 they
    # cannot even overfit one fixed batch in 200 steps (everything collapses to background), with
    # AdamW at 3e-3 the liver appears after 25 iterations (BENCHMARKS.md, "How we got here":
    # "Training from scratch on the CPU: SGD's plateau, AdamW").
    optimizer: str = "sgd"
    # On the CPU: "fp32" (nnU-Net's choice there), "bf16" (autocast of the forward pass, as nnU-Net
    # does with fp16 on CUDA), "auto" (bf16 where the CPU has AMX or AVX512-BF16 units, else fp32).
    # Ignored on CUDA, where nnU-Net's own fp16 autocast runs. See training.cpu_autocast.
    cpu_precision: str = "fp32"

    def __post_init__(self):
        if len(self.patch_size) != 3 or min(self.patch_size) < 8:
            raise ValueError(f"patch_size must be 3 sizes >= 8, got {self.patch_size}")
        for name in ("batch_size", "epochs", "iterations_per_epoch", "val_iterations"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ValueError(f"spacing must be 3 positive mm values or None, got {self.spacing}")
        if not self.initial_lr > 0:
            raise ValueError(f"initial_lr must be positive, got {self.initial_lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.cpu_precision not in CPU_PRECISIONS:
            raise ValueError(f"cpu_precision must be one of {CPU_PRECISIONS}, got {self.cpu_precision!r}")

    @property
    def iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch


@dataclass(frozen=True)
class SyntheticData:
    """Sizes of the synthetic FLARE23-format dataset (`training.dataset.build_flare_dataset`)."""
    n_labeled: int
    n_partial: int
    n_tumor_only: int
    n_unlabeled: int
    n_validation: int
    seed: int = 0
    max_voxels: int = 1_000_000
    random_geometry: bool = True
    tumor_probability: float = 0.7
    shape: tuple[int, int, int] = (64, 128, 128)  # only without random_geometry
    spacing: tuple[float, float, float] = (2.5, 1.6, 1.6)

    def builder_kwargs(self) -> dict:
        return dict(n_labeled=self.n_labeled, n_partial=self.n_partial, n_tumor_only=self.n_tumor_only,
                    n_unlabeled=self.n_unlabeled, n_validation=self.n_validation, seed=self.seed,
                    max_voxels=self.max_voxels, random_geometry=self.random_geometry,
                    tumor_probability=self.tumor_probability, shape=self.shape, spacing=self.spacing)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    organ_first: NetworkPreset  # step 1: the model trained on fully labelled cases that makes pseudo labels
    organ: NetworkPreset  # step 1: the shipped organ model, trained on everything
    tumor: NetworkPreset  # steps 2 and 4: one model per tumor-bearing organ, the same budget in both
    data: SyntheticData | None = None  # what `--make-data` builds
    tumor_organs: tuple[int, ...] = TUMOR_ORGANS
    # Cascade parameters written to the manifest (and used for the training crops, so that a tumor
    # model trains on the crops it will see): any CascadeParameters field by name.
    cascade: dict = field(default_factory=dict)
    pseudo_tumor_min_mm3: float = PUBLIC_PSEUDO_TUMOR_MIN_MM3
    use_real_ct: bool = False  # add ../shared/data/real's CT as one pseudo-labelled training case

    def __post_init__(self):
        unknown = [o for o in self.tumor_organs if o not in TUMOR_HOST_NAMES]
        if unknown or len(set(self.tumor_organs)) != len(self.tumor_organs):
            raise ValueError(f"tumor_organs must be distinct labels among {sorted(TUMOR_HOST_NAMES)}, "
                             f"got {self.tumor_organs}")
        self.cascade_parameters()  # validates names and values
        if not self.pseudo_tumor_min_mm3 >= 0:
            raise ValueError(f"pseudo_tumor_min_mm3 must be >= 0, got {self.pseudo_tumor_min_mm3}")

    def cascade_parameters(self) -> CascadeParameters:
        return CascadeParameters.from_manifest(self.cascade)

    def as_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def scaled_cascade(scale: float) -> dict:
    """Every physical cascade parameter scaled to patients `scale` times adult size (lengths x scale,
    volumes x scale^3); the HU threshold is unchanged. The synthetic phantoms scale the patient to
    the field of view, so a small-voxel-count phantom is a child-sized patient."""
    defaults = CascadeParameters()
    lengths = ("aorta_caudal_margin_mm", "tumor_margin_cranio_caudal_mm", "tumor_margin_in_plane_mm")
    volumes = ("aorta_min_mm3", "tumor_min_total_mm3", "tumor_min_component_mm3", "tumor_min_organ_overlap_mm3")
    scaled = {name: round(getattr(defaults, name) * scale, 3) for name in lengths}
    scaled.update({name: round(getattr(defaults, name) * scale ** 3, 3) for name in volumes})
    return scaled


PAPER = Preset(
    name="paper",
    description="Paper tables 2 and 3 for real FLARE23 data on GPUs: organ patch 96x160x160 batch 2, tumor "
                "patch 56x112x176 batch 4, 1000 epochs x 250 iterations, SGD Nesterov 0.99, lr 0.01 poly 0.9, "
                "Dice + CE; spacing and network width from nnU-Net's planner.",
    organ_first=NetworkPreset(patch_size=(96, 160, 160), batch_size=2, epochs=1000, iterations_per_epoch=250,
                              val_iterations=50),
    organ=NetworkPreset(patch_size=(96, 160, 160), batch_size=2, epochs=1000, iterations_per_epoch=250,
                        val_iterations=50),
    tumor=NetworkPreset(patch_size=(56, 112, 176), batch_size=4, epochs=1000, iterations_per_epoch=250,
                        val_iterations=50),
    data=None,
    cascade={},
    use_real_ct=False,
)

# Demo phantoms: at 1.2 M voxels the generator shrinks a patient to about 0.3 of adult size (median
# in-plane field of view 120 mm instead of about 385 mm), so the cascade's physical parameters and
# the pseudo-label volume threshold are scaled by 0.3 (volumes by 0.027).
DEMO_PATIENT_SCALE = 0.3
# The demo budget. With nnU-Net's SGD (lr 0.01, momentum 0.99) these 8-feature networks collapse to
# predicting background and the first organ (the liver) only leaves that plateau after about 1000
# iterations, every other organ after more than 2500; with the AdamW of nnU-Net's nnUNetTrainerAdam at
# lr 3e-3 the liver appears after 25 iterations and liver, right kidney, spleen, aorta and stomach
# by 450 (BENCHMARKS.md, "How we got here": "Training from scratch on the CPU"). Hence Adam for every demo model, no augmentation
# (nnUNetTrainerNoDA: several times cheaper per iteration on this CPU), 1000 / 2500 organ iterations
# (the step-1 model only pseudo-labels the 34 cases without full labels) and 600 per tumor model (300
# left twice the false tumour lesions). Speed with 2 threads, patch 32x80x80 batch 2, 8-96 features:
# 0.48-0.57 s per organ iteration on the faster 2-core dev machines, 0.92-1.12 s on the slower ones;
# `python -m benchmarks.training_speed` measures a machine in half a minute. Measured end to end
# (BENCHMARKS.md, "Training" and "How we got here": "Longer tumour training, half the step-1 organ
# iterations"): 90.0 min
# with the tumor models one after another; 130 min with two side by side
# (`--parallel 2`, 1.35-1.47x the throughput) on a machine 1.7x slower per organ unit.
# bf16 training (`--set organ_first.cpu_precision=auto --set organ.cpu_precision=auto --set
# tumor.cpu_precision=auto`) ran the whole preset in 85 minutes on one of the slower machines
# (organ units 1.5-1.6x, tumor units 1.8x faster) with organ DSC 0.778 but tumor DSC 0.196 against
# fp32's 0.22-0.25; retrained twice in each precision, the liver tumour model lost about 0.02 in bf16
# (BENCHMARKS.md, "bf16 training on the CPU"). Not the default; next to try: bf16 organ models only.
DEMO_BUDGET_MINUTES = 90
DEMO = Preset(
    name="demo",
    description="Small networks, short schedule with AdamW and without augmentation: the whole cascade on "
                "synthetic phantoms on a 2-core CPU in at most 90 minutes (measured 90; 130 on a "
                "1.7x slower machine). Not a usable model for real CT.",
    organ_first=NetworkPreset(patch_size=(32, 80, 80), batch_size=2, epochs=20, iterations_per_epoch=50,
                              spacing=(3.0, 1.4, 1.4), features_per_stage=(8, 16, 32, 64, 96), val_iterations=2,
                              initial_lr=3e-3, augmentation=False, optimizer="adam"),
    organ=NetworkPreset(patch_size=(32, 80, 80), batch_size=2, epochs=50, iterations_per_epoch=50,
                        spacing=(3.0, 1.4, 1.4), features_per_stage=(8, 16, 32, 64, 96), val_iterations=2,
                        initial_lr=3e-3, augmentation=False, optimizer="adam"),
    tumor=NetworkPreset(patch_size=(24, 48, 64), batch_size=4, epochs=30, iterations_per_epoch=20,
                        spacing=(2.0, 1.0, 1.0), features_per_stage=(8, 16, 32, 64), val_iterations=2,
                        initial_lr=3e-3, augmentation=False, optimizer="adam"),
    # Data, not iterations, limits these models: the same 2500 organ iterations on 60 fully labelled
    # phantoms instead of an earlier 31 cases (8 fully labelled) raised the held-out organ DSC from
    # 0.68 to 0.81 (BENCHMARKS.md, "How we got here": "... or more phantoms, same iterations"). Phantoms cost about 0.2 s each to draw and
    # 0.4 s to preprocess; only the partial, tumor-only and unlabelled cases cost pseudo-label time.
    data=SyntheticData(n_labeled=100, n_partial=12, n_tumor_only=6, n_unlabeled=16, n_validation=12, seed=2023,
                       max_voxels=1_200_000, random_geometry=True, tumor_probability=0.7),
    # The contrast switch is off (threshold 0 HU: every scan counts as enhanced): the phantoms' kidney
    # tumours are 30-80 HU off their host in every phase, so gating the kidney models by phase only loses
    # tumours (earlier weights, 8 training phantoms: tumor DSC 0.33 with the public 445 HU, 0.48 without
    # the switch; BENCHMARKS.md, "How we got here": "Where the tumours go"). Real data keeps the public threshold (`paper`).
    cascade={**scaled_cascade(DEMO_PATIENT_SCALE), "contrast_hu_threshold": 0.0},
    pseudo_tumor_min_mm3=round(PUBLIC_PSEUDO_TUMOR_MIN_MM3 * DEMO_PATIENT_SCALE ** 3, 3),
    use_real_ct=True,
)

# One GPU (an NVIDIA H100 with 16 CPU cores, in runs of at most 10 minutes a command): the demo's
# networks (AdamW, without augmentation), data and cascade scaling with a longer schedule, the tumor
# trainings side by side (`--parallel 4`). Measured on the H100 with an earlier, smaller dataset (the preset now takes the demo's 146 cases): about 300 s of fixed cost
# (data, planning and preprocessing, process start-up, pseudo labels) and 23 organ / 20 tumor
# iterations per second (nnU-Net epochs of 100 iterations keep its per-epoch overhead small; that run
# had augmentation). A first run with 600/2000/800 iterations
# (SGD, augmentation) did not learn the organs (Dice 0; with SGD the CPU measurement above puts the
# first organ at about 1000), so this schedule is 1500/5000/1200: about 700 s, two calls of
# benchmarks/gpu_session.sh (the driver resumes) with SKIP_CHECK=1. Not yet run with AdamW.
GPU = dataclasses.replace(
    DEMO,
    name="gpu",
    description="The demo's small networks and synthetic phantoms with a schedule for one GPU in about 12 "
                "minutes (organ 5000 iterations, tumor 1200 each). Not a usable model for real CT.",
    organ_first=dataclasses.replace(DEMO.organ_first, epochs=15, iterations_per_epoch=100, val_iterations=4),
    organ=dataclasses.replace(DEMO.organ, epochs=50, iterations_per_epoch=100, val_iterations=4),
    tumor=dataclasses.replace(DEMO.tumor, epochs=12, iterations_per_epoch=100, val_iterations=4),
)

SMOKE = Preset(
    name="smoke",
    description="Tiny cases, 1 epoch x 2 iterations per model: proves the driver end to end (tests).",
    # organ models without augmentation, with Adam and in bf16, tumor models with nnU-Net's defaults
    # (augmentation, SGD, fp32): the test run covers both trainers, optimizers and CPU precisions
    organ_first=NetworkPreset(patch_size=(16, 32, 32), batch_size=2, epochs=1, iterations_per_epoch=2,
                              spacing=(4.0, 3.0, 3.0), features_per_stage=(4, 8, 16), val_iterations=1,
                              augmentation=False, optimizer="adam", cpu_precision="bf16"),
    organ=NetworkPreset(patch_size=(16, 32, 32), batch_size=2, epochs=1, iterations_per_epoch=2,
                        spacing=(4.0, 3.0, 3.0), features_per_stage=(4, 8, 16), val_iterations=1,
                        augmentation=False, optimizer="adam", cpu_precision="bf16"),
    tumor=NetworkPreset(patch_size=(8, 16, 16), batch_size=2, epochs=1, iterations_per_epoch=2,
                        spacing=(4.0, 3.0, 3.0), features_per_stage=(4, 8), val_iterations=1),
    data=SyntheticData(n_labeled=2, n_partial=1, n_tumor_only=1, n_unlabeled=1, n_validation=1, seed=7,
                       max_voxels=40_000, random_geometry=False, tumor_probability=1.0,
                       shape=(24, 48, 48), spacing=(4.0, 3.0, 3.0)),
    # two of the four tumor organs, one without and one with the contrast switch, to keep the test
    # short (each nnU-Net dataset costs about 40 s of process start-up here); `--set
    # tumor_organs=[1,4,2,13]` runs all four (about 3.5 min)
    tumor_organs=(1, 13),
    cascade=scaled_cascade(0.4),
    pseudo_tumor_min_mm3=round(PUBLIC_PSEUDO_TUMOR_MIN_MM3 * 0.4 ** 3, 3),
    use_real_ct=False,
)

PRESETS = {p.name: p for p in (PAPER, DEMO, GPU, SMOKE)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def apply_overrides(preset: Preset, overrides: list[str]) -> Preset:
    """`["tumor.epochs=50", "data.n_unlabeled=20", "use_real_ct=false"]` -> a new preset.

    Values are JSON (numbers, true/false, lists for tuples, null); a bare word is taken as a string.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must be KEY=VALUE, e.g. tumor.epochs=50")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        preset = _replace_path(preset, key.strip().split("."), value, key)
    return preset


def _replace_path(obj, path: list[str], value, key: str):
    if isinstance(obj, dict):
        if len(path) != 1:
            raise ValueError(f"override {key!r}: {path[0]!r} is a value, not a section")
        return {**obj, path[0]: value}
    if not dataclasses.is_dataclass(obj):
        raise ValueError(f"override {key!r}: {path[0]!r} is not a section of the preset")
    names = {f.name: f for f in dataclasses.fields(obj)}
    if path[0] not in names:
        raise ValueError(f"override {key!r}: unknown field {path[0]!r}; allowed: {sorted(names)}")
    current = getattr(obj, path[0])
    if len(path) > 1:
        if current is None:
            raise ValueError(f"override {key!r}: this preset has no {path[0]!r} section")
        new = _replace_path(current, path[1:], value, key)
    else:
        new = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(obj, **{path[0]: new})
