"""Drive real nnU-Net v2 (fingerprint, planning, preprocessing, training) and export its models.

nnU-Net is not re-implemented here. Every nnU-Net step runs in a SUBPROCESS with an explicit
environment (`NnUNetPaths.env()`): nnunetv2 reads nnUNet_raw / nnUNet_preprocessed /
nnUNet_results when it is imported, so the caller's `os.environ` is never touched and this module
never imports nnunetv2 itself.

What this module adds on top of nnU-Net:
- a raw dataset writer (`write_raw_dataset`),
- custom plans (`training.nnunet_plans`) derived from nnU-Net's own `nnUNetPlans.json`,
- training through `training/nnunet_train.py` with epochs/iterations/lr as parameters,
- export of a trained fold as a stripped nnU-Net v2 model folder (`training.nnunet_export`).

Axis order: spacing and patch sizes are in the plans' (transposed) axis order, which for CT with
thick slices is (z, y, x), the order of our arrays.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from training.nnunet_plans import canonical_class_names, default_features, derive_plans, resolved_configuration

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINER_NAME = "nnUNetTrainer"
NO_AUGMENTATION_TRAINER_NAME = "nnUNetTrainerNoDA"  # nnU-Net's variant: its output folder carries this name
FILE_ENDING = ".nii.gz"


class NnUNetError(RuntimeError):
    """An nnU-Net subprocess failed; the message names the step and ends with its last output lines."""


@dataclass(frozen=True)
class NnUNetPaths:
    """The three nnU-Net folders under one root, and the environment that points nnU-Net at them."""

    root: Path
    raw: Path = field(init=False)
    preprocessed: Path = field(init=False)
    results: Path = field(init=False)
    logs: Path = field(init=False)

    def __post_init__(self) -> None:
        root = Path(self.root).resolve()
        for name, folder in (("root", root), ("raw", root / "nnUNet_raw"), ("logs", root / "logs"),
                             ("preprocessed", root / "nnUNet_preprocessed"), ("results", root / "nnUNet_results")):
            object.__setattr__(self, name, folder)

    def env(self, *, threads: int = 2, n_proc_da: int = 0, num_processes: int = 2) -> dict[str, str]:
        """A full environment for an nnU-Net subprocess (a copy of os.environ plus nnU-Net's settings).

        threads: OpenMP/MKL/torch intra-op threads; n_proc_da: data augmentation worker processes
        (0 = in the main process, measured slightly faster on 2 cores); num_processes: nnU-Net's
        default pool size (validation export, evaluation).
        """
        env = dict(os.environ)
        env.update({
            "nnUNet_raw": str(self.raw),
            "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(self.results),
            "nnUNet_n_proc_DA": str(int(n_proc_da)),
            "nnUNet_def_n_proc": str(int(num_processes)),
            "nnUNet_compile": "false",
            "OMP_NUM_THREADS": str(int(threads)),
            "MKL_NUM_THREADS": str(int(threads)),
            "TORCH_NUM_THREADS": str(int(threads)),  # read by training/nnunet_train.py
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
        })
        return env


def dataset_name(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id must be 1..999 (nnU-Net uses three digits), got {dataset_id}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"dataset name must be letters, digits, '_' or '-', got {name!r}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def find_dataset_folder(base: Path, dataset_id: int) -> Path:
    """The unique `DatasetXXX_*` folder for `dataset_id` under `base`."""
    matches = sorted(Path(base).glob(f"Dataset{int(dataset_id):03d}_*"))
    if len(matches) != 1:
        raise FileNotFoundError(f"{base}: expected one Dataset{int(dataset_id):03d}_* folder, found {len(matches)}")
    return matches[0]


# --------------------------------------------------------------------------------------------
# raw dataset


def write_raw_dataset(paths: NnUNetPaths, dataset_id: int, name: str,
                      cases: Sequence[tuple[str, Path, Path]], labels: dict[str, int]) -> Path:
    """Write an nnU-Net raw dataset (one CT channel) and return its folder.

    cases: (case_id, image_path, label_path); files are hard-linked when possible, else copied.
    labels: nnU-Net's name -> value mapping, must contain "background": 0 and consecutive values.
    """
    if not cases:
        raise ValueError("no cases given")
    values = sorted(labels.values())
    if labels.get("background") != 0 or values != list(range(len(values))):
        raise ValueError(f"labels must map 'background' to 0 and use consecutive values 0..n, got {labels}")
    ids = [case_id for case_id, _, _ in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be unique")
    folder = paths.raw / dataset_name(dataset_id, name)
    clashing = [p for p in paths.raw.glob(f"Dataset{int(dataset_id):03d}_*") if p != folder]
    if clashing:
        raise FileExistsError(f"{clashing[0]}: another dataset already uses id {dataset_id}")
    images, label_folder = folder / "imagesTr", folder / "labelsTr"
    for sub in (images, label_folder):  # cases of an earlier call must not linger
        shutil.rmtree(sub, ignore_errors=True)
        sub.mkdir(parents=True)
    for case_id, image_path, label_path in cases:
        _link_or_copy(Path(image_path), images / f"{case_id}_0000{FILE_ENDING}")
        _link_or_copy(Path(label_path), label_folder / f"{case_id}{FILE_ENDING}")
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": dict(sorted(labels.items(), key=lambda item: item[1])),
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
        "name": name,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def _link_or_copy(source: Path, destination: Path) -> None:
    if not source.name.endswith(FILE_ENDING):
        raise ValueError(f"{source}: nnU-Net raw files must be {FILE_ENDING}")
    destination.unlink(missing_ok=True)
    try:
        os.link(source, destination)
    except OSError:  # other file system, or links not allowed
        shutil.copyfile(source, destination)


def plan_and_preprocess(paths: NnUNetPaths, dataset_ids: int | Sequence[int], *, plans_name: str,
                        configuration: str = "3d_fullres", spacing: Sequence[float] | None = None,
                        patch_size: Sequence[int] | None = None, batch_size: int | None = None,
                        features_per_stage: Sequence[int] | None = None, num_processes: int = 2,
                        threads: int = 2, nice: int = 0) -> list[Path]:
    """Fingerprint, nnU-Net's planning, our derived plans `plans_name`, then nnU-Net preprocessing.

    Several datasets share one call of each nnU-Net command (its -d takes a list; every call costs
    seconds of start-up). Per dataset: spacing None keeps the planner's, features_per_stage None is
    nnU-Net's width rule with as many stages as the patch allows (`default_features`).
    Returns the derived plans files, in the order of `dataset_ids`.
    """
    ids = [int(dataset_ids)] if isinstance(dataset_ids, int) else [int(i) for i in dataset_ids]
    if not ids:
        raise ValueError("no dataset ids given")
    env = planning_env(paths, num_processes=num_processes, threads=threads)
    tag = "_".join(map(str, ids))
    run_nnunet_command(["nnUNetv2_extract_fingerprint", "-d", *map(str, ids), "-np", str(num_processes), "--clean"],
                       env, log_path=paths.logs / f"{tag}_fingerprint.log", nice=nice)
    run_nnunet_command(["nnUNetv2_plan_experiment", "-d", *map(str, ids)], env,
                       log_path=paths.logs / f"{tag}_plan.log", nice=nice)
    written = []
    for dataset_id in ids:
        folder = find_dataset_folder(paths.preprocessed, dataset_id)
        default_plans = json.loads((folder / "nnUNetPlans.json").read_text())
        features = features_per_stage
        if features is None and patch_size is not None:
            planned_spacing = spacing or resolved_configuration(default_plans, configuration)["spacing"]
            features = default_features(patch_size, planned_spacing)
        derived = derive_plans(default_plans, plans_name=plans_name, configuration=configuration,
                               spacing=spacing, patch_size=patch_size, batch_size=batch_size,
                               features_per_stage=features)
        plans_path = folder / f"{plans_name}.json"
        from inference.io.images import write_json_atomic
        write_json_atomic(plans_path, canonical_class_names(derived))
        written.append(plans_path)
    preprocess_with_nnunet(paths, ids, plans_name=plans_name, configuration=configuration, num_processes=num_processes,
               threads=threads, nice=nice)
    return written


def preprocess_with_nnunet(paths: NnUNetPaths, dataset_ids: Sequence[int], *, plans_name: str,
                           configuration: str = "3d_fullres", num_processes: int = 2, threads: int = 2,
                           nice: int = 0) -> None:
    """nnU-Net's preprocessing of `dataset_ids` with the plans `plans_name` already in their folders."""
    ids = [str(int(i)) for i in dataset_ids]
    run_nnunet_command(["nnUNetv2_preprocess", "-d", *ids, "-plans_name", plans_name, "-c", configuration,
                        "-np", str(num_processes)], planning_env(paths, num_processes=num_processes, threads=threads),
                       log_path=paths.logs / f"{'_'.join(ids)}_{plans_name}_preprocess.log", nice=nice)


def planning_env(paths: NnUNetPaths, *, num_processes: int, threads: int) -> dict[str, str]:
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which must be positive
    return paths.env(threads=threads, num_processes=num_processes, n_proc_da=max(1, num_processes))


# --------------------------------------------------------------------------------------------
# training


def train(paths: NnUNetPaths, dataset_id: int, *, plans_name: str, configuration: str = "3d_fullres",
          fold: str | int = "all", epochs: int, iterations_per_epoch: int, val_iterations: int = 2,
          initial_lr: float = 0.01, device: str = "cpu", continue_training: bool = False,
          save_every: int = 5, final_validation: bool = False, threads: int = 2, n_proc_da: int = 0,
          nice: int = 0, augmentation: bool = True, optimizer: str = "sgd", cpu_precision: str = "fp32") -> Path:
    """Train `nnUNetTrainer` (SGD Nesterov 0.99, poly lr, Dice+CE: nnU-Net's defaults; without
    augmentation its nnUNetTrainerNoDA variant; optimizer "adam": its nnUNetTrainerAdam's AdamW) in a
    subprocess. `cpu_precision` (fp32, bf16, auto): see training.cpu_autocast.

    Returns the fold's output folder (holding checkpoint_final.pth). `save_every` epochs a
    checkpoint_latest.pth is written so an interrupted run can `continue_training`.
    final_validation runs nnU-Net's full sliding-window validation at the end (slow on a CPU).
    """
    command = [sys.executable, "-m", "training.nnunet_train",
               "--preprocessed-dataset", str(find_dataset_folder(paths.preprocessed, dataset_id)),
               "--plans-name", plans_name, "--configuration", configuration, "--fold", str(fold),
               "--epochs", str(int(epochs)), "--iterations", str(int(iterations_per_epoch)),
               "--val-iterations", str(int(val_iterations)), "--initial-lr", repr(float(initial_lr)),
               "--device", device, "--save-every", str(int(save_every)), "--optimizer", optimizer,
               "--cpu-precision", cpu_precision]
    if continue_training:
        command.append("--continue-training")
    if not augmentation:
        command.append("--no-augmentation")
    if final_validation:
        command.append("--final-validation")
    if nice:
        command = ["nice", "-n", str(int(nice)), *command]
    run_command(command, paths.env(threads=threads, n_proc_da=n_proc_da),
                log_path=paths.logs / f"{int(dataset_id)}_{plans_name}_{configuration}_fold{fold}_train.log",
                cwd=REPO_ROOT, append=continue_training)
    return fold_folder(paths, dataset_id, plans_name=plans_name, configuration=configuration, fold=fold,
                       augmentation=augmentation)


def fold_folder(paths: NnUNetPaths, dataset_id: int, *, plans_name: str, configuration: str,
                fold: str | int, augmentation: bool = True) -> Path:
    """nnU-Net's output folder of one trained fold (named after the trainer class)."""
    name = find_dataset_folder(paths.preprocessed, dataset_id).name
    trainer = TRAINER_NAME if augmentation else NO_AUGMENTATION_TRAINER_NAME
    return paths.results / name / f"{trainer}__{plans_name}__{configuration}" / f"fold_{fold}"


# --------------------------------------------------------------------------------------------
# prediction with nnU-Net's own predictor (the baseline, and the check that an export works)


def predict_with_nnunet(model_folder: Path, input_folder: Path, output_folder: Path, *, fold: str | int = "all",
                        env: dict[str, str] | None = None, step_size: float = 0.5, mirroring: bool = False,
                        device: str = "cpu", num_processes: int = 1, log_path: Path | None = None) -> None:
    """Run `nnUNetv2_predict_from_modelfolder` on a folder of `<case>_0000.nii.gz` files."""
    command = ["nnUNetv2_predict_from_modelfolder", "-i", str(input_folder), "-o", str(output_folder),
               "-m", str(model_folder), "-f", str(fold), "-step_size", str(step_size), "-device", device,
               "-npp", str(num_processes), "-nps", str(num_processes), "--disable_progress_bar"]
    if not mirroring:
        command.append("--disable_tta")
    environment = dict(env) if env is not None else dict(os.environ)
    environment.setdefault("nnUNet_compile", "false")
    run_nnunet_command(command, environment, log_path=log_path)


# --------------------------------------------------------------------------------------------
# subprocesses


def nnunet_executable(name: str) -> str:
    """An nnU-Net console script, preferably the one beside the running interpreter (its venv)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} nor on PATH; install nnunetv2")
    return found


def run_nnunet_command(command: list[str], env: dict[str, str], *, log_path: Path | None = None,
                       nice: int = 0) -> None:
    command = [nnunet_executable(command[0]), *command[1:]]
    run_command(["nice", "-n", str(int(nice)), *command] if nice else command, env, log_path=log_path)


def run_command(command: Iterable[str], env: dict[str, str], *, log_path: Path | None = None,
                cwd: Path | None = None, append: bool = False) -> None:
    """Run a command with `env`, its output going to `log_path` (or captured); raise NnUNetError on failure."""
    command = [str(c) for c in command]
    log.info("running %s", " ".join(command))
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a" if append else "w") as handle:
            start = handle.tell()
            result = subprocess.run(command, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
        with open(log_path, errors="replace") as handle:
            handle.seek(start)
            output = handle.read()
    else:
        result = subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        output = result.stdout
    if result.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise NnUNetError(f"{Path(command[0]).name} {' '.join(command[1:4])} ... exited with {result.returncode}"
                          f"{f' (log: {log_path})' if log_path else ''}:\n{tail}")
