"""GPU check, prepared to finish within about 4 minutes on one GPU machine (see benchmarks/gpu_check.sh).

1. Correctness on small cases (run last): the CUDA path (fp32 and fp16) gives the labels of the CPU
   path (the CuPy paths are checked by the GPU-only tests that gpu_check.sh runs).
2. Cost on clinical-size synthetic cases (512x512xN at 0.8x0.8x2.5 mm): a fresh `python -m inference`
   process per case (imports, CUDA start-up and weight loading included), whole-device GPU memory
   (NVML total minus free every 0.1 s: max and area under the curve) and wall time, for the organ
   model alone and for the full cascade, with networks of the paper's size (organ: 6-stage U-Net
   32-320 features, patch 96x160x160; tumor: 5 stages, patch 56x112x176). The weights are random:
   the network's time and memory depend on the architecture, not on the weight values; the
   post-processing and the tumor crops depend on the scattered labels such a model draws, so their
   seconds are not those of a trained model. Variants: the cascade with the default memory budget,
   without a budget (`--gpu-memory-budget 0`), with torch's expandable segments, and on one long
   (1000-slice) case; each case's run report carries the ledger's prediction beside torch's peaks. The fresh processes run before this process touches CUDA (NVML counts
   every context on the device).
3. benchmarks/gpu_profile.py in a process of its own: start-up steps, whole-device memory after
   each, torch's peaks, and the organ model's slab path against its whole-map path.

    python -m benchmarks.gpu_check --work /tmp/gpu_check [--cases 2] [--slices 300]
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("gpu_check")
REPO = Path(__file__).resolve().parent.parent
ORGAN_PATCH, ORGAN_SPACING = (96, 160, 160), (2.5, 1.6, 1.6)
TUMOR_PATCH, TUMOR_SPACING = (56, 112, 176), (2.5, 0.8, 0.8)


def correctness(work: Path) -> dict:
    """Small cases through CPU and CUDA paths; returns agreement figures (1.0 = identical labels)."""
    from inference.engine.runner import EngineOptions, ModelRunner
    from inference.engine.model import load_model
    from phantom import make_phantom
    from training.model_folders import make_model_folder

    folder = make_model_folder(work / "small_model", patch=(32, 64, 64), bias_class=0)
    phantom = make_phantom(7, shape=(40, 160, 160), spacing=(2.5, 0.8, 0.8))
    volume, spacing = phantom.image.astype(np.float32), phantom.geometry.spacing
    cpu = ModelRunner(load_model(folder), EngineOptions(torch.device("cpu"))).segment(volume, spacing, {})
    results = {}
    for precision in ("fp32", "fp16"):
        cuda = ModelRunner(load_model(folder), EngineOptions(torch.device("cuda"), precision=precision))
        labels = cuda.segment(volume, spacing, {})
        results[f"cuda_{precision}_vs_cpu_fp32_voxel_agreement"] = float((labels == cpu).mean())
    return results


def write_paper_cascade(root: Path) -> Path:
    """Random-weight networks of the paper's size, as nnU-Net model folders + cascade.json."""
    from training.cascade_json_writer import write_cascade_json
    from training.model_folders import add_random_tumor_stages, make_model_folder, paper_architecture
    if (root / "cascade.json").is_file():
        return root
    make_model_folder(root / "organ", patch=ORGAN_PATCH, spacing=ORGAN_SPACING,
                      arch=paper_architecture(ORGAN_PATCH, ORGAN_SPACING), bias_class=0)
    tumor_arch = paper_architecture(TUMOR_PATCH, TUMOR_SPACING, features=(32, 64, 128, 256, 320))
    stages = add_random_tumor_stages(root, patch=TUMOR_PATCH, spacing=TUMOR_SPACING, arch=tumor_arch)
    write_cascade_json(root, organ_folder="organ", tumor_stages=stages,
                   provenance={"description": "random weights of the paper's network sizes, for timing only"})
    return root


def clinical_cases(folder: Path, count: int, slices: int, first_seed: int = 300) -> Path:
    from phantom import make_phantom, write_phantom
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = folder / f"clinical_{index:02d}_0000.nii.gz"
        if not path.exists():
            phantom = make_phantom(first_seed + index, shape=(slices, 512, 512), spacing=(2.5, 0.8, 0.8), phase="arterial",
                                   fov="random", direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
            write_phantom(phantom, path)
    return folder


def cost(work: Path, cases: Path, long_cases: Path | None, device: str) -> dict:
    """Fresh `python -m inference` processes, measured by the FLARE-style harness."""
    from evaluation.harness import run_harness
    weights = write_paper_cascade(work / "paper_weights")
    python = sys.executable

    def command(model: Path, name: str, environment: str = "") -> str:
        return (f"{environment}{python} -m inference -i {{input}} -o {{output}} --device {device} --model {model} "
                f"--report {work}/{name}_{{case}}.json --no-progress")
    variants = {  # name: (command, cases)
        "cascade": (command(weights, "cascade"), cases),  # the default memory budget
        # without a budget: the trained patch, weights resident, the scan preprocessed on the device
        "cascade_unbounded": (command(weights, "cascade_unbounded") + " --gpu-memory-budget 0", cases),
        # torch's allocator without fixed-size segments: less fragmentation counted by NVML
        "cascade_expandable": (command(weights, "cascade_expandable", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "),
                               cases),
    }
    if long_cases is not None:
        variants["cascade_long"] = (command(weights, "cascade_long"), long_cases)
    table = {}
    for name, (template, folder) in variants.items():
        results = run_harness(template, folder, work / name, gpu_index=0, interval_s=0.1, progress=False)
        table[name] = [vars(r) for r in results]
        for result in table[name]:
            report_path = work / f"{name}_{result['case']}.json"
            if report_path.is_file():
                report = json.loads(report_path.read_text())
                case = report["cases"][0]
                result["seconds"] = {k: round(v, 2) for k, v in case["seconds"].items()}
                result["startup_seconds"] = report.get("startup_seconds")
                result["run_seconds"] = report["summary"]["seconds"]
                result["details"] = case.get("details")
                # torch's own pools at their peak: whole-device max minus this is the CUDA context,
                # cuDNN/cuBLAS workspaces, cupy's pool and fragmentation, i.e. where to look next
                result["torch_reserved_max_mb"] = case.get("peak_gpu_mb")
                result["torch_allocated_max_mb"] = case.get("peak_gpu_allocated_mb")
                result["predicted_gpu_mb"] = case.get("predicted_gpu_mb")  # the ledger, same process
                result["device_memory"] = case.get("device_memory")
    return table


def profile(work: Path) -> dict | None:
    """benchmarks/gpu_profile.py in a process of its own on the first clinical case."""
    case = sorted((work / "cases").glob("*_0000.nii.gz"))[0]
    command = [sys.executable, "-m", "benchmarks.gpu_profile", "--weights", str(work / "paper_weights"),
               "--case", str(case), "--out", str(work / "profile")]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    print(completed.stdout[-6000:], completed.stderr[-3000:], sep="\n")
    path = work / "profile" / "gpu_profile.json"
    return json.loads(path.read_text()) if completed.returncode == 0 and path.is_file() else None


def print_table(results: dict) -> None:
    device = results["device"]
    print(f"\nGPU check on {device}")
    for key, value in results["correctness"].items():
        print(f"  {key:<48} {value:.6f}")
    print(f"\n{'variant':<20}{'case':<14}{'status':<8}{'wall s':>8}{'GPU max MB':>12}{'reserved':>10}"
          f"{'allocated':>10}{'ledger':>8}{'RSS max MB':>12}")
    for variant, rows in results["cost"].items():
        for r in rows:
            print(f"{variant:<20}{r['case']:<14}{r['status']:<8}{r['wall_s']:>8.2f}{r['gpu_max_mb'] or 0:>12.0f}"
                  f"{r.get('torch_reserved_max_mb') or 0:>10.0f}{r.get('torch_allocated_max_mb') or 0:>10.0f}"
                  f"{r.get('predicted_gpu_mb') or 0:>8.0f}{r['rss_max_mb']:>12.0f}")
    for variant, rows in results["cost"].items():
        for r in rows:
            print(f"  {variant} {r['case']} steps: {r.get('seconds')} start-up: {r.get('startup_seconds')} "
                  f"run: {r.get('run_seconds')}")
    if results.get("idle_gpu_mb") is not None:
        print(f"  whole-device GPU memory in use before the runs (other processes): {results['idle_gpu_mb']:.0f} MB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"))
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--long-slices", type=int, default=1000,
                        help="one more case of this many slices, full cascade only (0: none)")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a dry run of the cost part (no correctness checks), to test this script")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the GPU check needs one (--device cpu for a dry run)", file=sys.stderr)
        return 3
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # No CUDA in this process until the fresh processes have been measured: NVML counts every
    # context on the device, so ours would inflate their whole-device figures.
    results = {"device": "cpu", "idle_gpu_mb": None}
    if args.device == "cuda":
        from evaluation.monitoring import GpuMemoryProbe
        probe = GpuMemoryProbe.open(0)
        if probe is not None:
            results["device"], results["idle_gpu_mb"] = probe.name, probe.used_mb()
            probe.close()
    long_cases = (clinical_cases(args.work / "cases_long", 1, args.long_slices, first_seed=400)
                  if args.long_slices else None)
    results["cost"] = cost(args.work, clinical_cases(args.work / "cases", args.cases, args.slices), long_cases,
                           args.device)
    if args.device == "cuda":
        results["profile"] = profile(args.work)
    skip = args.skip_correctness or args.device == "cpu"
    results["correctness"] = {} if skip else correctness(args.work)
    results["seconds"] = round(time.perf_counter() - started, 1)
    (args.work / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
