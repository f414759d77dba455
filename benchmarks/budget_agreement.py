"""Labels of the memory-budgeted path against the path without a budget, on the CPU.

    python -m benchmarks.budget_agreement --model weights --slices 300 [--budget 1200] [--precision fp32]
    python -m benchmarks.budget_agreement --model paper --slices 128 --precision bf16

Both runs take the CPU; the budgeted one follows the GPU's plan (the CPU twin of the CUDA path:
tiles shrunk to fit the budget, the export's working set bounded), the other runs the trained
patch as the engine always did. `--model paper` builds random-weight networks of the paper's size
(benchmarks.gpu_check) whose organ tiles the default budget shrinks; the case is a synthetic
512x512xN CT at 0.8x0.8x2.5 mm (seed 300, as benchmarks.gpu_check draws it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def segment(model: Path, options, image: np.ndarray, geometry) -> tuple[np.ndarray, dict]:
    from inference.app.segmenters import build_segmenter
    from inference.engine.device_memory import recording
    segmenter = build_segmenter(model, options)
    started = time.perf_counter()
    with recording() as ledger:
        labels = segmenter.segment(image, geometry, {})
    return labels, {"seconds": round(time.perf_counter() - started, 1), **ledger.as_dict()}


def main(argv=None) -> int:
    from benchmarks.gpu_check import write_paper_cascade
    from inference.engine.device_memory import DEFAULT_BUDGET_MB
    from inference.engine.runner import EngineOptions
    from phantom import make_phantom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="weights", help="cascade or model folder, or 'paper'")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_MB)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--crop-plane", type=int, default=None, metavar="N",
                        help="keep the central NxN of every slice (a cheaper case with the same depth)")
    parser.add_argument("--json", type=Path, default=REPO / "out" / "budget_agreement.json")
    args = parser.parse_args(argv)
    model = write_paper_cascade(REPO / "out" / "paper_weights") if args.model == "paper" else Path(args.model)
    phantom = make_phantom(300, shape=(args.slices, 512, 512), spacing=(2.5, 0.8, 0.8), phase="arterial",
                           fov="random", direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    image, geometry = phantom.image.astype(np.float32), phantom.geometry
    if args.crop_plane:
        start = [(n - args.crop_plane) // 2 for n in image.shape[1:]]
        image = np.ascontiguousarray(image[:, start[0]:start[0] + args.crop_plane, start[1]:start[1] + args.crop_plane])
        geometry = dataclasses.replace(geometry, shape=image.shape)
    unbounded, first = segment(model, EngineOptions(precision=args.precision), image, geometry)
    bounded, second = segment(model, EngineOptions(precision=args.precision, gpu_memory_budget_mb=args.budget),
                              image, geometry)
    foreground = (unbounded > 0) | (bounded > 0)
    result = {"model": str(args.model), "shape": list(image.shape), "precision": args.precision, "budget_mb": args.budget,
              "voxel_agreement": float(np.mean(bounded == unbounded)),
              "foreground_agreement": float(np.mean((bounded == unbounded)[foreground])) if foreground.any() else 1.0,
              "foreground_share": float(np.mean(foreground)), "unbounded": first, "bounded": second}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("unbounded", "bounded")}))
    print("bounded plan:", second["fallbacks"], "seconds", first["seconds"], second["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
