"""The batch section of a run report: what one part of a batch did, for a scheduler to collect
and for `python -m inference.batch.completeness` to merge."""
from __future__ import annotations

from inference.batch.plan import BatchPlan

SUMMARY_VERSION = 1


def batch_summary(plan: BatchPlan, case_reports, seconds: float, peak_rss_mb: float,
                  peak_gpu_mb: float | None) -> dict:
    """`case_reports` are the pipeline's CaseReports of `plan.to_run` (status "ok" or "failed")."""
    done = [r.case_id for r in case_reports if r.status == "ok"]
    failed = {r.case_id: r.error or "failed" for r in case_reports if r.status != "ok"}
    return {
        "version": SUMMARY_VERSION,
        "num_parts": plan.num_parts,
        "part_id": plan.part_id,
        "cases": [case.case_id for case in plan.part_cases],
        "done": done,
        "skipped": [case.case_id for case in plan.skipped],
        "failed": failed,
        "redone": dict(plan.rechecked),  # existing outputs that failed the --continue check
        "complete": not failed and len(done) + len(plan.skipped) == len(plan.part_cases),
        "seconds": round(seconds, 2),
        "resume_check_seconds": round(plan.check_seconds, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "peak_gpu_mb": None if peak_gpu_mb is None else round(peak_gpu_mb, 1),
    }


def default_report_name(num_parts: int, part_id: int) -> str:
    """Parts writing into one output folder each keep their own report."""
    return "run_report.json" if num_parts == 1 else f"run_report.part-{part_id}-of-{num_parts}.json"
