"""Train nnU-Net's own `nnUNetTrainer` with epochs, iterations and lr given on the command line.

Run as a subprocess by `training.nnunet.train` with nnU-Net's environment variables set (nnunetv2
reads them at import). The trainer class is instantiated directly: nnU-Net's lookup by name walks
every trainer module, and some of them import timm, which does not import beside the CPU torch
used here. Everything after construction is nnU-Net's (SGD Nesterov 0.99 or, with `--optimizer
adam`, its nnUNetTrainerAdam variant's AdamW; poly lr, Dice + CE, data augmentation, checkpoints);
only plain attributes and that one method are set, and with `--cpu-precision bf16` (or `auto` on
a CPU with bf16 units) the training steps run under bf16 autocast (training.cpu_autocast).

The `if __name__ == "__main__":` guard is required: nnU-Net's validation spawns worker processes
that re-import the main module.
"""
from __future__ import annotations

import argparse
import json
import os
import types
from pathlib import Path

from training.presets import CPU_PRECISIONS, OPTIMIZERS

CHECKPOINTS_TO_CONTINUE_FROM = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preprocessed-dataset", type=Path, required=True,
                        help="nnUNet_preprocessed/DatasetXXX_Name folder holding the plans and dataset.json")
    parser.add_argument("--plans-name", required=True)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--fold", default="all", help="'all' or a cross-validation fold number")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=2, help="validation iterations per epoch")
    parser.add_argument("--initial-lr", type=float, default=0.01)
    parser.add_argument("--no-augmentation", action="store_true",
                        help="nnU-Net's nnUNetTrainerNoDA: no spatial/intensity augmentation (several times "
                             "faster per iteration on a CPU, where augmentation dominates)")
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd",
                        help="sgd: nnU-Net's default (SGD Nesterov momentum 0.99); adam: the optimizer of nnU-Net's "
                             "nnUNetTrainerAdam variant (AdamW, amsgrad), same poly schedule")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    parser.add_argument("--cpu-precision", choices=CPU_PRECISIONS, default="fp32",
                        help="on the CPU: fp32 (nnU-Net's choice), bf16 autocast of the forward pass, or auto "
                             "(bf16 where the CPU has native bf16 units); CUDA always runs nnU-Net's fp16 autocast")
    parser.add_argument("--save-every", type=int, default=5, help="write checkpoint_latest.pth every N epochs")
    parser.add_argument("--continue-training", action="store_true",
                        help="resume from checkpoint_final, _latest or _best of this fold")
    parser.add_argument("--final-validation", action="store_true",
                        help="run nnU-Net's full sliding-window validation after training (slow on a CPU)")
    args = parser.parse_args(argv)
    for name in ("epochs", "iterations", "val_iterations", "save_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def build_trainer(args: argparse.Namespace):
    import torch
    from training.cpu_autocast import enable_bf16_training_steps, resolve_precision
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    if args.no_augmentation:  # imported by module path: nnU-Net's lookup by name would import timm
        from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import (
            nnUNetTrainerNoDA as nnUNetTrainer)

    plans = json.loads((args.preprocessed_dataset / f"{args.plans_name}.json").read_text())
    plans["continue_training"] = args.continue_training  # popped by the trainer, tells its logger to resume
    dataset_json = json.loads((args.preprocessed_dataset / "dataset.json").read_text())
    fold = args.fold if args.fold == "all" else int(args.fold)
    trainer = nnUNetTrainer(plans=plans, configuration=args.configuration, fold=fold,
                            dataset_json=dataset_json, device=torch.device(args.device))
    # Plain attributes read by initialize() (optimizer, poly schedule) and run_training().
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = args.val_iterations
    trainer.initial_lr = args.initial_lr
    trainer.save_every = args.save_every
    if args.optimizer == "adam":
        # nnU-Net's own variant's method, bound to this trainer: the class (and with it the output folder
        # and the trainer name in the checkpoint) stays the NoDA / default one, which builds the same network
        from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import nnUNetTrainerAdam
        trainer.configure_optimizers = types.MethodType(nnUNetTrainerAdam.configure_optimizers, trainer)
    precision = resolve_precision(args.cpu_precision, args.device)
    print(f"training precision: {precision} (--cpu-precision {args.cpu_precision}, device {args.device})", flush=True)
    if precision == "bf16":
        enable_bf16_training_steps(trainer)
    return trainer


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    threads = int(os.environ.get("TORCH_NUM_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    trainer = build_trainer(args)
    if args.continue_training:
        existing = [Path(trainer.output_folder) / name for name in CHECKPOINTS_TO_CONTINUE_FROM]
        checkpoint = next((path for path in existing if path.is_file()), None)
        if checkpoint is None:
            print(f"no checkpoint in {trainer.output_folder}; starting a new training")
        else:
            trainer.load_checkpoint(str(checkpoint))
    trainer.run_training()
    if args.final_validation:
        trainer.perform_actual_validation(save_probabilities=False)


if __name__ == "__main__":
    main()
