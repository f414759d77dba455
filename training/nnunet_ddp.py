"""Multi-GPU training with nnU-Net's own DDP: one process per GPU, NCCL, nnU-Net's batch split.

    python -m training.nnunet_ddp --num-gpus 4 <the arguments of training.nnunet_train>

What nnU-Net's `nnUNetv2_train -num_gpus N` does (`nnunetv2.run.run_training.run_ddp`), with the
trainer built by `training.nnunet_train.build_trainer`, so epochs, iterations and lr stay
parameters: each rank joins the process group before the trainer is constructed, and
`nnUNetTrainer` then detects DDP itself (its device becomes cuda:rank, the plans' batch size is
split over the ranks, gradients are all-reduced, rank 0 writes checkpoints and logs).
MASTER_ADDR / MASTER_PORT come from the environment the caller passes (training.driver does).

Not exercised on this project's CPU-only machines: it needs CUDA and at least two GPUs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from training.nnunet_train import CHECKPOINTS_TO_CONTINUE_FROM, build_trainer
from training.nnunet_train import parse_args as parse_train_args


def _worker(rank: int, world_size: int, train_argv: list[str]) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    try:
        torch.cuda.set_device(torch.device("cuda", rank))
        args = parse_train_args(train_argv)
        args.device = "cuda"
        trainer = build_trainer(args)
        if args.continue_training:
            existing = [Path(trainer.output_folder) / name for name in CHECKPOINTS_TO_CONTINUE_FROM]
            checkpoint = next((path for path in existing if path.is_file()), None)
            if checkpoint is not None:
                trainer.load_checkpoint(str(checkpoint))
        trainer.run_training()
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-gpus", type=int, required=True)
    args, train_argv = parser.parse_known_args(argv)
    import torch
    import torch.multiprocessing as mp

    if args.num_gpus < 2:
        parser.error("--num-gpus must be >= 2 (use training.nnunet_train for one device)")
    if torch.cuda.device_count() < args.num_gpus:
        raise SystemExit(f"--num-gpus {args.num_gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")
    parse_train_args(train_argv)  # fail here, not in N workers
    mp.spawn(_worker, args=(args.num_gpus, train_argv), nprocs=args.num_gpus, join=True)


if __name__ == "__main__":
    main()
