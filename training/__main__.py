"""python -m training: run the semi-supervised cascade recipe (see training/driver.py).

Examples:
    # the shipped demo weights, from nothing (synthetic data, CPU, <= 90 min on 2 cores)
    python -m training --preset demo --make-data --data out/train/data --work out/train/work --weights weights
    # real FLARE23 data on 2 GPUs
    python -m training --preset paper --data /data/FLARE23 --work /scratch/flare --weights weights \\
        --device cuda --num-gpus 2
    # redo from step 2 with longer tumor training
    python -m training --preset demo --data ... --work ... --weights ... --set tumor.epochs=20
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from training.cli_checks import check_data_folder, check_devices, check_preset_options
from training.driver import run
from training.recipe_settings import DEFAULT_REAL_CT, STEPS, DriverError, RunOptions
from training.presets import PRESETS, apply_overrides, get_preset


def _steps(text: str) -> list[str]:
    if text == "all":
        return list(STEPS)
    steps = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)} or 'all'")
    return steps


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _nonnegative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--data", type=Path, required=True,
                        help="FLARE23-layout data folder (imagesTr, labelsTr, unlabeledTr, imagesVal, labelsVal)")
    parser.add_argument("--work", type=Path, required=True, help="working folder: markers, nnU-Net folders, crops")
    parser.add_argument("--weights", type=Path, required=True, help="where the model folders and cascade.json go")
    parser.add_argument("--make-data", action="store_true", help="write the preset's synthetic dataset into --data")
    parser.add_argument("--steps", type=_steps, default=list(STEPS),
                        help=f"comma-separated steps to run ({','.join(STEPS)}) or 'all' (default)")
    parser.add_argument("--redo", type=_steps, default=[], help="steps to redo even if they are done")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset field, e.g. tumor.epochs=20, data.n_unlabeled=4, use_real_ct=false")
    parser.add_argument("--real-ct", default=str(DEFAULT_REAL_CT),
                        help="folder of the real CT (../shared/data/real); 'none' never uses it")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--num-gpus", type=_positive, default=1,
                        help="> 1: nnU-Net DDP training on that many GPUs (needs --device cuda)")
    parser.add_argument("--threads", type=_positive, default=1,
                        help="torch/OpenMP threads per process (1: fastest on a shared 2-core machine, see "
                             "training/presets.py)")
    parser.add_argument("--processes", type=_positive, default=2, help="nnU-Net preprocessing worker processes")
    parser.add_argument("--parallel", type=_positive, default=1,
                        help="run up to N per-organ tumor trainings side by side (a GPU has room for several "
                             "small ones; on the CPU they share --threads: 2 with --threads 2 on a 2-core "
                             "machine)")
    parser.add_argument("--da-workers", type=_nonnegative, default=0,
                        help="nnU-Net data-augmentation worker processes per training (0: in the trainer "
                             "process, fastest on 2 cores; on a GPU machine give each training several)")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the nnU-Net subprocesses")
    parser.add_argument("--ablation", action="store_true",
                        help="also score the step-2 tumor models (no pseudo labels, same budget) on the "
                             "validation cases")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def check_arguments(args, preset, cuda_devices: int) -> None:
    """Raise UsageError for options that cannot work together or a --data folder that cannot be used."""
    check_devices(args.device, args.num_gpus, cuda_devices)
    check_preset_options(preset, args.make_data)
    if not args.make_data and "data" in args.steps:
        check_data_folder(args.data)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch

    torch.set_num_threads(args.threads)
    try:
        preset = apply_overrides(get_preset(args.preset), args.overrides)
        check_arguments(args, preset, torch.cuda.device_count())
    except ValueError as error:  # UsageError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = RunOptions(preset=preset, data=args.data, work=args.work, weights=args.weights,
                         make_data=args.make_data,
                         real_ct=None if args.real_ct.lower() == "none" else Path(args.real_ct),
                         device=args.device, num_gpus=args.num_gpus, threads=args.threads,
                         processes=args.processes, nice=args.nice, ablation=args.ablation,
                         parallel=args.parallel, da_workers=args.da_workers,
                         command=shlex.join(["python", "-m", "training",
                                             *(argv if argv is not None else sys.argv[1:])]))
    try:
        report = run(options, steps=args.steps, redo=args.redo)
    except DriverError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for record in report:
        logging.getLogger("training").info("%-22s %-8s %s", record["unit"], record["status"],
                                           f"{record['seconds']:.1f} s" if record["status"] == "ran" else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
