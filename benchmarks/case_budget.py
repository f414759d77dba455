"""The per-case time budget on a real scan, side by side with unbounded runs in the same invocation.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.case_budget -i ../shared/data/real/TS_example_ct_0000.nii.gz \
        -o out/case_budget --budgets 60 10 [--baseline-src DIR]

Runs `python -m inference` once without a budget, once per budget and, with `--baseline-src`
(a checkout of the code before the budget existed), once with that code: each a fresh process,
as a user runs it. Writes summary.json: per run the case's seconds (read, write, total, and
segment_s: the cascade's steps, everything but reading and writing), what the budget skipped, the labels
present, and whether the labels equal the unbounded run's (all labels, and organ labels where
neither run has tumor).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from inference.core.labels import TUMOR_LABEL

REPO = Path(__file__).resolve().parent.parent


def run_inference(source: Path, input_path: Path, output: Path, extra: list[str]) -> dict:
    inputs = output / "in"
    inputs.mkdir(parents=True, exist_ok=True)
    link = inputs / input_path.name
    if not link.exists():
        link.symlink_to(input_path.resolve())
    command = [sys.executable, "-m", "inference", "-i", str(inputs), "-o", str(output / "labels"), "--no-progress",
               "--model", str(REPO / "weights"), *extra]
    started = time.perf_counter()
    subprocess.run(command, cwd=source, check=True, env={**os.environ, "PYTHONPATH": str(source)})
    wall = time.perf_counter() - started
    report = json.loads((output / "labels" / "run_report.json").read_text())
    (case,) = report["cases"]
    seconds = case["seconds"]
    segment = sum(v for k, v in seconds.items() if k not in ("read", "write", "total"))
    return {"command": " ".join(command[1:]), "process_wall_s": round(wall, 1), "options": report["options"],
            "status": case["status"], "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "segment_s": round(segment, 2), "labels_present": case["labels_present"],
            "time_budget": (case.get("details") or {}).get("time_budget"),
            "tumor_stages_run": (case.get("details") or {}).get("tumor_stages_run"),
            "tumor_stages_skipped": (case.get("details") or {}).get("tumor_stages_skipped"),
            "labels": str(next((output / "labels").glob("*.nii.gz")))}


def compare(labels_path: str, reference_path: str) -> dict:
    from inference.io.images import read_image
    labels, reference = read_image(labels_path)[0], read_image(reference_path)[0]
    organs = (labels != TUMOR_LABEL) & (reference != TUMOR_LABEL)
    return {"identical": bool(np.array_equal(labels, reference)),
            "organ_labels_identical_outside_tumor": bool(np.array_equal(labels[organs], reference[organs])),
            "voxels_differing": int(np.count_nonzero(labels != reference))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", type=Path, required=True, help="one scan")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--budgets", type=float, nargs="+", default=[60.0])
    parser.add_argument("--baseline-src", type=Path, default=None, help="code before the budget, for labels unchanged")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="options for every run")
    args = parser.parse_args(argv)
    args.input, args.out = args.input.resolve(), args.out.resolve()  # the runs start in other folders
    shutil.rmtree(args.out, ignore_errors=True)
    runs = {"unbounded": run_inference(REPO, args.input, args.out / "unbounded", args.extra)}
    for budget in args.budgets:
        runs[f"budget_{budget:g}s"] = run_inference(REPO, args.input, args.out / f"budget_{budget:g}",
                                                    ["--case-time-budget", f"{budget:g}", *args.extra])
    if args.baseline_src is not None:
        runs["before_budget_code"] = run_inference(args.baseline_src, args.input, args.out / "before", args.extra)
    for name, run in runs.items():
        if name != "unbounded":
            run["versus_unbounded"] = compare(run["labels"], runs["unbounded"]["labels"])
    summary = {"input": str(args.input), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
