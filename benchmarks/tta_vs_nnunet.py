"""`--tta` (test-time mirroring) against nnU-Net's predictor run with mirroring, and its cost.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.tta_vs_nnunet

Same model folder (default the shipped organ model, weights/organ), same case (default the real CT
of ../shared/data/real, as it is). nnUNetv2_predict_from_modelfolder runs with its mirroring on;
ours runs with `--tta` and without (the default), each a fresh process, alternating `--repeats`
times; medians of wall seconds. Agreement: mean Dice over the labels either side predicts.
A benchmark, not a test: results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

from benchmarks.batch_throughput import measure_and_record
from benchmarks.engine_vs_nnunet import label_agreement, read_labels, timed_run

log = logging.getLogger("benchmark")
REPO = Path(__file__).resolve().parent.parent
REAL_CT = REPO.parent / "shared" / "data" / "real" / "TS_example_ct_0000.nii.gz"
# nnU-Net's resampling both ways, fp32: the configuration whose labels match nnU-Net's predictor
MATCHING_OPTIONS = ("--resampling", "nnunet", "--precision", "fp32", "--keep-orientation")


def mean_dice(a, b) -> float:
    values = list(label_agreement(a, b).values())
    return round(statistics.mean(values), 4) if values else 1.0


def with_mirroring_axes(model: Path, axes, folder: Path) -> Path:
    """A copy of `model` whose checkpoints allow mirroring along `axes` (what nnU-Net's default
    trainer records; a model trained without mirroring augmentation, like the shipped ones, allows none)."""
    import torch
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(model, folder)
    for path in folder.glob("fold_*/checkpoint_*.pth"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        checkpoint["inference_allowed_mirroring_axes"] = tuple(int(a) for a in axes)
        torch.save(checkpoint, path)
    return folder


def measure(args) -> dict:
    work = Path(args.work)
    if args.allow_mirroring is not None:
        args.model = with_mirroring_axes(args.model, args.allow_mirroring, work / "model")
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    case = inputs / args.case.name
    if not case.exists():
        shutil.copyfile(args.case, case)
    env = {**os.environ, "PYTHONPATH": str(REPO), "nnUNet_compile": "false",
           **{k: str(work / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}}
    nnunet = [str(Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"), "-i", str(inputs),
              "-o", str(work / "nnunet_mirroring"), "-m", str(args.model), "-f", "all", "-device", "cpu",
              "-step_size", "0.5", "--disable_progress_bar"]
    runs = {"nnunet_mirroring": [timed_run(nnunet, env, None)["wall_s"]], "ours_default": [], "ours_tta": []}
    for _ in range(args.repeats):
        for name, extra in (("ours_default", ()), ("ours_tta", ("--tta",))):
            command = [sys.executable, "-m", "inference", "-i", str(inputs), "-o", str(work / name), "--model",
                       str(args.model), "--no-progress", "--report", "-", *MATCHING_OPTIONS, *extra]
            runs[name].append(timed_run(command, env, None)["wall_s"])
    case_id = args.case.name.removesuffix("_0000.nii.gz")
    labels = {name: read_labels(work / name / f"{case_id}.nii.gz") for name in runs}
    median = {name: statistics.median(seconds) for name, seconds in runs.items()}
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": str(args.model), "allowed_mirroring_axes_set_to": args.allow_mirroring, "case": str(args.case), "options": list(MATCHING_OPTIONS),
        "wall_s": runs, "median_wall_s": median,
        "tta_cost_x_default": round(median["ours_tta"] / median["ours_default"], 2),
        "mean_dice_vs_nnunet_mirroring": {
            "ours_tta": mean_dice(labels["nnunet_mirroring"], labels["ours_tta"]),
            "ours_default": mean_dice(labels["nnunet_mirroring"], labels["ours_default"])},
        "dice_per_label_tta": label_agreement(labels["nnunet_mirroring"], labels["ours_tta"]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "weights" / "organ")
    parser.add_argument("--case", type=Path, default=REAL_CT)
    parser.add_argument("--work", type=Path, default=REPO / "out" / "tta_vs_nnunet")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--allow-mirroring", type=int, nargs="*", default=None, metavar="AXIS",
                        help="run a copy of the model whose checkpoint allows mirroring along these axes")
    return measure_and_record(measure, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
