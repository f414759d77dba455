"""What the cascade costs on the CPU beyond the organ stage, and its memory on a very long scan.

    python -m benchmarks.cascade_cost --organ weights/organ [--slices 300] [--long-slices 1000]

Builds a cascade folder from the given organ model plus one tumor model per host organ (liver,
pancreas, both kidneys) with the organ model's architecture and random weights: the cost of a
tumor stage depends on its network and crop size, not on its weight values. Then, each run a fresh
`python -m inference` process on a 512x512xN phantom at 0.8x0.8x2.5 mm (arterial phase, so the
kidney stages run too):
- organ model alone vs the full cascade on the same case: wall time and their ratio;
- the full cascade on a 512x512x`--long-slices` case: peak RSS of the process tree.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from benchmarks.gpu_check import clinical_cases

REPO = Path(__file__).resolve().parent.parent


def build_cascade(organ: Path, root: Path, tumor_spacing, tumor_patch) -> Path:
    from inference.engine.model import resolve_configuration
    from training.cascade_json_writer import write_cascade_json
    from training.model_folders import add_random_tumor_stages
    from training.nnunet_plans import unet_topology
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(organ, root / "organ")
    plans = json.loads((organ / "plans.json").read_text())
    configuration = next(iter(plans["configurations"]))
    architecture = resolve_configuration(plans, configuration)["architecture"]
    features = architecture["arch_kwargs"]["features_per_stage"]
    kernels, strides = unet_topology(tumor_patch, tumor_spacing, len(features))
    architecture["arch_kwargs"].update({"kernel_sizes": kernels, "strides": strides})
    stages = add_random_tumor_stages(root, patch=tumor_patch, spacing=tumor_spacing, arch=architecture)
    write_cascade_json(root, organ_folder="organ", tumor_stages=stages,
                   provenance={"description": "benchmark: trained organ model + random-weight tumor models"})
    return root


def measure(template: str, cases: Path, out: Path) -> list[dict]:
    from evaluation.harness import run_harness
    return [vars(r) for r in run_harness(template, cases, out, interval_s=0.1)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organ", type=Path, default=REPO / "weights" / "organ")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "cascade_cost")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--long-slices", type=int, default=1000)
    parser.add_argument("--tumor-spacing", type=float, nargs=3, default=(2.5, 0.8, 0.8))
    parser.add_argument("--tumor-patch", type=int, nargs=3, default=(32, 128, 128))
    args = parser.parse_args(argv)
    cascade = build_cascade(args.organ, args.work / "cascade", args.tumor_spacing, args.tumor_patch)
    python = sys.executable
    common = "--device cpu --no-progress --report {output}/{case}_report.json"
    organ_template = f"{python} -m inference -i {{input}} -o {{output}} --model {args.organ} {common}"
    cascade_template = f"{python} -m inference -i {{input}} -o {{output}} --model {cascade} {common}"
    results = {}
    cases = clinical_cases(args.work / f"cases_{args.slices}", 1, args.slices)
    results["organ_only"] = measure(organ_template, cases, args.work / "organ_only")
    results["cascade"] = measure(cascade_template, cases, args.work / "cascade_run")
    if args.long_slices:
        long_cases = clinical_cases(args.work / f"cases_{args.long_slices}", 1, args.long_slices)
        results["cascade_long"] = measure(cascade_template, long_cases, args.work / "cascade_long")
    for name, rows in results.items():
        for row in rows:
            report = Path(args.work / {"organ_only": "organ_only", "cascade": "cascade_run",
                                       "cascade_long": "cascade_long"}[name] / "predictions" / f"{row['case']}_report.json")
            if report.is_file():
                case = json.loads(report.read_text())["cases"][0]
                row["seconds"] = {k: round(v, 2) for k, v in case["seconds"].items()}
                row["details"] = case.get("details")
    (args.work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    organ, full = results["organ_only"][0], results["cascade"][0]
    print(f"\n{'run':<14}{'slices':>7}{'wall s':>9}{'peak RSS MB':>13}")
    for name, rows in results.items():
        for row in rows:
            slices = args.long_slices if name == "cascade_long" else args.slices
            print(f"{name:<14}{slices:>7}{row['wall_s']:>9.1f}{row['rss_max_mb']:>13.0f}")
    print(f"\ncascade / organ-only wall time: {full['wall_s'] / organ['wall_s']:.2f}")
    for name, rows in results.items():
        print(name, rows[0].get("seconds"), rows[0].get("details"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
