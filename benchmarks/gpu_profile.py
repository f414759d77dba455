"""Where one fresh process's GPU seconds and megabytes go (run by benchmarks/gpu_check.py, in a
process of its own so that no other CUDA context shares the device while NVML is read).

Steps, each timed, with whole-device GPU memory (NVML total minus free) after it:
interpreter + `import torch`, the CUDA context, building the cascade (weights to the GPU), reading
the case, then the case through `run_cases` (what `python -m inference` does) while a thread
samples NVML every 20 ms. Then, for the organ model alone, torch's own peak allocation of one
fp16 forward per tile size beside the ledger's activation model, and of `segment` with the default
budget and without one (the ledger's prediction beside each), with the labels of the two compared.

    python -m benchmarks.gpu_profile --weights DIR --case CT.nii.gz --out DIR [--precision fp16]
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

STARTED = time.perf_counter()


class NvmlSampler:
    """Max of NVML used memory (MiB) while active, sampled by a daemon thread."""

    def __init__(self, probe, interval_s: float = 0.02):
        self.probe, self.interval_s = probe, interval_s
        self.max_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.max_mb = max(self.max_mb, self.probe.used_mb() or 0.0)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="cascade folder (cascade.json)")
    parser.add_argument("--case", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--precision", default="fp16")
    args = parser.parse_args(argv)
    from evaluation.monitoring import GpuMemoryProbe
    probe = GpuMemoryProbe.open(0)
    if probe is None:
        print("no GPU visible to NVML: this profile needs one", file=sys.stderr)
        return 3
    steps: dict[str, dict] = {}

    def mark(name: str, started: float) -> float:
        now = time.perf_counter()
        steps[name] = {"s": round(now - started, 3), "nvml_used_mb": round(probe.used_mb() or 0.0)}
        return now

    from inference.app.cli import seconds_since_process_start
    steps["interpreter"] = {"s": round((seconds_since_process_start() or 0.0) - (time.perf_counter() - STARTED), 3),
                            "nvml_used_mb": round(probe.used_mb() or 0.0)}
    t = time.perf_counter()
    import torch
    t = mark("import_torch", t)
    torch.zeros(1, device="cuda")
    t = mark("cuda_context", t)
    from inference.cascade.segmenter import CascadeSegmenter
    from inference.engine.runner import EngineOptions
    from inference.io.images import Case, case_id_from_name
    from inference.cascade.cascade_json import load_manifest
    from inference.app.pipeline import read_case, run_cases
    t = mark("import_inference", t)
    options = EngineOptions(device=torch.device("cuda"), precision=args.precision)
    segmenter = CascadeSegmenter(load_manifest(args.weights), options)
    torch.cuda.synchronize()
    t = mark("build_cascade", t)
    case = Case(case_id_from_name(args.case.name), args.case)
    read_case(case)
    t = mark("read_case_alone", t)
    torch.cuda.reset_peak_memory_stats()
    args.out.mkdir(parents=True, exist_ok=True)
    with NvmlSampler(probe) as sampler:
        report = run_cases([case], args.out, segmenter)[0]
    t = mark("run_case", t)
    steps["run_case"].update(nvml_max_mb=round(sampler.max_mb), torch_allocated_max_mb=_mb(torch.cuda.max_memory_allocated()),
                             torch_reserved_max_mb=_mb(torch.cuda.max_memory_reserved()), case_seconds=report.seconds,
                             status=report.status, error=report.error)
    steps["organ_model"] = organ_paths(segmenter, case, options, probe)
    steps["total_s"] = round(time.perf_counter() - STARTED, 3)
    (args.out / "gpu_profile.json").write_text(json.dumps(steps, indent=2, default=str))
    print(json.dumps(steps, indent=1, default=str))
    return 0


def _mb(value: float) -> int:
    return round(value / 2 ** 20)


def organ_paths(segmenter, case, options, probe) -> dict:
    """For the organ model: torch's peak of one fp16 forward per tile size beside the ledger's
    activation model, then the case through the bounded path (the default budget) and through the
    path without a budget, each with the ledger's prediction beside torch's measured peak."""
    import dataclasses

    import numpy as np
    import torch

    from inference.engine.device_memory import MB, forward_bytes, recording
    from inference.engine.runner import ModelRunner
    from inference.app.pipeline import read_case
    volume, geometry, _, _ = read_case(case)
    runner: ModelRunner = segmenter.organ_stage.func.__self__  # the partial's bound ModelRunner.segment
    result = {"forward": {}}
    runner.model.to(options.device)
    for tile in [(96, 160, 160), (64, 160, 160), (48, 160, 160), (32, 160, 160), (96, 128, 128)]:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        patch = torch.zeros((1, 1, *tile), device="cuda")
        entry = result["forward"].setdefault("x".join(map(str, tile)), {})
        for name, network in (("plain", runner.model.networks[0]), ("lean", runner.model)):
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                network(patch)
            torch.cuda.synchronize()
            entry[f"{name}_measured_mb"] = _mb(torch.cuda.max_memory_allocated() - before)
            entry[f"{name}_ledger_mb"] = round(forward_bytes(runner.cost.unet, tile, 2, lean=name == "lean") / MB)
        del patch
    runner.model.to(torch.device("cpu"))
    unbounded = ModelRunner(runner.model, dataclasses.replace(options, gpu_memory_budget_mb=0))
    for name, path in (("bounded", runner), ("unbounded", unbounded)):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with NvmlSampler(probe) as sampler, recording() as ledger:
            labels = path.segment(volume, geometry.spacing, timings, clamp_hu=True)
            torch.cuda.synchronize()
        result[name] = {"s": round(time.perf_counter() - started, 3), "steps": {k: round(v, 3) for k, v in timings.items()},
                        "ledger": ledger.as_dict(), "torch_allocated_max_mb": _mb(torch.cuda.max_memory_allocated()),
                        "torch_reserved_max_mb": _mb(torch.cuda.max_memory_reserved()), "nvml_max_mb": round(sampler.max_mb)}
        result[f"{name}_labels"] = labels
    result["bounded_vs_unbounded_voxel_agreement"] = float(np.mean(result.pop("bounded_labels")
                                                                   == result.pop("unbounded_labels")))
    return result


if __name__ == "__main__":
    sys.exit(main())
