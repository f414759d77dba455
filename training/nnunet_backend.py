"""The nnU-Net side of the recipe: plan, preprocess, train and export model folders through
`training.nnunet`, each command in a subprocess with an explicit environment."""
from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path
from typing import Sequence

from training.presets import NetworkPreset
from training.recipe_settings import CONFIGURATION, DriverError, REPO_ROOT


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
        """nnU-Net fingerprint + planning, our derived plans (training.nnunet_plans.derive_plans), preprocessing."""
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
        from training.nnunet import find_dataset_folder, preprocess_with_nnunet

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
            preprocess_with_nnunet(self.paths, [target for _, target in pairs], plans_name=plans_name,
                                   configuration=CONFIGURATION, num_processes=self.processes,
                                   threads=self.threads, nice=self.nice)

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
        env.update({"MASTER_ADDR": "localhost", "MASTER_PORT": str(free_port())})
        run_command(command, env, log_path=self.paths.logs / f"{dataset_id}_{plans_name}_ddp_train.log", cwd=REPO_ROOT)

    def export(self, dataset_id: int, plans_name: str, net: NetworkPreset, dest: Path) -> dict[str, str]:
        from training.nnunet_export import export_model_folder

        if dest.exists():
            shutil.rmtree(dest)
        return export_model_folder(self.paths, dataset_id, plans_name=plans_name, configuration=CONFIGURATION,
                                   fold="all", dest=dest, augmentation=net.augmentation)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]
