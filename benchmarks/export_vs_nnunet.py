"""Logits at model resolution -> labels at input resolution: nnU-Net's export against ours.

    python -m benchmarks.export_vs_nnunet [--classes 14] [--low 120 256 256] [--high 300 512 512]

The defaults are a clinical-size map: 14 classes, 120x256x256 at model resolution exported to 300x512x512.

nnU-Net: `resample_data_or_seg_to_shape` (its `resampling_fn_probabilities`, order 1, separate z
where anisotropic) on the whole map, then argmax. Ours: `logits` (cropped, slab-wise interpolation
then argmax; only border voxels interpolated), `logits-dense` (the same with every voxel of the
window interpolated: the border shortcut switched off) and `argmax` (argmax at model resolution,
nearest upsampling). Printed: seconds, peak RSS growth of each method (measured in a fresh child
process each, so one method's peak cannot hide another's), and voxel agreement with the first
method's labels (nnU-Net's unless `--methods` leaves it out). The logits are synthetic organ-like blobs
on a background-dominated map, like a trained organ model's output.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time

import numpy as np
import torch

from inference.app.pipeline import peak_rss_mb


def organ_like_logits(classes: int, shape, seed: int = 0) -> np.ndarray:
    """Background-dominated logits with one smooth blob per class, occupying the central body region."""
    rng = np.random.default_rng(seed)
    logits = np.empty((classes, *shape), np.float32)
    grid = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    logits[0] = 2.0
    for k in range(1, classes):
        centre = rng.uniform(-0.5, 0.5, 3)
        radius = rng.uniform(0.08, 0.3, 3)
        distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius))
        logits[k] = 6.0 * np.exp(-distance) - 1.0 + rng.normal(0, 0.1, size=shape).astype(np.float32)
    return logits


LOGITS_FILE = "/tmp/export_bench_logits.npy"
METHODS = ("nnunet", "ours-logits", "ours-logits-dense", "ours-argmax")


def run_method(method: str, high, queue) -> None:
    # Loading the map (not generating it) keeps the peak before the export equal to the map itself,
    # so the peak growth measured afterwards is the export's own.
    logits = np.load(LOGITS_FILE)
    low = logits.shape[1:]
    baseline = peak_rss_mb()
    started = time.perf_counter()
    if method == "nnunet":
        from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
        high_spacing = (2.5, 0.8, 0.8)  # a typical clinical CT grid; the model grid scales from it
        low_spacing = tuple(s * h / l for s, h, l in zip(high_spacing, high, low))
        resampled = resample_data_or_seg_to_shape(torch.from_numpy(logits), tuple(high), low_spacing,
                                                  high_spacing, is_seg=False, order=1, order_z=0,
                                                  force_separate_z=None)
        labels = np.asarray(resampled).argmax(0).astype(np.uint8)
    else:
        from inference.engine.logits_to_labels import logits_to_labels_interpolated, logits_to_labels_nearest
        tensor = torch.from_numpy(logits)
        if method in ("ours-logits", "ours-logits-dense"):
            if method == "ours-logits-dense":
                import inference.engine.logits_to_labels
                inference.engine.logits_to_labels.BOUNDARY_SHARE_LIMIT = 0.0  # every voxel through the dense passes
            window_labels, window = logits_to_labels_interpolated(tensor, tuple(high))
            labels = np.zeros(tuple(high), np.uint8)
            if window is not None:
                labels[window] = window_labels
        else:
            labels = logits_to_labels_nearest(tensor, tuple(high))
    seconds = time.perf_counter() - started
    peak_growth = peak_rss_mb() - baseline
    np.save(f"/tmp/export_bench_{method}.npy", labels)
    queue.put({"method": method, "seconds": round(seconds, 2), "peak_rss_growth_mb": round(peak_growth, 1)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--low", type=int, nargs=3, default=(120, 256, 256))
    parser.add_argument("--high", type=int, nargs=3, default=(300, 512, 512))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="the first is the reference of the ratio and agreement columns")
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    np.save(LOGITS_FILE, organ_like_logits(args.classes, args.low))
    rows = []
    for method in args.methods:
        queue = context.Queue()
        process = context.Process(target=run_method, args=(method, args.high, queue))
        process.start()
        rows.append(queue.get())
        process.join()
    reference = np.load(f"/tmp/export_bench_{args.methods[0]}.npy")
    for row in rows:
        row["agreement"] = round(float((np.load(f"/tmp/export_bench_{row['method']}.npy") == reference).mean()), 6)
        row["peak_ratio"] = row["peak_rss_growth_mb"] / rows[0]["peak_rss_growth_mb"]
    base = rows[0]
    print(f"\nexport of {args.classes}x{'x'.join(map(str, args.low))} logits to {'x'.join(map(str, args.high))} labels")
    print(f"{'method':<18}{'seconds':>9}{'x first':>9}{'peak RSS +MB':>14}{'x first':>9}{'agreement':>11}")
    for row in rows:
        print(f"{row['method']:<18}{row['seconds']:>9.2f}{row['seconds'] / base['seconds']:>9.3f}"
              f"{row['peak_rss_growth_mb']:>14.0f}{row['peak_ratio']:>9.3f}"
              f"{row['agreement']:>11.6f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
