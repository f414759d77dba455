"""FLARE-style resource harness: run a command once per case and measure it.

    python -m evaluation.harness --cmd "COMMAND {input} {output}" --inputs DIR --out DIR [--gpu 0]

For every case of `--inputs` (as `inference.io.images.discover_cases` finds them) the harness stages a
folder holding only that case, substitutes the placeholders (shell-quoted) and runs the command
through `/bin/sh -c` in a fresh process group, like FLARE starting one container per case:

    {input}   the one-case input folder      {output}  OUT/predictions (shared by all cases)
    {case}    the case ID

While it runs, whole-device GPU memory (NVML, total - free, GPU `--gpu`) and the RSS of the
process tree are sampled every 0.1 s. Written to OUT: resources.csv, resources.json,
plots/<case>.png (memory over time), logs/<case>.log (the command's stdout and stderr).
A failing case is recorded with its exit code and the others go on; the exit status is 1 when any
case failed. Example with the project's engine and a FLARE container:

    --cmd "python -m inference -i {input} -o {output}"
    --cmd "docker container run --gpus device=0 --rm -v {input}:/workspace/inputs/ \\
           -v {output}:/workspace/outputs/ IMAGE:latest /bin/bash -c 'sh predict.sh'"
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from evaluation.monitoring import GpuMemoryProbe, MemoryTrace, area_under_curve, sample_until_exit
from inference.io.images import Case, discover_cases

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.1  # FLARE samples GPU memory at 10 Hz
PLACEHOLDERS = ("{input}", "{output}", "{case}")
RESOURCE_COLUMNS = ("case", "status", "exit_code", "wall_s", "rss_max_mb", "rss_auc_mb_s",
                    "gpu_max_mb", "gpu_auc_mb_s", "samples", "output_written")
EXIT_OK, EXIT_FAILED = 0, 1


@dataclass
class CaseResources:
    """What one case cost. GPU fields are None when no GPU could be sampled."""
    case: str
    status: str  # "ok", "failed" (non-zero exit), "timeout" or "error" (could not start)
    exit_code: int | None
    wall_s: float
    rss_max_mb: float
    rss_auc_mb_s: float
    gpu_max_mb: float | None
    gpu_auc_mb_s: float | None
    samples: int
    output_written: bool  # OUTPUT/<case>.nii.gz exists afterwards (the FLARE contract)


def build_command(template: str, input_dir: Path, output_dir: Path, case_id: str) -> str:
    values = {"{input}": str(input_dir), "{output}": str(output_dir), "{case}": case_id}
    command = template
    for placeholder, value in values.items():
        command = command.replace(placeholder, shlex.quote(value))
    return command


def stage_case(case: Case, staging_root: Path) -> Path:
    """A fresh folder holding a copy of only this case. A copy, not a symlink (a container that
    bind-mounts the folder could not follow it) nor a hard link (a command writing to its input
    would change the user's file); staging happens outside the measured time."""
    folder = Path(tempfile.mkdtemp(prefix=f"{case.case_id}-", dir=staging_root))
    target = folder / case.path.name
    if case.path.is_dir():
        shutil.copytree(case.path, target)
    else:
        shutil.copy2(case.path, target)
    return folder


def run_case(template: str, case: Case, out_dir: Path, gpu: GpuMemoryProbe | None,
             interval_s: float = DEFAULT_INTERVAL_S, timeout_s: float | None = None) -> CaseResources:
    """Run the command for one case and measure it; writes the case's log and plot."""
    predictions, logs, plots = out_dir / "predictions", out_dir / "logs", out_dir / "plots"
    staging_root = out_dir / ".staging"
    for folder in (predictions, logs, plots, staging_root):
        folder.mkdir(parents=True, exist_ok=True)
    input_dir = stage_case(case, staging_root)
    command = build_command(template, input_dir, predictions, case.case_id)
    log.info("case %s: %s", case.case_id, command)
    try:
        with open(logs / f"{case.case_id}.log", "wb") as log_file:
            log_file.write(f"$ {command}\n".encode())
            log_file.flush()
            try:
                process = subprocess.Popen(command, shell=True, stdout=log_file, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as error:
                log.error("case %s: could not start the command: %s", case.case_id, error)
                return CaseResources(case.case_id, "error", None, 0.0, 0.0, 0.0, None, None, 0, False)
            trace, wall_s, timed_out = sample_until_exit(process, gpu, interval_s, timeout_s)
            if timed_out:
                _kill_group(process)
    finally:
        shutil.rmtree(input_dir, ignore_errors=True)
    exit_code = process.returncode
    status = "timeout" if timed_out else ("ok" if exit_code == 0 else "failed")
    if status != "ok":
        log.error("case %s: %s (exit code %s), see %s", case.case_id, status, exit_code,
                  logs / f"{case.case_id}.log")
    result = _summarize_trace(case.case_id, status, exit_code, wall_s, trace,
                              (predictions / f"{case.case_id}.nii.gz").exists())
    from evaluation.plots import plot_memory_trace  # matplotlib only once there is something to draw
    plot_memory_trace(plots / f"{case.case_id}.png", trace,
                      f"{case.case_id}: {status}, exit {exit_code}, wall {wall_s:.2f} s")
    return result


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the command and everything it started (its own process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _summarize_trace(case_id: str, status: str, exit_code: int | None, wall_s: float, trace: MemoryTrace,
                     output_written: bool) -> CaseResources:
    return CaseResources(
        case=case_id, status=status, exit_code=exit_code, wall_s=wall_s,
        rss_max_mb=max(trace.rss_mb, default=0.0),
        rss_auc_mb_s=area_under_curve(trace.times_s, trace.rss_mb),
        gpu_max_mb=max(trace.gpu_mb) if trace.has_gpu else None,
        gpu_auc_mb_s=area_under_curve(trace.times_s, trace.gpu_mb) if trace.has_gpu else None,
        samples=len(trace.times_s), output_written=output_written,
    )


def run_harness(template: str, inputs, out_dir, *, gpu_index: int = 0, interval_s: float = DEFAULT_INTERVAL_S,
                timeout_s: float | None = None, progress: bool = False) -> list[CaseResources]:
    """Python API: run every case, write resources.csv/.json, return the per-case results."""
    if not any(placeholder in template for placeholder in PLACEHOLDERS[:2]):
        log.warning("command has neither {input} nor {output}: every case runs the same command")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = discover_cases(inputs)
    gpu = GpuMemoryProbe.open(gpu_index)
    results = []
    try:
        for case in tqdm(cases, desc="measuring", unit="case", disable=not progress):
            results.append(run_case(template, case, out_dir, gpu, interval_s, timeout_s))
    finally:
        if gpu is not None:
            gpu.close()
        shutil.rmtree(out_dir / ".staging", ignore_errors=True)
    write_resources_csv(out_dir / "resources.csv", results)
    write_resources_json(out_dir / "resources.json", results, template=template, interval_s=interval_s,
                         gpu={"index": gpu_index, "available": gpu is not None,
                              "name": gpu.name if gpu is not None else None})
    return results


def write_resources_csv(path: Path, results: list[CaseResources]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESOURCE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        # None (no GPU) becomes an empty cell, not the string "None".
        writer.writerow({key: "" if value is None else value for key, value in asdict(result).items()})
    path.write_text(buffer.getvalue())


def write_resources_json(path: Path, results: list[CaseResources], **run_info) -> None:
    ok = [result for result in results if result.status == "ok"]
    gpu_max = [result.gpu_max_mb for result in results if result.gpu_max_mb is not None]
    summary = {
        "cases": len(results),
        "failed": [result.case for result in results if result.status != "ok"],
        "wall_s_mean_ok": sum(result.wall_s for result in ok) / len(ok) if ok else None,
        "wall_s_max": max((result.wall_s for result in results), default=None),
        "rss_max_mb": max((result.rss_max_mb for result in results), default=None),
        "gpu_max_mb": max(gpu_max) if gpu_max else None,
    }
    document = {**run_info, "summary": summary, "cases": [asdict(result) for result in results]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation.harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cmd", required=True, help="command template with {input}, {output}, {case}")
    parser.add_argument("--inputs", required=True, type=Path, help="folder of input cases (or one case)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the measurements")
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU to sample (default 0)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="sampling period in s")
    parser.add_argument("--timeout", type=float, default=None, help="kill a case after this many seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        results = run_harness(args.cmd, args.inputs, args.out, gpu_index=args.gpu, interval_s=args.interval,
                              timeout_s=args.timeout, progress=not args.no_progress and sys.stderr.isatty())
    except FileNotFoundError as error:
        log.error("%s", error)
        return EXIT_FAILED
    if not results:
        log.error("%s: no input cases found", args.inputs)
        return EXIT_FAILED
    failed = [result.case for result in results if result.status != "ok"]
    print(f"{len(results)} case(s), {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
          f"written to {args.out}")
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
