"""Our engine against nnU-Net v2's own predictor, same model folder, same inputs, one run.

    python -m benchmarks.engine_vs_nnunet --model weights/organ --cases 1
    python -m benchmarks.engine_vs_nnunet --model M --real-ct ../shared/data/real/TS_example_ct_0000.nii.gz

Each run is a fresh process (imports and weight loading count, as in FLARE). Printed per case and
in total: wall time, peak RSS of the process tree, GPU whole-device max memory when NVML sees a
GPU, our time split (network vs the rest), and per-label Dice agreement with nnU-Net's labels
(and with the phantom's true labels, for information). A benchmark, not a test: results go to
BENCHMARKS.md with the command and the machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from evaluation.metrics import dice
from evaluation.monitoring import GpuMemoryProbe, sample_until_exit

log = logging.getLogger("benchmark")
REPO = Path(__file__).resolve().parent.parent

# every variant states its configuration in full, so that a change of the CLI's defaults does not
# change what a variant measures; "ours-default" alone runs whatever the defaults are
DEFAULT_VARIANTS = {
    "ours-default": [],
    "ours-logits": ["--export", "logits", "--resampling", "fast", "--precision", "fp32"],
    "ours-argmax": ["--export", "argmax", "--resampling", "fast", "--precision", "fp32"],
    "ours-logits-bf16": ["--export", "logits", "--resampling", "fast", "--precision", "bf16"],
    "ours-nnunet-resampling": ["--export", "logits", "--resampling", "nnunet", "--precision", "fp32"],
    "ours-nnunet-resampling-bf16": ["--export", "logits", "--resampling", "nnunet", "--precision", "bf16"],
}


def make_inputs(folder: Path, count: int, shape, spacing, seed: int) -> dict[str, Path]:
    from inference.io.images import write_labels
    from phantom import make_phantom, write_phantom
    (folder / "inputs").mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(exist_ok=True)
    truths = {}
    for index in range(count):
        case_id = f"bench_{index:03d}"
        image = folder / "inputs" / f"{case_id}_0000.nii.gz"
        truth = folder / "truth" / f"{case_id}.nii.gz"
        if not (image.exists() and truth.exists()):
            phantom = make_phantom(seed + index, shape=tuple(shape), spacing=tuple(spacing), phase="venous",
                                   direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
            write_phantom(phantom, image)
            write_labels(truth, phantom.labels, phantom.geometry)
        truths[case_id] = truth
    return truths


def make_real_input(folder: Path, image_path: Path, label_path: Path, shape, spacing) -> dict[str, Path]:
    """The real CT (and its labels) resampled onto the benchmark grid: `shape` (z, y, x) voxels of
    `spacing` mm, centred on the scan, its direction kept; linear for HU, nearest for labels, air
    (-1024 HU, label 0) outside the scan's field of view."""
    (folder / "inputs").mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(exist_ok=True)
    case_id = image_path.name.removesuffix("_0000.nii.gz").removesuffix(".nii.gz")
    image_out, truth_out = folder / "inputs" / f"{case_id}_0000.nii.gz", folder / "truth" / f"{case_id}.nii.gz"
    if not (image_out.exists() and truth_out.exists()):
        image = sitk.ReadImage(str(image_path))
        size_xyz = [int(n) for n in reversed(shape)]
        spacing_xyz = [float(s) for s in reversed(spacing)]
        centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
        direction = np.array(image.GetDirection()).reshape(3, 3)
        half = direction @ (np.array(spacing_xyz) * (np.array(size_xyz) - 1) / 2)
        grid = sitk.Image(size_xyz, sitk.sitkUInt8)
        grid.SetSpacing(spacing_xyz)
        grid.SetDirection(image.GetDirection())
        grid.SetOrigin(tuple(np.array(centre) - half))
        resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
        labels = sitk.Resample(sitk.ReadImage(str(label_path)), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                               sitk.sitkUInt8)
        sitk.WriteImage(resampled, str(image_out), True)
        sitk.WriteImage(labels, str(truth_out), True)
    return {case_id: truth_out}


def link_inputs(folder: Path, inputs: Path, truth: Path | None) -> dict[str, Path]:
    """Existing cases (`<ID>_0000.nii.gz` in `inputs`, labels `<ID>.nii.gz` in `truth`) linked into
    the benchmark's input folder as they are."""
    (folder / "inputs").mkdir(parents=True, exist_ok=True)
    truths = {}
    for image in sorted(Path(inputs).glob("*_0000.nii.gz")):
        case_id = image.name.removesuffix("_0000.nii.gz")
        link = folder / "inputs" / image.name
        if not link.exists():
            link.symlink_to(image.resolve())
        if truth is not None and (Path(truth) / f"{case_id}.nii.gz").exists():
            truths[case_id] = Path(truth) / f"{case_id}.nii.gz"
    if not any((folder / "inputs").iterdir()):
        raise FileNotFoundError(f"{inputs}: no <ID>_0000.nii.gz cases")
    return truths


def timed_run(command: list[str], env: dict, gpu: GpuMemoryProbe | None) -> dict:
    log.info("running: %s", shlex.join(command))
    started, cpu_before = time.perf_counter(), _children_cpu_s()
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    trace, wall, _ = sample_until_exit(process, gpu, 0.1)
    cpu = _children_cpu_s() - cpu_before
    output = process.stdout.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({process.returncode}):\n{output[-3000:]}")
    return {"wall_s": round(time.perf_counter() - started, 2), "sampled_wall_s": round(wall, 2),
            "cpu_s": round(cpu, 1),
            "peak_rss_mb": round(max(trace.rss_mb), 1),
            "gpu_max_mb": round(max(trace.gpu_mb), 1) if trace.has_gpu else None}


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished children: on a machine busy with other
    work a run's CPU time varies less than its wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def label_agreement(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    present = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    return {int(k): round(dice(a == k, b == k), 4) for k in present}


def run(args) -> dict:
    work = Path(args.work)
    if args.inputs is not None:
        truths = link_inputs(work, args.inputs, args.truth)
    elif args.real_ct is not None:
        label = args.real_ct.parent / "labels" / args.real_ct.name.replace("_0000.nii.gz", ".nii.gz")
        truths = make_real_input(work, args.real_ct, label, args.shape, args.spacing)
    else:
        truths = make_inputs(work, args.cases, args.shape, args.spacing, args.seed)
    env = {**os.environ, "nnUNet_raw": str(work / "nnunet_raw"), "nnUNet_preprocessed": str(work / "nnunet_pre"),
           "nnUNet_results": str(work / "nnunet_results"), "PYTHONPATH": str(REPO)}
    gpu = GpuMemoryProbe.open(0) if args.device != "cpu" else None
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "gpu": gpu.name if gpu else None}, "runs": {}}
    if not args.skip_nnunet:
        command = ["nnUNetv2_predict_from_modelfolder", "-i", str(work / "inputs"), "-o", str(work / "nnunet"),
                   "-m", str(args.model), "-f", "all", "--disable_tta", "-step_size", str(args.step_size),
                   "-device", "cuda" if args.device == "cuda" else "cpu"]
        results["runs"]["nnunet"] = timed_run([str(Path(sys.executable).parent / command[0]), *command[1:]], env, gpu)
    for name, extra in DEFAULT_VARIANTS.items():
        if args.variants and name not in args.variants:
            continue
        report = work / f"{name}_report.json"
        command = [sys.executable, "-m", "inference", "-i", str(work / "inputs"), "-o", str(work / name),
                   "--model", str(args.model), "--device", args.device, "--step-size", str(args.step_size),
                   "--report", str(report), "--no-progress", *extra]
        result = timed_run(command, env, gpu)
        cases = json.loads(report.read_text())["cases"]
        network = sum(c["seconds"].get("network", 0) for c in cases)
        result["network_s"] = round(network, 2)
        result["outside_network_fraction"] = round(1 - network / result["wall_s"], 3)
        result["steps_s"] = {k: round(sum(c["seconds"].get(k, 0) for c in cases), 2)
                             for k in ("read", "preprocess", "network", "export", "write")}
        results["runs"][name] = result
    compare(results, work, truths, args.skip_nnunet)
    return results


def compare(results: dict, work: Path, truths: dict[str, Path], skip_nnunet: bool) -> None:
    for name, result in results["runs"].items():
        agreement, accuracy = [], []
        for case_id, truth in truths.items():
            ours = read_labels(work / name / f"{case_id}.nii.gz")
            accuracy.append(label_agreement(read_labels(truth), ours))
            if not skip_nnunet and name != "nnunet":
                agreement.append(label_agreement(read_labels(work / "nnunet" / f"{case_id}.nii.gz"), ours))
        if agreement:
            result["dice_vs_nnunet_per_label"] = agreement[0] if len(agreement) == 1 else agreement
            result["mean_dice_vs_nnunet"] = round(statistics.mean(v for a in agreement for v in a.values()), 4)
        result["mean_dice_vs_truth"] = round(statistics.mean(v for a in accuracy for v in a.values()), 4)


def print_table(results: dict) -> None:
    runs = results["runs"]
    base = runs.get("nnunet")
    print(f"\n{'run':<28}{'wall s':>9}{'x nnU-Net':>11}{'CPU s':>9}{'x nnU-Net':>11}"
          f"{'peak RSS MB':>13}{'x nnU-Net':>11}{'GPU max MB':>12}{'outside net':>13}{'Dice vs nnU':>13}{'Dice vs truth':>15}")
    for name, r in runs.items():
        time_ratio = f"{r['wall_s'] / base['wall_s']:.2f}" if base else "-"
        rss_ratio = f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}" if base else "-"
        cpu_ratio = f"{r['cpu_s'] / base['cpu_s']:.2f}" if base else "-"
        print(f"{name:<28}{r['wall_s']:>9.1f}{time_ratio:>11}{r['cpu_s']:>9.1f}{cpu_ratio:>11}"
              f"{r['peak_rss_mb']:>13.0f}{rss_ratio:>11}"
              f"{(r['gpu_max_mb'] or float('nan')):>12.0f}{r.get('outside_network_fraction', float('nan')):>13.2f}"
              f"{r.get('mean_dice_vs_nnunet', float('nan')):>13.4f}{r['mean_dice_vs_truth']:>15.4f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "weights" / "organ")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "benchmark")
    parser.add_argument("--cases", type=int, default=1)
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), help="z y x")
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.5, 0.8, 0.8), help="z y x, mm")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--inputs", type=Path, default=None,
                        help="instead of phantoms: the <ID>_0000.nii.gz cases of this folder as they are")
    parser.add_argument("--truth", type=Path, default=None, help="with --inputs: labels <ID>.nii.gz")
    parser.add_argument("--real-ct", type=Path, default=None,
                        help="instead of phantoms: this CT (<ID>_0000.nii.gz, labels in labels/<ID>.nii.gz beside "
                             "it) resampled onto --shape/--spacing, e.g. ../shared/data/real/TS_example_ct_0000.nii.gz")
    parser.add_argument("--step-size", type=float, default=0.5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--variants", nargs="*", choices=sorted(DEFAULT_VARIANTS), default=None)
    parser.add_argument("--skip-nnunet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = run(args)
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nfull results: {args.work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
