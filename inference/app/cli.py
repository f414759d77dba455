"""`python -m inference -i IN -o OUT`: segment CT scans (a folder, one file or a DICOM folder).

Exit codes: 0 every case written; 1 some cases failed (each named with its cause); 2 usage error;
3 fatal environment (weights missing or tampered, output folder not writable, no device when one
was demanded), raised before any case is touched.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_FATAL = 0, 1, 2, 3

log = logging.getLogger("inference")


def _step_size(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"step size must be in (0, 1], got {text}")
    return value


def _output_formats(text: str) -> tuple[str, ...]:
    from inference.app.outputs import parse_output_formats
    try:
        return parse_output_formats(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _budget_seconds(text: str) -> float:
    from inference.cascade.case_budget import positive_seconds
    try:
        return positive_seconds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _budget_mb(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"GPU memory budget must be >= 0 MB, got {text}")
    return value


def _add_memory_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu-memory-budget", type=_budget_mb, default=None, metavar="MB",
                        help="tensors the engine may keep on the GPU: tiles, accumulator and export are planned to "
                             "fit, with host-RAM fallbacks reported in the run report (default 1200 on CUDA; 0: no "
                             "budget, the trained patch with weights resident; on a CPU run it makes the CPU follow "
                             "the GPU's plan and predict its memory)")


def build_parser() -> argparse.ArgumentParser:
    from inference.core.choices import (DEFAULT_PRECISION, DEFAULT_RESAMPLING, DEVICES, EXPORT_METHODS,
                                        PRECISION_CHOICES, RESAMPLINGS)
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", type=Path, help="folder of scans, one scan file, or a DICOM folder")
    parser.add_argument("-o", "--output", type=Path, help="folder for <ID>.nii.gz label maps")
    parser.add_argument("--model", type=Path, default=None,
                        help="cascade folder with cascade.json (default: the shipped weights/) "
                             "or a single nnU-Net v2 model folder")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--step-size", type=_step_size, default=0.5, help="sliding-window step, fraction of the patch")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default=DEFAULT_PRECISION,
                        help="network autocast; auto (default), per model: fp16 on CUDA; on a CPU bf16 where it "
                             "has bf16 units (AMX, AVX512-BF16) unless cascade.json records that model's bf16 labels "
                             "agreeing with its fp32 labels below 0.99 on the validation cases, else fp32. The run "
                             "report names the precision each model ran in and why")
    parser.add_argument("--export", choices=EXPORT_METHODS, default="logits",
                        help="logits: interpolate cropped logits then argmax (nnU-Net's result); "
                             "argmax: argmax at model resolution then nearest upsampling")
    parser.add_argument("--resampling", choices=RESAMPLINGS, default=DEFAULT_RESAMPLING,
                        help="nnunet (default): nnU-Net's own resampling both ways (third-order spline on the CPU, "
                             "nearest along the thick axis), labels that match nnU-Net's predictor; fast: area down / "
                             "linear up, logits back linearly: no third-order spline, but labels that agree less with "
                             "nnU-Net's (BENCHMARKS.md, \"Engine vs nnU-Net's predictor (CPU)\")")
    _add_memory_budget(parser)
    _add_output_options(parser)
    _add_input_and_batch_options(parser)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """Threads, report, side outputs (volumes, preview, quality flags, DICOM SEG), demo and orientation."""
    from inference.core.choices import QA_MODES
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    parser.add_argument("--report", type=Path, default=None,
                        help="JSON run report (default: OUTPUT/run_report.json; '-' disables)")
    parser.add_argument("--volumes", action="store_true", help="write <ID>_volumes.json and volumes.csv (organ mL, tumors)")
    parser.add_argument("--preview", action="store_true", help="write <ID>_preview.png (axial/coronal/sagittal overlays)")
    parser.add_argument("--qa", choices=QA_MODES, default="report",
                        help="per-case quality flags (organ volumes, missing or misplaced organs, tumour outliers): "
                             "report (default) logs and reports them; strict also counts flagged cases as failed "
                             "(exit 1); off skips the check")
    parser.add_argument("--output-format", type=_output_formats, default=("nifti",), metavar="FORMATS",
                        help="nifti (default), dicom-seg, dicom-seg-labelmap, or nifti with one of them "
                             "(nifti,dicom-seg): a DICOM Segmentation <ID>.seg.dcm referencing the source series, "
                             "binary or label map (DICOM series inputs only; other inputs keep NIfTI)")
    parser.add_argument("--demo", type=Path, metavar="DIR",
                        help="write a synthetic CT to DIR/inputs and segment it into DIR/outputs")
    parser.add_argument("--keep-orientation", action="store_true",
                        help="run the models on the arrays as stored (default: permute/flip each scan's axes to "
                             "the canonical layout, direction diag(-1,-1,1), and back; exact, no resampling)")


def _add_input_and_batch_options(parser: argparse.ArgumentParser) -> None:
    """Batches over many processes, test-time mirroring, what counts as CT, DICOM series, the time budget."""
    batch = parser.add_argument_group("batches over many processes (docs/BATCH.md)")
    batch.add_argument("--num-parts", type=int, default=1, help="split the input's cases into N parts (default 1)")
    batch.add_argument("--part-id", type=int, default=0,
                       help="run part K of N (0 <= K < N): sorted case IDs, every N-th from the K-th")
    batch.add_argument("--continue", dest="resume", action="store_true",
                       help="skip cases whose output is already a finished label map on the input's grid")
    parser.add_argument("--tta", action="store_true",
                        help="test-time mirroring over the model's allowed axes, logits averaged (nnU-Net's "
                             "default; off here as in FLARE entries: 2^axes network passes)")
    parser.add_argument("--assume-ct", action="store_true",
                        help="segment scans whose values or header say they are not CT (default: refuse them)")
    parser.add_argument("--series", metavar="UID", default=None,
                        help="the DICOM series to read from a DICOM folder (default: the CT volume, chosen by rules)")
    parser.add_argument("--each-series", action="store_true",
                        help="one case per CT volume series of each DICOM folder, named <folder>_s<SeriesNumber>")
    parser.add_argument("--case-time-budget", type=_budget_seconds, metavar="SECONDS", default=None,
                        help="seconds per case: tumor stages that would end past it are skipped, the case is still "
                             "written (default: $FLARE_CASE_TIME_BUDGET, else unbounded)")


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def check_output_folder(output: Path, case_ids=None) -> None:
    """Writable, and without partial files of `case_ids` (all when None) left by a killed run; other
    parts of a batch may be writing theirs into the same folder right now."""
    from inference.io.images import remove_stale_partials
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".write-test-"):
            pass
    except OSError as error:
        raise PermissionError(f"{output}: output folder not writable ({error.strerror or error})") from None
    for stale in remove_stale_partials(output, case_ids):
        log.warning("removed a partial output left by an interrupted run: %s", stale)


def write_demo_input(folder: Path) -> Path:
    """A synthetic abdominal CT (and its true labels) to segment when no input is given.

    Drawn like the shipped demo weights' training data (training.dataset at 1.2 M voxels): the
    phantom generator scales the patient to the field of view, and those weights learned patients
    of 110-170 mm fields of view; on an adult-sized 336-mm phantom they reach a mean organ Dice of
    0.18 instead of about 0.8 (BENCHMARKS.md, "Accuracy of the shipped weights")."""
    from inference.io.images import write_labels
    from phantom import make_phantom, write_phantom
    phantom = make_phantom(2026, shape=(80, 150, 150), spacing=(3.0, 1.0, 1.0), phase="venous",
                           direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    inputs = folder / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    write_phantom(phantom, inputs / "demo_0000.nii.gz")
    (folder / "ground_truth").mkdir(exist_ok=True)
    write_labels(folder / "ground_truth" / "demo.nii.gz", phantom.labels, phantom.geometry)
    return inputs


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.demo is not None:
        args.input = args.input or args.demo / "inputs"
        args.output = args.output or args.demo / "outputs"
    if args.input is None or args.output is None:
        parser.print_usage(sys.stderr)
        print("error: -i/--input and -o/--output are required (or --demo DIR)", file=sys.stderr)
        return EXIT_USAGE
    if args.series is not None and args.each_series:
        parser.print_usage(sys.stderr)
        print("error: --series and --each-series exclude each other", file=sys.stderr)
        return EXIT_USAGE
    if args.case_time_budget is None:
        from inference.cascade.case_budget import BUDGET_ENVIRONMENT_VARIABLE, budget_from_environment
        try:
            args.case_time_budget = budget_from_environment()
        except ValueError as error:
            print(f"error: {BUDGET_ENVIRONMENT_VARIABLE}: {error}", file=sys.stderr)
            return EXIT_USAGE
    return run(args)


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux /proc), so a run report can show what the
    interpreter spent before our code ran; None where /proc is not available."""
    try:
        with open("/proc/self/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as uptime:
            uptime_s = float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))


def run(args) -> int:
    started = time.perf_counter()
    startup = {"before_run_s": seconds_since_process_start()}
    from concurrent.futures import ThreadPoolExecutor

    from inference.app.pipeline import read_case

    if args.demo is not None and not args.input.exists():
        write_demo_input(args.demo)
    plan = _plan_batch(args)
    if isinstance(plan, int):
        return plan
    if not plan.to_run:  # --continue on a finished batch: nothing to load
        _write_report(args, None, [], time.perf_counter() - started, startup, plan, {})
        return EXIT_OK
    cases = plan.to_run
    # The first scan is read while torch is imported and the weights load: SimpleITK releases the
    # GIL while it decodes, and a fresh process spends seconds in `import torch` (4.8 s on the H100
    # machine, BENCHMARKS.md "GPU memory and time").
    with ThreadPoolExecutor(1) as prefetch:
        first_read = prefetch.submit(read_case, cases[0], args.assume_ct)
        import torch

        from inference.engine.runner import DeviceError, EngineOptions, resolve_device
        from inference.cascade.cascade_json import ManifestError
        from inference.engine.model import ModelError
        from inference.app.segmenters import DEFAULT_WEIGHTS, build_segmenter
        startup["imports_s"] = time.perf_counter() - started
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            if args.output.resolve() == args.input.resolve():
                raise PermissionError(f"{args.output}: output folder must differ from the input folder")
            check_output_folder(args.output, [case.case_id for case in cases])
            device = resolve_device(args.device)
            options = EngineOptions(device=device, step_size=args.step_size,
                                    precision=args.precision, export=args.export,
                                    resampling=args.resampling, tta=args.tta,
                                    gpu_memory_budget_mb=args.gpu_memory_budget)
            setup_started = time.perf_counter()
            segmenter = build_segmenter(args.model or DEFAULT_WEIGHTS, options, args.case_time_budget)
            startup["model_setup_s"] = time.perf_counter() - setup_started
        except (ModelError, ManifestError, DeviceError, PermissionError) as error:
            log.error("fatal: %s", error)
            return EXIT_FATAL
    log.info("%d case(s) from %s on %s (step %.2f, export %s, resampling %s)", len(cases), args.input, device,
             options.step_size, options.export, options.resampling)
    for name, choice in segmenter.precision_choices.items():
        log.info("%s runs in %s: %s", name, choice.precision, choice.reason)
    reports = _segment_cases(args, cases, segmenter, first_read)
    failed = [r for r in reports if r.status != "ok"]
    for report in failed:
        log.error("FAILED %s: %s", report.input, report.error)
    log.info("%d of %d case(s) written to %s in %.1f s; %d failed", len(reports) - len(failed), len(reports),
             args.output, time.perf_counter() - started, len(failed))
    if args.volumes:
        _write_volume_table(args.output, reports)
    _write_report(args, options, reports, time.perf_counter() - started, startup, plan,
                  segmenter.precision_choices)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _plan_batch(args):
    """This run's cases: the input's, this part's share of them (--num-parts/--part-id), less
    those already finished (--continue), as a BatchPlan; an exit code for a usage error."""
    from inference.batch.plan import plan_part
    from inference.batch.shards import ShardError
    from inference.io.images import discover_cases
    from inference.io.dicom_series import series_cases
    try:
        cases = series_cases(discover_cases(args.input), args.series, args.each_series)
    except FileNotFoundError as error:
        log.error("%s", error)
        return EXIT_USAGE
    if not cases:
        log.error("%s: no input scans found", args.input)
        return EXIT_USAGE
    try:
        plan = plan_part(cases, args.output, num_parts=args.num_parts, part_id=args.part_id, resume=args.resume)
    except ShardError as error:
        log.error("%s", error)
        return EXIT_USAGE
    if plan.skipped:
        log.info("--continue: %d of %d case(s) already finished, skipped", len(plan.skipped), len(plan.part_cases))
    return plan


def _segment_cases(args, cases, segmenter, first_read):
    """Every case through the pipeline with the asked-for extras, outputs and quality mode."""
    from inference.app.outputs import output_writer
    from inference.app.pipeline import run_cases
    from inference.app.quality import apply_qa_mode
    on_case_done = _case_extras(args) if (args.volumes or args.preview or args.qa != "off") else None
    progress = _progress_bar(len(cases), disable=args.no_progress)
    reports = run_cases(cases, args.output, segmenter, on_case_done=on_case_done, progress=progress,
                        first_read=first_read, canonical_orientation=not args.keep_orientation,
                        write_outputs=output_writer(args.output_format), assume_ct=args.assume_ct)
    if progress is not None:
        progress.close()
    apply_qa_mode(reports, args.qa)
    return reports


def _progress_bar(total: int, disable: bool):
    if disable or total < 2 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="case", desc="segmenting")


def _case_extras(args):
    """Per-case volume report and preview, written next to the label maps."""
    def extras(report, volume, labels, geometry):
        volumes = None
        if args.volumes or args.qa != "off":
            from inference.app.volumes import volume_report
            volumes = volume_report(labels, geometry)
        if args.qa != "off":
            from inference.app.quality import check_quality
            report.quality = check_quality(labels, volume, geometry, volumes)
        if args.volumes:
            from inference.app.volumes import write_volume_report_json
            if report.quality is not None:
                volumes["quality"] = report.quality
            write_volume_report_json(args.output / f"{report.case_id}_volumes.json", volumes)
            report.volumes = volumes
        if args.preview:
            from inference.app.preview import write_preview_png
            write_preview_png(args.output / f"{report.case_id}_preview.png", volume, labels, geometry)
    return extras


def _write_volume_table(output: Path, reports) -> None:
    from inference.app.volumes import write_volume_reports_csv
    tables = {r.case_id: r.volumes for r in reports if r.volumes is not None}
    if tables:
        write_volume_reports_csv(output / "volumes.csv", tables)


def _write_report(args, options, reports, seconds: float, startup: dict, plan, precision_choices: dict) -> None:
    if args.report is not None and str(args.report) == "-":
        return
    from inference.app.pipeline import peak_gpu_mb, peak_rss_mb
    from inference.batch.summary import batch_summary, default_report_name
    path = args.report or args.output / default_report_name(plan.num_parts, plan.part_id)
    peak_gpu = peak_gpu_mb() if options is not None else None  # None: no model ran, torch never imported
    payload = {
        "input": str(args.input), "output": str(args.output),
        "model": str(args.model or "weights"),
        "options": None if options is None else {
            "device": str(options.device), "step_size": options.step_size, "precision": options.precision,
            "export": options.export, "resampling": options.resampling, "tta": options.tta,
            "canonical_orientation": not args.keep_orientation, "qa": args.qa,
            "output_format": list(args.output_format), "assume_ct": args.assume_ct, "series": args.series,
            "each_series": args.each_series, "case_time_budget_s": args.case_time_budget,
            "gpu_memory_budget_mb": options.memory_budget_mb},
        # what `precision` resolved to for each model (folder as cascade.json names it) and why
        "precision_used": {name: choice.as_dict() for name, choice in precision_choices.items()},
        "summary": {"cases": len(reports), "ok": sum(r.status == "ok" for r in reports),
                    "failed": sum(r.status != "ok" for r in reports), "skipped": len(plan.skipped),
                    "quality_flagged": sum(bool(r.quality and r.quality["flagged"]) for r in reports),
                    "seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb(), 1), "peak_gpu_mb": peak_gpu,
                    "predicted_gpu_mb": max((r.predicted_gpu_mb or 0 for r in reports), default=None) or None},
        # where a fresh process's seconds go before the first case: interpreter start-up, our
        # imports (torch), building the models (CUDA start-up and weight loading included)
        "startup_seconds": {k: None if v is None else round(v, 3) for k, v in startup.items()},
        "batch": batch_summary(plan, reports, seconds, peak_rss_mb(), peak_gpu),
        "cases": [{k: v for k, v in r.as_dict().items()} for r in reports],
    }
    from inference.io.images import write_json_atomic
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload)
