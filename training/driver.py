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
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from inference.core.labels import (
    ORGAN_LABELS, ORGAN_MODEL_LABELS, TUMOR_HOST_NAMES, TUMOR_HOSTS, TUMOR_LABEL, TUMOR_MODEL_LABELS,
)
from inference.io.images import read_image, to_sitk, write_image_atomic, write_labels, write_text_atomic
from training.presets import CONTRAST_ORGANS, OPTIMIZERS, NetworkPreset, Preset

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------
# cases


@dataclass(frozen=True)
class CaseRecord:
    id: str
    kind: str  # full, partial, tumor_only, unlabeled, validation, real_pseudo
    image: str  # training cases: the canonical copy under WORK; validation: the original
    label: str | None
    annotated: tuple[int, ...]
    source: str

    @property
    def is_training(self) -> bool:
        return self.kind != "validation"

    @property
    def organs_complete(self) -> bool:
        return set(ORGAN_LABELS) <= set(self.annotated)

    @property
    def tumor_annotated(self) -> bool:
        return TUMOR_LABEL in self.annotated


def discover_cases(data: Path) -> list[dict]:
    """The cases of a FLARE23-layout folder: from dataset_manifest.json when present (synthetic
    data says which labels each case annotates), else from the folders, inferring what a label
    file annotates from the labels it holds (real FLARE23)."""
    from training.dataset import MANIFEST_NAME

    manifest_path = data / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        return [{"id": c["id"], "kind": c["kind"], "image": data / c["image"],
                 "label": data / c["label"] if c["label"] else None,
                 "annotated": tuple(int(a) for a in c["annotated_labels"])} for c in manifest["cases"]]
    cases = []
    for image_folder, label_folder, split in (("imagesTr", "labelsTr", "train"), ("unlabeledTr", None, "train"),
                                              ("imagesVal", "labelsVal", "validation")):
        for image in sorted((data / image_folder).glob("*_0000.nii.gz")):
            case_id = image.name[: -len("_0000.nii.gz")]
            label = data / label_folder / f"{case_id}.nii.gz" if label_folder else None
            label = label if label is not None and label.is_file() else None
            kind = "validation" if split == "validation" else ("unlabeled" if label is None else "labelled")
            if split == "validation" and label is None:
                continue  # nothing to score against
            cases.append({"id": case_id, "kind": kind, "image": image, "label": label, "annotated": None})
    if not cases:
        raise DriverError(f"{data}: no cases found (expected imagesTr/<ID>_0000.nii.gz [+ labelsTr/<ID>.nii.gz], "
                          "unlabeledTr/, imagesVal/ + labelsVal/, or use --make-data)")
    return cases


def _kind_from_annotation(annotated: Iterable[int]) -> str:
    annotated = set(annotated)
    if set(ORGAN_LABELS) <= annotated:
        return "full"
    return "tumor_only" if annotated == {TUMOR_LABEL} else ("unlabeled" if not annotated else "partial")


def read_label_map(path: Path, shape: Sequence[int] | None = None) -> np.ndarray:
    labels, _ = read_image(path)
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise DriverError(f"{path}: label map shape {labels.shape} differs from its image {tuple(shape)}")
    if labels.size and (labels.min() < 0 or labels.max() > TUMOR_LABEL or not np.all(labels == np.round(labels))):
        raise DriverError(f"{path}: labels must be integers 0..14")
    return labels.astype(np.uint8)


def write_image(path: Path, array: np.ndarray, geometry) -> None:
    """CT as int16 when its values are whole HU (they are after sanitising integer scans), else float32."""
    array = np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array)) and array.size and \
            array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_image_atomic(to_sitk(array, geometry), path)


def write_label_map(path: Path, labels: np.ndarray, geometry) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_labels(path, np.ascontiguousarray(labels, dtype=np.uint8), geometry)


def canonicalise_case(image_path: Path, label_path: Path | None, out_image: Path, out_label: Path | None
                      ) -> tuple[np.ndarray | None, tuple]:
    """Write the case in the engine's canonical layout (images sanitised as the engine does).
    Returns (labels in the canonical layout or None, canonical shape)."""
    from inference.io.images import read_ct
    from inference.io.orientation import canonicalize
    from inference.engine.preprocessing import sanitize_hu

    volume, geometry = read_ct(image_path)
    view, canonical, _ = canonicalize(volume, geometry)
    write_image(out_image, sanitize_hu(view), canonical)
    labels = None
    if label_path is not None:
        raw = read_label_map(label_path, geometry.shape)
        labels = np.ascontiguousarray(canonicalize(raw, geometry)[0])
        write_label_map(out_label, labels, canonical)
    return labels, canonical.shape


# --------------------------------------------------------------------------------------------
# nnU-Net


class NnUNetBackend:
    """Planning, preprocessing, training and export through nnU-Net (training.nnunet), each in a
    subprocess with an explicit environment. Several datasets are planned and preprocessed in one
    call of each nnU-Net command (its -d takes a list)."""

    def __init__(self, root: Path, *, device: str = "cpu", num_gpus: int = 1, threads: int = 1,
                 processes: int = 2, nice: int = 0, da_workers: int = 0):
        from training.nnunet import NnUNetPaths

        self.paths = NnUNetPaths(root)
        self.device, self.num_gpus, self.threads, self.processes, self.nice = device, num_gpus, threads, processes, nice
        self.da_workers = da_workers

    def remove_dataset(self, dataset_id: int) -> None:
        for base in (self.paths.raw, self.paths.preprocessed, self.paths.results):
            for folder in base.glob(f"Dataset{dataset_id:03d}_*"):
                shutil.rmtree(folder)

    def write_dataset(self, dataset_id: int, name: str, cases: list[tuple[str, Path, Path]], labels: dict) -> None:
        from training.nnunet import write_raw_dataset

        self.remove_dataset(dataset_id)
        write_raw_dataset(self.paths, dataset_id, name, cases, labels)

    def plan_and_preprocess(self, dataset_ids: Sequence[int], plans_name: str, net: NetworkPreset) -> None:
        """nnU-Net fingerprint + planning, our derived plans (training.nnunet.derive_plans), preprocessing."""
        from training.nnunet import plan_and_preprocess

        try:
            plan_and_preprocess(self.paths, dataset_ids, plans_name=plans_name, configuration=CONFIGURATION,
                                spacing=net.spacing, patch_size=net.patch_size, batch_size=net.batch_size,
                                features_per_stage=net.features_per_stage, num_processes=self.processes,
                                threads=self.threads, nice=self.nice)
        except ValueError as error:  # a patch that allows no U-Net at the planned spacing
            raise DriverError(str(error)) from error

    def reuse_plans(self, pairs: Sequence[tuple[int, int]], plans_name: str) -> None:
        """Preprocess each target dataset with the plans (and CT normalisation) of its source, as
        nnU-Net's move_plans_between_datasets does: same spacing, patch, network, intensity
        statistics. One nnU-Net call for all targets (each call costs seconds of start-up)."""
        from training.nnunet import find_dataset_folder, preprocess

        for source_id, target_id in pairs:
            source = find_dataset_folder(self.paths.preprocessed, source_id)
            raw = find_dataset_folder(self.paths.raw, target_id)
            target = self.paths.preprocessed / raw.name
            target.mkdir(parents=True, exist_ok=True)
            plans = json.loads((source / f"{plans_name}.json").read_text())
            plans["dataset_name"] = raw.name
            (target / f"{plans_name}.json").write_text(json.dumps(plans, indent=2))
            shutil.copyfile(raw / "dataset.json", target / "dataset.json")
            shutil.copyfile(source / "dataset_fingerprint.json", target / "dataset_fingerprint.json")
        if pairs:
            preprocess(self.paths, [target for _, target in pairs], plans_name=plans_name, configuration=CONFIGURATION,
                       num_processes=self.processes, threads=self.threads, nice=self.nice)

    def fold_folder(self, dataset_id: int, plans_name: str, net: NetworkPreset) -> Path:
        from training.nnunet import fold_folder

        return fold_folder(self.paths, dataset_id, plans_name=plans_name, configuration=CONFIGURATION, fold="all",
                           augmentation=net.augmentation)

    def train(self, dataset_id: int, plans_name: str, net: NetworkPreset, *, resume: bool = False,
              threads: int | None = None) -> None:
        """threads: intra-op threads of this training (None: the backend's own count)."""
        from training.nnunet import find_dataset_folder, run_command, train

        threads = self.threads if threads is None else threads
        resume = resume and any(self.fold_folder(dataset_id, plans_name, net).glob("checkpoint_*.pth"))
        if self.num_gpus <= 1:
            train(self.paths, dataset_id, plans_name=plans_name, configuration=CONFIGURATION, fold="all",
                  epochs=net.epochs, iterations_per_epoch=net.iterations_per_epoch,
                  val_iterations=net.val_iterations, initial_lr=net.initial_lr, device=self.device,
                  continue_training=resume, threads=threads, n_proc_da=self.da_workers, nice=self.nice,
                  augmentation=net.augmentation, optimizer=net.optimizer, cpu_precision=net.cpu_precision)
            return
        command = [sys.executable, "-m", "training.nnunet_ddp", "--num-gpus", str(self.num_gpus),
                   "--preprocessed-dataset", str(find_dataset_folder(self.paths.preprocessed, dataset_id)),
                   "--plans-name", plans_name, "--configuration", CONFIGURATION, "--fold", "all",
                   "--epochs", str(net.epochs), "--iterations", str(net.iterations_per_epoch),
                   "--val-iterations", str(net.val_iterations), "--initial-lr", repr(net.initial_lr),
                   "--device", "cuda", "--optimizer", net.optimizer, *(["--continue-training"] if resume else []),
                   *([] if net.augmentation else ["--no-augmentation"])]
        env = self.paths.env(threads=threads, n_proc_da=self.da_workers)
        env.update({"MASTER_ADDR": "localhost", "MASTER_PORT": str(_free_port())})
        run_command(command, env, log_path=self.paths.logs / f"{dataset_id}_{plans_name}_ddp_train.log", cwd=REPO_ROOT)

    def export(self, dataset_id: int, plans_name: str, net: NetworkPreset, dest: Path) -> dict[str, str]:
        from training.nnunet import export_model_folder

        if dest.exists():
            shutil.rmtree(dest)
        return export_model_folder(self.paths, dataset_id, plans_name=plans_name, configuration=CONFIGURATION,
                                   fold="all", dest=dest, augmentation=net.augmentation)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# units and markers


@dataclass
class Unit:
    name: str
    step: str
    depends: tuple[str, ...]
    params: dict
    run: Callable[[bool], dict]  # resume -> result (JSON)
    outputs: Callable[[], list[Path]] = lambda: []
    resumable: bool = False
    concurrent: bool = False  # may run beside other concurrent units (see execute_units)


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class StateStore:
    """Markers under WORK/state: `<unit>.json` when done, `<unit>.started.json` while running."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, name: str, started: bool = False) -> Path:
        return self.folder / f"{name}{'.started' if started else ''}.json"

    def load(self, name: str, started: bool = False) -> dict | None:
        try:
            return json.loads(self.path(name, started).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def save(self, name: str, payload: dict, started: bool = False) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(name, started)
        write_text_atomic(path, json.dumps(payload, indent=1, default=str) + "\n")

    def remove(self, name: str, started: bool = False) -> None:
        self.path(name, started).unlink(missing_ok=True)


def execute_units(units: Sequence[Unit], store: StateStore, *, steps: Iterable[str], redo: Iterable[str] = (),
                  parallel: int = 1) -> list[dict]:
    """Run the selected steps' units in order; skip the done ones, redo the stale ones.

    parallel > 1: consecutive `concurrent` units (the per-organ tumor trainings) that do not depend
    on each other run in up to `parallel` threads at once (each is a subprocess; on one GPU four
    small nnU-Net trainings keep it far busier than one). A failure in one still lets the others of
    its batch finish (their markers are written) before the error is raised.

    Raises DriverError when a selected unit depends on a unit that is not done (or stale) and not
    selected. Returns one record per unit, in unit order: ran / skipped (done) / stale / not done.
    """
    steps, redo = set(steps), set(redo)
    run_ids: dict[str, str | None] = {}
    needs_steps: dict[str, set[str]] = {}  # unit not done -> the steps that would have to run for it
    records: dict[str, dict] = {}

    def plan(unit: Unit) -> tuple[str, bool] | None:
        """None when the unit is done or not selected (its record written); else (key, resume)."""
        marker = None if unit.step in redo else store.load(unit.name)
        missing = [d for d in unit.depends if run_ids.get(d) is None]
        needs_steps[unit.name] = {unit.step}.union(*(needs_steps[d] for d in missing))
        key = None if missing else _digest({"unit": unit.name, "format": FORMAT_VERSION, "params": unit.params,
                                            "upstream": {d: run_ids[d] for d in unit.depends}})
        if marker is not None and key is not None and marker.get("key") == key:
            run_ids[unit.name] = marker["run_id"]
            records[unit.name] = {"unit": unit.name, "step": unit.step, "status": "skipped", "seconds": 0.0}
            log.info("%-22s done, skipped", unit.name)
            return None
        run_ids[unit.name] = None
        if unit.step not in steps:
            status = "stale" if store.load(unit.name) is not None else "not done"
            records[unit.name] = {"unit": unit.name, "step": unit.step, "status": status, "seconds": 0.0}
            return None
        if missing:
            wanted = sorted(set().union(*(needs_steps[d] for d in missing)) - steps, key=STEPS.index)
            raise DriverError(f"{unit.name} (step {unit.step}) needs {', '.join(missing)}, which "
                              f"{'is' if len(missing) == 1 else 'are'} not done or stale; add "
                              f"{'step' if len(wanted) == 1 else 'steps'} {','.join(wanted)} to --steps")
        started = store.load(unit.name, started=True)
        return key, unit.resumable and started is not None and started.get("key") == key

    def execute(unit: Unit, key: str, resume: bool) -> None:
        store.remove(unit.name)
        if not resume:
            for path in unit.outputs():
                _remove(path)
        store.save(unit.name, {"key": key, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, started=True)
        log.info("%-22s running (step %s%s)", unit.name, unit.step, ", resuming" if resume else "")
        start = time.perf_counter()
        result = unit.run(resume)
        seconds = round(time.perf_counter() - start, 1)
        run_id = uuid.uuid4().hex
        store.save(unit.name, {"unit": unit.name, "step": unit.step, "key": key, "run_id": run_id,
                               "params": unit.params, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "seconds": seconds, "result": result})
        store.remove(unit.name, started=True)
        run_ids[unit.name] = run_id
        records[unit.name] = {"unit": unit.name, "step": unit.step, "status": "ran", "seconds": seconds}
        log.info("%-22s finished in %.1f s", unit.name, seconds)

    index = 0
    while index < len(units):
        unit = units[index]
        index += 1
        planned = plan(unit)
        if planned is None:
            continue
        batch = [(unit, *planned)]
        while parallel > 1 and unit.concurrent and index < len(units) and units[index].concurrent \
                and not set(units[index].depends) & {u.name for u, _, _ in batch}:
            planned = plan(units[index])
            if planned is not None:
                batch.append((units[index], *planned))
            index += 1
        if len(batch) == 1:
            execute(*batch[0])
            continue
        log.info("running %s side by side (up to %d at once)", ", ".join(u.name for u, _, _ in batch), parallel)
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(execute, *item) for item in batch]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
    return [records[u.name] for u in units if u.name in records]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# the recipe


@dataclass
class Driver:
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

    def data_params(self) -> dict:
        opts, preset, real_ct = self.options, self.preset, self.real_ct_files()
        params = {"data": str(self.data), "make": dataclasses.asdict(preset.data) if opts.make_data else None,
                  "real_ct": real_ct and [str(p) for p in real_ct]}
        if not opts.make_data:
            params["listing"] = _listing_digest(self.data)
        return params

    def real_ct_files(self) -> tuple[Path, Path] | None:
        folder = self.options.real_ct
        if not self.preset.use_real_ct or folder is None:
            return None
        image, label = Path(folder) / f"{REAL_CT_ID}_0000.nii.gz", Path(folder) / "labels" / f"{REAL_CT_ID}.nii.gz"
        if not (image.is_file() and label.is_file()):
            log.warning("real CT not found in %s: training without it", folder)
            return None
        return image, label

    # ---- case index
    def cases(self) -> list[CaseRecord]:
        # canonical copies are stored relative to WORK (a copied work folder stays valid)
        return [CaseRecord(**{**c, "annotated": tuple(c["annotated"]), "image": str(self.work / c["image"]),
                              "label": c["label"] and str(self.work / c["label"])})
                for c in json.loads(self.p("cases.json").read_text())["cases"]]

    def training_cases(self) -> list[CaseRecord]:
        return [c for c in self.cases() if c.is_training]

    # ---- step "data"
    def run_data(self, _resume: bool) -> dict:
        if self.options.make_data:
            self.make_data()
        records = []
        for case in discover_cases(self.data):
            records.append(self.prepare(case))
        real = self.real_ct_files()
        if real is not None:
            records.append(self.prepare({"id": REAL_CT_ID, "kind": "real_pseudo", "image": real[0], "label": real[1],
                                         "annotated": ORGAN_LABELS}))
        payload = {"data": str(self.data), "real_ct_used": real is not None,
                   "cases": [dataclasses.asdict(r) for r in records]}
        self.p("cases.json").write_text(json.dumps(payload, indent=1))
        counts = {}
        for r in records:
            counts[r.kind] = counts.get(r.kind, 0) + 1
        return {"counts": counts, "real_ct_used": real is not None, "synthetic": self.options.make_data or
                (self.data / "dataset_manifest.json").is_file()}

    def make_data(self) -> None:
        from training.dataset import build_flare_dataset

        spec = self.preset.data
        if spec is None:
            raise DriverError(f"preset {self.preset.name!r} has no synthetic data sizes; pass --data with real data")
        wanted = json.loads(json.dumps(dataclasses.asdict(spec)))
        stamp = self.data / DATA_STAMP
        if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
            log.info("%s already holds the synthetic data of these parameters", self.data)
            return
        if self.data.exists() and any(self.data.iterdir()) and not stamp.is_file():
            raise DriverError(f"{self.data} is not empty and was not made by --make-data; give an empty folder")
        for name in (*DATA_FOLDERS, "dataset_manifest.json", DATA_STAMP):
            if (self.data / name).exists():
                _remove(self.data / name)
        log.info("writing synthetic data to %s", self.data)
        build_flare_dataset(self.data, **spec.builder_kwargs())
        stamp.write_text(json.dumps(wanted, indent=1))

    def prepare(self, case: dict) -> CaseRecord:
        if case["kind"] == "validation":
            return CaseRecord(case["id"], "validation", str(case["image"]), str(case["label"]),
                              tuple(range(1, 15)), str(case["image"]))
        image = self.p("canonical", "images", f"{case['id']}_0000.nii.gz")
        label = self.p("canonical", "labels", f"{case['id']}.nii.gz") if case["label"] else None
        labels, _ = canonicalise_case(Path(case["image"]), case["label"] and Path(case["label"]), image, label)
        annotated = case["annotated"]
        if annotated is None:
            from training.label_merging import infer_annotated
            annotated = infer_annotated(labels) if labels is not None else ()
        kind = case["kind"] if case["kind"] not in ("labelled",) else _kind_from_annotation(annotated)
        return CaseRecord(case["id"], kind, str(image.relative_to(self.work)),
                          label and str(label.relative_to(self.work)), tuple(annotated), str(case["image"]))

    # ---- step 1
    def run_organ_first(self, resume: bool) -> dict:
        from training.label_merging import organ_target

        cases = [c for c in self.training_cases() if c.organs_complete and c.label]
        if not cases:
            raise DriverError("step 1 needs cases that annotate all 13 organs; none found")
        entries = []
        for case in cases:
            image, geometry = read_image(Path(case.image))  # canonical, already sanitised
            target = organ_target(read_label_map(Path(case.label), image.shape))
            path = self.p("step1", "first_targets", f"{case.id}.nii.gz")
            write_label_map(path, target, geometry)
            entries.append((case.id, Path(case.image), path))
        self.train_model(ORGAN_FIRST_ID, "FlareOrganFirst", entries, ORGAN_MODEL_LABELS, ORGAN_PLANS, self.preset.organ_first,
                         self.model("organ_first"), resume=resume)
        return {"cases": len(entries)}

    def train_model(self, dataset_id, name, entries, labels, plans_name, net, dest, *, resume=False,
                    plans_from: int | None = None) -> None:
        try:
            fold = self.backend.fold_folder(dataset_id, plans_name, net)
        except FileNotFoundError:  # not preprocessed yet
            fold = None
        prepared = fold is not None and resume and any(fold.glob("checkpoint_*.pth"))
        if not prepared:
            self.backend.write_dataset(dataset_id, name, entries, labels)
            if plans_from is None:
                self.backend.plan_and_preprocess([dataset_id], plans_name, net)
            else:
                self.backend.reuse_plans([(plans_from, dataset_id)], plans_name)
        self.backend.train(dataset_id, plans_name, net, resume=prepared)
        self.backend.export(dataset_id, plans_name, net, dest)

    def runner(self, folder: Path):
        """An engine model runner for pseudo labels (cached per folder)."""
        if folder not in self._runners:
            import torch

            from inference.engine.model import load_model
            from inference.engine.precision import nnunet_precision
            from inference.engine.runner import EngineOptions, ModelRunner

            device = torch.device(self.options.device)
            self._runners[folder] = ModelRunner(load_model(folder, device=device),
                                                EngineOptions(device=device, precision=nnunet_precision(device)))
        return self._runners[folder]

    def run_organ_labels(self, _resume: bool) -> dict:
        from training.label_merging import merge_labels, organ_target

        runner = self.runner(self.model("organ_first"))
        filled, total, pseudo_cases = 0, 0, 0
        for case in self.training_cases():
            image, geometry = read_image(Path(case.image))  # canonical, already sanitised
            real = read_label_map(Path(case.label), image.shape) if case.label else np.zeros(image.shape, np.uint8)
            if case.organs_complete:
                target = organ_target(real)
            else:
                pseudo = runner.segment(image, geometry.spacing, {})
                write_label_map(self.p("step1", "pseudo", f"{case.id}.nii.gz"), pseudo, geometry)
                merged = merge_labels(real, case.annotated, pseudo)
                target = organ_target(merged, pseudo=pseudo)
                filled += int(np.count_nonzero((real == 0) & (merged != 0)))
                pseudo_cases += 1
            total += target.size
            write_label_map(self.p("step1", "targets", f"{case.id}.nii.gz"), target, geometry)
        return {"pseudo_labelled_cases": pseudo_cases, "voxels_filled_by_pseudo_labels": filled, "voxels": total}

    def run_organ(self, resume: bool) -> dict:
        entries = [(c.id, Path(c.image), self.p("step1", "targets", f"{c.id}.nii.gz")) for c in self.training_cases()]
        self.train_model(ORGAN_ID, "FlareOrgan", entries, ORGAN_MODEL_LABELS, ORGAN_PLANS, self.preset.organ,
                         self.model("organ"), resume=resume, plans_from=ORGAN_FIRST_ID)
        return {"cases": len(entries), "plans": f"reused from dataset {ORGAN_FIRST_ID} (organ_first)"}

    # ---- step 2
    def run_tumor_crops(self, _resume: bool) -> dict:
        from training.tumor_data import organ_crop

        stats = {TUMOR_HOST_NAMES[o]: {"crops": 0, "with_tumor": 0, "tumor_voxels": 0} for o in self.preset.tumor_organs}
        for case in self.training_cases():
            if not case.tumor_annotated:
                continue
            image, geometry = read_image(Path(case.image))  # canonical, already sanitised
            tumor = read_label_map(Path(case.label), image.shape) == TUMOR_LABEL
            organs = read_label_map(self.p("step1", "targets", f"{case.id}.nii.gz"), image.shape)
            for organ in self.preset.tumor_organs:
                crop = organ_crop(image, organs, tumor, organ, geometry, self.params)
                if crop is None:
                    continue
                self.write_crop(self.crops("step2", organ), case.id, crop.image, crop.target, crop.geometry)
                entry = stats[TUMOR_HOST_NAMES[organ]]
                entry["crops"] += 1
                entry["with_tumor"] += int(crop.tumor_voxels > 0)
                entry["tumor_voxels"] += crop.tumor_voxels
        return stats

    @staticmethod
    def write_crop(folder: Path, case_id: str, image, target, geometry) -> None:
        write_image(folder / "images" / f"{case_id}_0000.nii.gz", image, geometry)
        write_label_map(folder / "labels" / f"{case_id}.nii.gz", target, geometry)

    def crop_entries(self, step: str, organ: int) -> list[tuple[str, Path, Path]]:
        folder = self.crops(step, organ)
        return [(p.name[: -len("_0000.nii.gz")], p, folder / "labels" / p.name.replace("_0000.nii.gz", ".nii.gz"))
                for p in sorted((folder / "images").glob("*_0000.nii.gz"))]

    def trainable_organs(self) -> list[int]:
        stats = self.store.load("tumor_crops")["result"]
        return [o for o in self.preset.tumor_organs if stats[TUMOR_HOST_NAMES[o]]["with_tumor"] > 0]

    def run_tumor_plan(self, _resume: bool) -> dict:
        organs = self.trainable_organs()
        for organ in organs:
            name = "".join(w.title() for w in TUMOR_HOST_NAMES[organ].split("_"))
            self.backend.write_dataset(TUMOR_ID_BASE[organ], f"FlareTumor{name}", self.crop_entries("step2", organ),
                                       TUMOR_MODEL_LABELS)
        if organs:
            self.backend.plan_and_preprocess([TUMOR_ID_BASE[o] for o in organs], TUMOR_PLANS, self.preset.tumor)
        skipped = [TUMOR_HOST_NAMES[o] for o in self.preset.tumor_organs if o not in organs]
        if skipped:
            log.warning("no tumor in the labelled crops of %s: no tumor model for it", ", ".join(skipped))
        return {"organs": [TUMOR_HOST_NAMES[o] for o in organs], "skipped_no_tumor": skipped}

    def side_by_side_threads(self) -> int | None:
        """Threads of each tumor training when several run side by side on the CPU: the --threads
        budget shared between them, so the machine is not oversubscribed. These small networks use
        threads poorly: on the 2-core CPU two 1-thread trainings side by side did 1.35-1.47x the work
        of one 2-thread training (BENCHMARKS.md, "Tumor trainings side by side"). None: the
        backend's own count (one at a time, or a GPU, where the CPU threads only feed it)."""
        if self.options.parallel <= 1 or self.options.device != "cpu":
            return None
        return max(1, self.options.threads // self.options.parallel)

    def tumor_trainer(self, organ: int, *, first_round: bool) -> Callable[[bool], dict]:
        def run(resume: bool) -> dict:
            if organ not in self.trainable_organs():
                return {"trained": False, "reason": "no tumor in the labelled crops"}
            dataset_id = TUMOR_ID_BASE[organ] + (0 if first_round else 10)
            fold = self.backend.fold_folder(dataset_id, TUMOR_PLANS, self.preset.tumor)
            self.backend.train(dataset_id, TUMOR_PLANS, self.preset.tumor,
                               resume=resume and any(fold.glob("checkpoint_*.pth")),
                               threads=self.side_by_side_threads())
            name = f"tumor{'1' if first_round else ''}_{TUMOR_HOST_NAMES[organ]}"
            self.backend.export(dataset_id, TUMOR_PLANS, self.preset.tumor, self.model(name))
            return {"trained": True, "iterations": self.preset.tumor.iterations}
        return run

    # ---- step 3
    def run_pseudo_tumors(self, _resume: bool) -> dict:
        from inference.cascade.segmenter import aorta_crop, apply_slab_crop, organ_crop_box
        from inference.cascade.postprocessing import postprocess_organs
        from training.tumor_data import credible_pseudo_tumor, crop_geometry

        organs_trained = self.trainable_organs()
        organ_runner = self.runner(self.model("organ"))
        stats = {TUMOR_HOST_NAMES[o]: {"crops": 0, "cases_with_pseudo_tumor": 0, "kept_components": 0, "kept_voxels": 0,
                                  "removed": {}} for o in organs_trained}
        cases = [c for c in self.training_cases() if not c.tumor_annotated]
        for case in cases:
            image, geometry = read_image(Path(case.image))  # canonical, already sanitised
            organs = postprocess_organs(organ_runner.segment(image, geometry.spacing, {}),
                                        self.params.organ_postprocessing)
            slab = aorta_crop(organs, geometry, self.params)
            organs = apply_slab_crop(organs, slab) if slab is not None else organs
            for organ in organs_trained:
                box = organ_crop_box(organs == organ, geometry, self.params)
                if box is None:
                    continue
                crop, crop_geo = np.ascontiguousarray(image[box]), crop_geometry(geometry, box)
                runner = self.runner(self.model(f"tumor1_{TUMOR_HOST_NAMES[organ]}"))
                found = runner.segment(crop, geometry.spacing, {}) == 1
                result = credible_pseudo_tumor(found, organs[box], organ, crop_geo, self.preset.pseudo_tumor_min_mm3)
                entry = stats[TUMOR_HOST_NAMES[organ]]
                entry["crops"] += 1
                for reason, count in result.removed.items():
                    entry["removed"][reason] = entry["removed"].get(reason, 0) + count
                if result.kept_components:
                    self.write_crop(self.crops("step3", organ), case.id, crop, result.kept.astype(np.uint8), crop_geo)
                    entry["cases_with_pseudo_tumor"] += 1
                    entry["kept_components"] += result.kept_components
                    entry["kept_voxels"] += int(np.count_nonzero(result.kept))
        return {"cases": len(cases), "min_mm3": self.preset.pseudo_tumor_min_mm3, "per_organ": stats}

    # ---- step 4
    def run_tumor2_plan(self, _resume: bool) -> dict:
        counts, pairs = {}, []
        for organ in self.trainable_organs():
            real, pseudo = self.crop_entries("step2", organ), self.crop_entries("step3", organ)
            name = "".join(w.title() for w in TUMOR_HOST_NAMES[organ].split("_"))
            self.backend.write_dataset(TUMOR_ID_BASE[organ] + 10, f"FlareTumor{name}Pseudo", real + pseudo,
                                       TUMOR_MODEL_LABELS)
            pairs.append((TUMOR_ID_BASE[organ], TUMOR_ID_BASE[organ] + 10))
            counts[TUMOR_HOST_NAMES[organ]] = {"real_crops": len(real), "pseudo_crops": len(pseudo)}
        self.backend.reuse_plans(pairs, TUMOR_PLANS)
        return counts

    # ---- export and evaluation
    def manifest_parameters(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self.params)))

    def shipped_organs(self, prefix: str) -> list[int]:
        return [o for o in self.preset.tumor_organs
                if (self.model(f"{prefix}_{TUMOR_HOST_NAMES[o]}") / "plans.json").is_file()]

    def assemble(self, dest: Path, tumor_prefix: str, provenance: dict) -> Path:
        """organ + tumor model folders copied into `dest` (stale stage folders replaced), manifest written."""
        from training.manifest import write_manifest

        organs = self.shipped_organs(tumor_prefix)
        stages = {"organ": self.model("organ")}
        stages.update({f"tumor_{TUMOR_HOST_NAMES[o]}": self.model(f"{tumor_prefix}_{TUMOR_HOST_NAMES[o]}") for o in organs})
        dest.mkdir(parents=True, exist_ok=True)
        for stale in ["organ", *(f"tumor_{n}" for n in TUMOR_HOST_NAMES.values())]:
            if stale not in stages and (dest / stale).exists():
                shutil.rmtree(dest / stale)
        for name, source in stages.items():
            temporary = dest / f".{name}.partial"
            if temporary.exists():
                shutil.rmtree(temporary)
            shutil.copytree(source, temporary)
            if (dest / name).exists():
                shutil.rmtree(dest / name)
            os.replace(temporary, dest / name)
        tumor_stages = [{"organ": o, "folder": f"tumor_{TUMOR_HOST_NAMES[o]}", "needs_contrast": o in CONTRAST_ORGANS}
                        for o in organs]
        return write_manifest(dest, organ_folder="organ", tumor_stages=tumor_stages,
                              parameters=self.manifest_parameters(), provenance=provenance)

    def provenance(self) -> dict:
        data = self.store.load("data")["result"]
        markers = {u: self.store.load(u) for u in ("organ_labels", "tumor_crops", "pseudo_tumors", "tumor2_plan")}
        seconds = {}
        for path in sorted(self.store.folder.glob("*.json")):
            if not path.name.endswith(".started.json"):
                seconds[path.stem] = json.loads(path.read_text()).get("seconds")
        return {
            "preset": self.preset.name,
            "preset_parameters": self.preset.as_dict(),
            "training_data": {
                "source": "synthetic phantoms (phantom via training.dataset)" if data["synthetic"]
                else "user-provided FLARE23-format data",
                "folder": str(self.data), "cases_by_kind": data["counts"],
                "canonical_orientation": "training images and labels canonicalised with inference.io.orientation",
            },
            "real_ct_used": data["real_ct_used"],
            "real_ct": (f"{REAL_CT_ID} from {self.options.real_ct} (organ pseudo labels, no tumor annotation)"
                        if data["real_ct_used"] else None),
            "recipe": {
                "step1": markers["organ_labels"] and markers["organ_labels"]["result"],
                "step2_crops": markers["tumor_crops"] and markers["tumor_crops"]["result"],
                "step3_pseudo_tumors": markers["pseudo_tumors"] and markers["pseudo_tumors"]["result"],
                "step4": {"mode": "trained again from scratch with the step-2 budget and plans on real + pseudo labels",
                          "datasets": markers["tumor2_plan"] and markers["tumor2_plan"]["result"]},
                "training": {stage: _training_summary(net, self.options.device) for stage, net in
                             (("organ_first", self.preset.organ_first), ("organ", self.preset.organ),
                              ("tumor", self.preset.tumor))},
            },
            "git_dirty": _git_dirty(exclude=self.weights),
            "command": self.options.command,
            "device": self.options.device, "num_gpus": self.options.num_gpus,
            "unit_seconds": seconds,
        }

    def run_export(self, _resume: bool) -> dict:
        from training.precision_agreement import record_agreement

        provenance = self.provenance()
        path = self.assemble(self.weights, "tumor", provenance)
        cases = [(case_id, image) for case_id, image, _ in self.validation_cases()]
        if cases:  # what `--precision auto` reads: each model's bf16-vs-fp32 label agreement
            record_agreement(self.weights, cases, "the training's validation cases")
        manifest = json.loads(path.read_text())
        return {"manifest": str(path), "stages": manifest["stages"], "files": len(manifest["files"]),
                "provenance": provenance}

    def validation_cases(self) -> list[tuple[str, Path, Path]]:
        return [(c.id, Path(c.image), Path(c.label)) for c in self.cases() if not c.is_training]

    def run_ablation(self, _resume: bool) -> dict:
        from training.evaluate_weights import evaluate_weights

        dest = self.p("ablation", "weights")
        self.assemble(dest, "tumor1", {"preset": self.preset.name, "ablation_arm": "tumor models of step 2: "
                                       "no pseudo-labelled cases, same budget and plans as the shipped step-4 models"})
        summary = evaluate_weights(dest, self.validation_cases(), device=self.options.device)
        _write_json(self.p("evaluation", "ablation_no_pseudo.json"), summary)
        return _without_per_case(summary)

    def run_evaluate(self, _resume: bool) -> dict:
        from inference.engine.precision import AGREEMENT_KEY
        from training.evaluate_weights import evaluate_weights
        from training.manifest import write_manifest

        cases = self.validation_cases()
        summary = evaluate_weights(self.weights, cases, device=self.options.device) if cases else {"cases": 0}
        _write_json(self.p("evaluation", "validation.json"), summary)
        provenance = self.store.load("export")["result"]["provenance"]
        provenance["validation"] = {**_without_per_case(summary), "case_ids": [c[0] for c in cases]}
        if self.options.ablation:
            without = self.store.load("ablation")["result"]
            provenance["ablation"] = {
                "question": "tumor models trained with vs without the pseudo-labelled cases (steps 3-4), same budget",
                "with_pseudo_labels": _headline(summary), "without_pseudo_labels": _headline(without),
                "cases": len(cases)}
        manifest = json.loads((self.weights / "cascade.json").read_text())
        write_manifest(self.weights, organ_folder=manifest["stages"]["organ"]["folder"],
                       tumor_stages=manifest["stages"]["tumor"], parameters=manifest["parameters"],
                       provenance=provenance, precision_agreement=manifest.get(AGREEMENT_KEY))
        return _headline(summary)


def _training_summary(net: NetworkPreset, device: str) -> str:
    """One line for the manifest: what trained a model (nnU-Net's poly lr 0.9 and Dice + CE always),
    with the precision its steps computed in on this machine."""
    from training.cpu_autocast import resolve_precision

    trainer = "nnUNetTrainer" if net.augmentation else "nnUNetTrainerNoDA"
    return (f"{trainer}, {OPTIMIZERS[net.optimizer]}, lr {net.initial_lr:g} poly 0.9, Dice + CE, "
            f"{net.epochs} x {net.iterations_per_epoch} iterations, "
            f"{resolve_precision(net.cpu_precision, device)} (cpu_precision {net.cpu_precision})")


def _plan_fields(net: NetworkPreset) -> dict:
    return {k: v for k, v in dataclasses.asdict(net).items()
            if k in ("patch_size", "batch_size", "spacing", "features_per_stage")}


def _headline(summary: dict) -> dict:
    keys = ("cases", "mean_organ_dsc", "mean_organ_nsd", "tumor_dsc", "tumor_dsc_on_tumor_cases", "tumor_cases",
            "false_positive_tumor_cases")
    return {k: summary.get(k) for k in keys}


def _without_per_case(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "per_case"}


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")


def _listing_digest(folder: Path) -> str:
    """Names, sizes and modification times of a data folder's files: changes when the data does."""
    entries = []
    for name in (*DATA_FOLDERS, "dataset_manifest.json"):
        path = folder / name
        files = sorted(path.rglob("*")) if path.is_dir() else ([path] if path.is_file() else [])
        entries += [(str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return _digest(entries)


def _git_dirty(exclude: Path | None = None) -> bool | None:
    """Whether tracked files differ from the commit, leaving out `exclude` (the weights folder this
    run writes: its own output is not a change of the code that made it)."""
    import subprocess

    command = ["git", "status", "--porcelain", "--untracked-files=no"]
    if exclude is not None and Path(exclude).resolve().is_relative_to(REPO_ROOT.resolve()):
        command += ["--", ".", f":(exclude){Path(exclude).resolve().relative_to(REPO_ROOT.resolve()).as_posix()}"]
    try:
        out = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(out.strip())


def run(options: RunOptions, *, steps: Iterable[str] = STEPS, redo: Iterable[str] = (), backend=None) -> list[dict]:
    """Run the recipe's selected steps; returns one record per unit (see execute_units)."""
    steps, redo = list(steps), list(redo)
    unknown = sorted(set(steps + redo) - set(STEPS))
    if unknown:
        raise DriverError(f"unknown step(s) {unknown}; steps are {', '.join(STEPS)}")
    driver = Driver(options, backend)
    driver.work.mkdir(parents=True, exist_ok=True)
    report = execute_units(driver.units(), driver.store, steps=steps, redo=redo, parallel=options.parallel)
    _write_json(driver.p("run_report.json"), {"command": options.command, "units": report})
    return report
