"""The ledger's prediction beside what one GPU measured, per case length (benchmarks/gpu_session.sh).

    python -m benchmarks.gpu_side_by_side --ledger device_memory.json --check gpu_check.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows(ledger: dict, check: dict) -> list[dict]:
    from inference.engine.device_memory import MB, predicted_device_mb
    measured = {}
    for variant in ("cascade", "cascade_long"):
        for run in check.get("cost", {}).get(variant, []):
            measured.setdefault(variant, []).append(run)
    table = []
    for case in ledger["cases"]:
        variant = "cascade" if case["slices"] == min(c["slices"] for c in ledger["cases"]) else "cascade_long"
        for run in measured.get(variant, [None])[:2]:
            run = run or {}
            table.append({"slices": case["slices"], "ledger_tensors_mb": case["predicted_peak_mb"],
                          "ledger_whole_device_mb": round(predicted_device_mb(case["predicted_peak_mb"] * MB)),
                          "in_run_ledger_mb": run.get("predicted_gpu_mb"), "measured_whole_device_mb": run.get("gpu_max_mb"),
                          "torch_allocated_max_mb": run.get("torch_allocated_max_mb"),
                          "torch_reserved_max_mb": run.get("torch_reserved_max_mb"),
                          "fresh_process_s": run.get("wall_s"), "startup_s": run.get("startup_seconds")})
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--check", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.ledger.is_file() or not args.check.is_file():
        print(f"missing {args.ledger if not args.ledger.is_file() else args.check}", file=sys.stderr)
        return 1
    table = rows(json.loads(args.ledger.read_text()), json.loads(args.check.read_text()))
    header = ["slices", "ledger_tensors_mb", "ledger_whole_device_mb", "in_run_ledger_mb", "measured_whole_device_mb",
              "torch_allocated_max_mb", "torch_reserved_max_mb", "fresh_process_s"]
    print("  ".join(header))
    for row in table:
        print("  ".join(f"{row[k] if row[k] is not None else '-':>{len(k)}}" for k in header))
    for row in table:
        print(f"{row['slices']} slices, start-up seconds: {row['startup_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
