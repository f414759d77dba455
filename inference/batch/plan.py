"""One part of a batch, decided before any model loads: this part's cases (shards) and, with
`--continue`, which of them are already finished (resume) and are skipped."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from inference.batch.resume import case_is_finished
from inference.batch.shards import select_part
from inference.io.images import Case

log = logging.getLogger(__name__)


@dataclass
class BatchPlan:
    num_parts: int
    part_id: int
    part_cases: list[Case]  # this part's share of the input, in the order they run
    to_run: list[Case]
    skipped: list[Case] = field(default_factory=list)  # finished by an earlier run (--continue)
    rechecked: dict[str, str] = field(default_factory=dict)  # case -> why its existing output is redone
    check_seconds: float = 0.0


def plan_part(cases: list[Case], output_dir: Path, *, num_parts: int = 1, part_id: int = 0,
              resume: bool = False) -> BatchPlan:
    """This part's cases; with `resume`, those whose output is a finished label map are skipped."""
    started = time.perf_counter()
    # one part keeps the input's order (a folder's sorted names, or the single file given)
    part_cases = select_part(cases, num_parts, part_id) if (num_parts, part_id) != (1, 0) else list(cases)
    plan = BatchPlan(num_parts, part_id, part_cases, to_run=[])
    for case in part_cases:
        output = case.output_path(output_dir)
        if resume and output.exists():
            finished, cause = case_is_finished(case.path, output)
            if finished:
                plan.skipped.append(case)
                continue
            plan.rechecked[case.case_id] = cause
            log.warning("%s: existing output is redone: %s", output, cause)
        plan.to_run.append(case)
    plan.check_seconds = time.perf_counter() - started
    return plan
