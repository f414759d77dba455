"""How fast this machine trains the demo's networks: seconds per training iteration of a model
folder's network (plans architecture, patch size and batch size; deep supervision, AdamW) on random
data, without nnU-Net's data loading. Half a minute; run it before `make weights` to see whether a
machine is the speed the 90-minute demo budget was measured on (BENCHMARKS.md, "Training").

    python -m benchmarks.training_speed --model weights/organ --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from inference.engine.model import _read_json, build_network, read_model_config, resolve_configuration


def deep_supervision_targets(target: torch.Tensor, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The label map at each output's resolution (nearest), as nnU-Net's deep supervision does."""
    return [F.interpolate(target[:, None].float(), size=o.shape[2:], mode="nearest")[:, 0].long() for o in outputs]


def seconds_per_iteration(folder: Path, iterations: int, warmup: int, seed: int = 0,
                          precision: str = "fp32") -> list[float]:
    config = read_model_config(folder, "3d_fullres")
    entry = resolve_configuration(_read_json(folder / "plans.json"), "3d_fullres")
    network = build_network(entry["architecture"], 1, config.num_classes)
    network.decoder.deep_supervision = True  # training runs with it; inference does not
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=3e-5)
    generator = torch.Generator().manual_seed(seed)
    shape = (int(entry["batch_size"]), 1, *config.patch_size)
    image = torch.randn(shape, generator=generator)
    target = torch.randint(0, config.num_classes, (shape[0], *shape[2:]), generator=generator)
    network.train()
    times = []
    for step in range(warmup + iterations):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            outputs = [o.float() for o in network(image)]
            loss = sum(F.cross_entropy(o, t) for o, t in zip(outputs, deep_supervision_targets(target, outputs)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("weights/organ"), help="nnU-Net v2 model folder")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of every precision")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {p: [] for p in args.precision}
    for _ in range(args.rounds):
        for precision in args.precision:
            times[precision] += seconds_per_iteration(args.model, args.iterations, args.warmup, precision=precision)
    first = statistics.median(times[args.precision[0]])
    for precision, values in times.items():
        median = statistics.median(values)
        print(f"{args.model}: {len(values)} training iterations, {args.threads} threads, {precision}: "
              f"median {median:.3f} s per iteration (min {min(values):.3f}, max {max(values):.3f}), "
              f"{first / median:.2f}x the speed of {args.precision[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
