"""Cases per hour for a batch: one `python -m inference` process over the whole folder against one
fresh process per case (the same cases, the same options), then `--continue` on the finished batch.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.batch_throughput --cases 3

The cases are the real CT of ../shared/data/real resampled onto a clinical grid (512x512x300 at
0.8x0.8x2.5 mm, benchmarks.engine_vs_nnunet.make_real_input), copied under distinct case IDs.
Modes alternate (batch, fresh, batch, fresh, ...) so that load from other work falls on both; the
ratio of medians is the result. A benchmark, not a test: results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from benchmarks.engine_vs_nnunet import make_real_input

log = logging.getLogger("benchmark")
REPO = Path(__file__).resolve().parent.parent
REAL_CT = REPO.parent / "shared" / "data" / "real" / "TS_example_ct_0000.nii.gz"
DEFAULT_OPTIONS = ("--resampling", "nnunet", "--precision", "bf16")


def make_cases(work: Path, count: int, shape, spacing) -> Path:
    """`count` copies of the resampled real CT as clinical_000_0000.nii.gz, ... in work/inputs."""
    source = work / "source"
    make_real_input(source, REAL_CT, REAL_CT.parent / "labels" / "TS_example_ct.nii.gz", shape, spacing)
    image = next((source / "inputs").glob("*_0000.nii.gz"))
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        target = inputs / f"clinical_{index:03d}_0000.nii.gz"
        if not target.exists():
            shutil.copyfile(image, target)
    return inputs


def timed(command: list[str]) -> float:
    log.info("running %s", " ".join(command))
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... exited {result.returncode}:\n{result.stdout[-3000:]}")
    return seconds


def engine_command(source: Path, output: Path, model: Path | None, options, *extra) -> list[str]:
    command = [sys.executable, "-m", "inference", "-i", str(source), "-o", str(output), "--no-progress",
               "--report", str(output.parent / f"{output.name}_report.json"), *options, *extra]
    return command + (["--model", str(model)] if model is not None else [])


def run_batch(inputs: Path, output: Path, model, options) -> float:
    shutil.rmtree(output, ignore_errors=True)
    return timed(engine_command(inputs, output, model, options))


def run_fresh(inputs: Path, output: Path, model, options) -> float:
    shutil.rmtree(output, ignore_errors=True)
    return sum(timed(engine_command(case, output, model, options)) for case in sorted(inputs.iterdir()))


def same_labels(first: Path, second: Path) -> bool:
    names = sorted(p.name for p in first.glob("*.nii.gz"))
    if names != sorted(p.name for p in second.glob("*.nii.gz")):
        return False
    return all(np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(first / n))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(second / n)))) for n in names)


def measure(args) -> dict:
    work = Path(args.work)
    inputs = make_cases(work, args.cases, args.shape, args.spacing)
    options = tuple(args.options)
    seconds = {"one_process": [], "fresh_processes": []}
    for _ in range(args.repeats):
        seconds["one_process"].append(run_batch(inputs, work / "one_process", args.model, options))
        seconds["fresh_processes"].append(run_fresh(inputs, work / "fresh_processes", args.model, options))
    resume = [timed(engine_command(inputs, work / "one_process", args.model, options, "--continue"))
              for _ in range(args.repeats)]
    report = json.loads((work / "one_process_report.json").read_text())
    batch_median, fresh_median = statistics.median(seconds["one_process"]), statistics.median(seconds["fresh_processes"])
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "cases": args.cases, "shape_zyx": list(args.shape), "spacing_zyx": list(args.spacing),
        "model": str(args.model or "weights (cascade)"), "options": list(options),
        "seconds": seconds, "continue_seconds": resume,
        "continue_skipped": report["batch"]["skipped"],
        "cases_per_hour": {"one_process": round(3600 * args.cases / batch_median, 1),
                           "fresh_processes": round(3600 * args.cases / fresh_median, 1)},
        "speedup_one_process": round(fresh_median / batch_median, 3),
        "continue_fraction_of_batch": round(statistics.median(resume) / batch_median, 4),
        "labels_identical": same_labels(work / "one_process", work / "fresh_processes"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "out" / "batch_throughput")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="alternating repetitions of both modes")
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped cascade, weights/")
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), help="z y x")
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.5, 0.8, 0.8), help="z y x, mm")
    parser.add_argument("--options", nargs=argparse.REMAINDER, default=list(DEFAULT_OPTIONS),
                        help="engine options for every run (last on the line; default: %(default)s)")
    return measure_and_record(measure, parser.parse_args(argv))


def measure_and_record(measure_fn, args) -> int:
    """Run a benchmark's `measure_fn(args)`, keep its result in args.work/result.json and print it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = measure_fn(args)
    (args.work / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
