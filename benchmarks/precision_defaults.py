"""The CLI's default configuration against the former default and fp32, side by side on the same cases.

    python -m benchmarks.precision_defaults --input ../shared/data/real --model weights --repeats 3

Variants, each a fresh `python -m inference` process, run in turn `--repeats` times (alternating,
so that load from other work spreads over all of them):
- `default`: no options (`--precision auto --resampling nnunet`);
- `fp32`: `--precision fp32`, the default's resampling (so its labels differ from the default's
  only by the precision);
- `former-default`: `--precision fp32 --resampling fast`, the defaults before `auto`.
Printed: median wall time and peak RSS per variant, the precision each model ran in (run report),
and the fraction of voxels whose labels agree between default and fp32, and default and former
default (mean over cases). Results go to BENCHMARKS.md with the command and the machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {
    "default": [],
    "fp32": ["--precision", "fp32"],
    "former-default": ["--precision", "fp32", "--resampling", "fast"],
}


def run_variant(name: str, args, repeat: int) -> dict:
    from evaluation.harness import run_harness
    output = args.work / f"{name}_{repeat}"
    template = (f"{sys.executable} -m inference -i {{input}} -o {{output}} --model {args.model} --device cpu "
                f"--no-progress --report {{output}}/{{case}}_report.json {' '.join(VARIANTS[name])}")
    rows = run_harness(template, args.input, output, interval_s=0.1)
    if any(r.status != "ok" for r in rows):
        raise RuntimeError(f"{name}: a case failed: {[vars(r) for r in rows]}")
    report = json.loads((output / "predictions" / f"{rows[0].case}_report.json").read_text())
    return {"wall_s": sum(r.wall_s for r in rows), "peak_rss_mb": max(r.rss_max_mb for r in rows),
            "precision_used": {k: v["precision"] for k, v in report["precision_used"].items()},
            "labels": output / "predictions"}


def voxel_agreement(a: Path, b: Path) -> float:
    fractions = []
    for path in sorted(a.glob("*.nii.gz")):
        # copies, not views: a view of an image nothing keeps alive reads freed memory
        x = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        y = sitk.GetArrayFromImage(sitk.ReadImage(str(b / path.name)))
        fractions.append(float(np.mean(x == y)))
    return statistics.mean(fractions)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="folder of <ID>_0000.nii.gz scans")
    parser.add_argument("--model", type=Path, default=REPO / "weights")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "precision_defaults")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    runs = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name in VARIANTS:
            runs[name].append(run_variant(name, args, repeat))
    summary = {name: {"median_wall_s": round(statistics.median(r["wall_s"] for r in rows), 2),
                      "walls_s": [round(r["wall_s"], 2) for r in rows],
                      "median_peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rows), 1),
                      "precision_used": rows[0]["precision_used"]} for name, rows in runs.items()}
    default_labels = runs["default"][0]["labels"]
    summary["agreement"] = {f"default_vs_{name}": round(voxel_agreement(default_labels, runs[name][0]["labels"]), 6)
                            for name in VARIANTS if name != "default"}
    summary["former_default_over_default_wall"] = round(
        summary["former-default"]["median_wall_s"] / summary["default"]["median_wall_s"], 2)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
