"""The organ Dice a perfect network could reach at a model's spacing: the true labels as one-hot
maps are resampled to that spacing (area) and back (linear, as our export) and scored against
themselves. An upper bound for any model trained at that spacing on those cases.

    python -m benchmarks.resolution_ceiling --labels out/val_canonical/labels --spacing 3.0 1.4 1.4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from evaluation.metrics import dice
from inference.core.labels import LABEL_NAMES, ORGAN_LABELS
from inference.resampling.fast import compute_new_shape, resample_torch



def ceiling(labels: np.ndarray, spacing, model_spacing) -> list[float]:
    """Per-organ Dice (NaN where the organ is absent) of labels -> model spacing -> back."""
    onehot = torch.from_numpy(np.stack([labels == k for k in range(14)]).astype(np.float32))
    low = resample_torch(onehot, compute_new_shape(labels.shape, spacing, model_spacing))
    back = resample_torch(low, labels.shape).argmax(0).numpy()
    return [dice(labels == k, back == k) if (labels == k).any() else float("nan") for k in ORGAN_LABELS]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, required=True, help="folder of true label maps (.nii.gz)")
    parser.add_argument("--spacing", type=float, nargs=3, action="append", required=True,
                        help="model spacing z y x in mm (repeat for several)")
    args = parser.parse_args(argv)
    paths = sorted(args.labels.glob("*.nii.gz"))
    if not paths:
        print(f"{args.labels}: no label maps", file=sys.stderr)
        return 2
    cases = [(sitk.GetArrayFromImage(image), image.GetSpacing()[::-1])
             for image in (sitk.ReadImage(str(p)) for p in paths)]
    print(f"{len(cases)} cases from {args.labels}")
    for model_spacing in args.spacing:
        table = np.array([ceiling(labels, spacing, model_spacing) for labels, spacing in cases])
        per_organ = np.nanmean(table, axis=0)
        print(f"\nspacing {model_spacing}: mean organ Dice ceiling {np.nanmean(per_organ):.3f}")
        for label, value in zip(ORGAN_LABELS, per_organ):
            print(f"  {LABEL_NAMES[label]:<22}{value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
