"""`python -m phantom IMAGE [--labels LABELS]`: write one synthetic CT phantom; `--benchmark`: time generation."""
from __future__ import annotations

import argparse
import time

from phantom.codes import FOVS, PHASES
from phantom.generator import make_phantom, write_phantom


def _benchmark() -> None:
    """Wall and CPU seconds (CPU time is what one free core would take on a shared machine)."""
    make_phantom(0, shape=(8, 16, 16))  # imports and first-call overheads
    for shape, spacing in (((64, 128, 128), (2.5, 1.6, 1.6)), ((300, 512, 512), (2.5, 0.8, 0.8))):
        wall, cpu = time.perf_counter(), time.process_time()
        phantom = make_phantom(1, shape=shape, spacing=spacing)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{shape} at {spacing} mm: {wall:.2f} s wall, {cpu:.2f} s CPU, "  # noqa: T201
              f"tumour hosts {phantom.tumor_hosts}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write one synthetic CT phantom, or time generation.")
    parser.add_argument("image", nargs="?", help="output image path (.nii.gz)")
    parser.add_argument("--labels", help="output label path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phase", choices=PHASES)
    parser.add_argument("--fov", default="abdomen", choices=FOVS + ("random",))
    parser.add_argument("--benchmark", action="store_true")
    args = parser.parse_args()
    if args.benchmark:
        _benchmark()
    elif args.image:
        write_phantom(make_phantom(args.seed, phase=args.phase, fov=args.fov), args.image, args.labels)
    else:
        parser.error("give an image path or --benchmark")
