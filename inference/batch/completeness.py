"""Is a batch finished? Merge the run reports of its parts and list what is missing.

    python -m inference.batch.completeness --input IN --output OUT --reports OUT/run_report.part-*.json

Expected cases are the scans of IN (as `python -m inference` finds them). A case is complete when
its label map exists in OUT (with `--verify`: is a finished label map on the input's grid, the same
check as `--continue`). The reports add which part ran each case and why a case failed; parts that
never reported are named. Exit code 0: every case complete; 1: something is missing; 2: usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_COMPLETE, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2


def read_batch_sections(paths: list[Path]) -> list[dict]:
    """The `batch` section of each run report; a report without one counts as a single part."""
    sections = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable run report ({error})") from None
        batch = report.get("batch")
        if batch is None:
            raise ValueError(f"{path}: run report has no 'batch' section (written by an older engine?)")
        sections.append({**batch, "report": str(path)})
    return sections


def merge_parts(expected: list[str], sections: list[dict], output_problems: dict[str, str | None]) -> dict:
    """Pure merge: `output_problems[case]` is None when the case's output is complete, else why not."""
    num_parts = {s["num_parts"] for s in sections}
    reported_parts = sorted({s["part_id"] for s in sections})
    last_event: dict[str, str] = {}
    runs: dict[str, list[int]] = {}
    for section in sections:
        for case in section["done"]:
            last_event[case] = "done"
            runs.setdefault(case, []).append(section["part_id"])
        for case in section["skipped"]:
            last_event.setdefault(case, "skipped")
        for case, cause in section["failed"].items():
            if last_event.get(case) != "done":
                last_event[case] = f"failed: {cause}"
    missing = {}
    for case in expected:
        problem = output_problems.get(case, "no output")
        if problem is not None:
            event = last_event.get(case)
            missing[case] = problem if event is None or event == "done" else f"{problem}; last run {event}"
    missing_parts = []
    if len(num_parts) == 1:
        missing_parts = sorted(set(range(num_parts.pop())) - set(reported_parts))
    return {
        "expected": len(expected),
        "complete": len(expected) - len(missing),
        "missing": missing,
        "num_parts": sorted({s["num_parts"] for s in sections}),
        "reported_parts": reported_parts,
        "parts_without_report": missing_parts,
        "run_more_than_once": {case: parts for case, parts in runs.items() if len(parts) > 1},
        "unexpected_outputs": sorted(set(last_event) - set(expected)),
        "seconds_per_part": {str(s["part_id"]): s["seconds"] for s in sections},
        "peak_rss_mb_per_part": {str(s["part_id"]): s["peak_rss_mb"] for s in sections},
    }


def output_problems(cases, output_dir: Path, verify: bool) -> dict[str, str | None]:
    from inference.batch.resume import case_is_finished
    problems = {}
    for case in cases:
        output = case.output_path(output_dir)
        if verify:
            finished, cause = case_is_finished(case.path, output)
            problems[case.case_id] = None if finished else cause
        else:
            problems[case.case_id] = None if output.is_file() else "no output"
    return problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference.batch.completeness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", type=Path, required=True, help="the batch's input (folder of scans)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the folder the parts wrote into")
    parser.add_argument("--reports", type=Path, nargs="*", default=[], help="run reports of the parts")
    parser.add_argument("--verify", action="store_true",
                        help="read every output whole and check it lies on its input's grid (slower)")
    parser.add_argument("--json", type=Path, default=None, help="also write the merged result here")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from inference.io.images import discover_cases
    try:
        cases = discover_cases(args.input)
        sections = read_batch_sections(args.reports)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    result = merge_parts([c.case_id for c in cases], sections, output_problems(cases, args.output, args.verify))
    print_result(result)
    if args.json is not None:
        from inference.io.images import write_text_atomic
        write_text_atomic(args.json, json.dumps(result, indent=2))
    return EXIT_COMPLETE if not result["missing"] and not result["parts_without_report"] else EXIT_INCOMPLETE


def print_result(result: dict) -> None:
    print(f"{result['complete']} of {result['expected']} case(s) complete")
    for case, cause in result["missing"].items():
        print(f"MISSING {case}: {cause}")
    if result["parts_without_report"]:
        print(f"parts without a report: {result['parts_without_report']} of {result['num_parts']}")
    for case, parts in result["run_more_than_once"].items():
        print(f"note: {case} was written by parts {parts}")


if __name__ == "__main__":
    sys.exit(main())
