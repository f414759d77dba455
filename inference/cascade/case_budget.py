"""A time budget per case, spent stage by stage in the cascade's order of value.

The organ model always runs (without organs there is no case to write); each tumor stage then
runs only if it is expected to end within the budget, so a case that runs out of time is still
written, with the stages it skipped named in the run report. Stages are never interrupted: the
budget decides before a stage starts, from what the case has spent and what the stage is expected
to cost (`StageCostModel`).

The clock is injected (`time.monotonic` by default), so tests advance a fake clock and are exact.
`FLARE_CASE_TIME_BUDGET` (seconds) sets the default where no `--case-time-budget` is given: the
container's way to run the FLARE setting.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

BUDGET_ENVIRONMENT_VARIABLE = "FLARE_CASE_TIME_BUDGET"
# Until a tumor stage has run in this process, a tumor stage is taken to cost this many times the
# organ stage's seconds per scan voxel, per voxel of its crop. The shipped tumor models run at
# 2x1x1 mm against the organ model's 3x1.4x1.4 (2.9x the voxels) on small crops padded to their
# patch: on a 30x64x64 phantom they cost 12.9x (liver), 5.7x (pancreas) and 7.0x (kidneys) the
# organ model's seconds per voxel; on the real CT of ../shared/data/real the liver stage 4.3x.
# The largest is taken, so that a first estimate errs towards skipping.
FIRST_TUMOR_COST_FACTOR = 13.0

Clock = Callable[[], float]


def budget_from_environment(environ=os.environ) -> float | None:
    """Seconds from FLARE_CASE_TIME_BUDGET, None when unset or empty; ValueError when not a positive number."""
    text = environ.get(BUDGET_ENVIRONMENT_VARIABLE, "").strip()
    if not text:
        return None
    return positive_seconds(text)


def positive_seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a time budget must be a positive number of seconds, got {text}")
    return value


@dataclass
class StageCostModel:
    """Seconds per input voxel of the organ stage and of each tumor stage, as measured in this
    process (the latest case), for the budget's estimate of a stage's cost before it runs."""
    organ_rate: float | None = None
    tumor_rates: dict[str, float] = field(default_factory=dict)

    def record_organ(self, seconds: float, voxels: int) -> None:
        self.organ_rate = seconds / max(voxels, 1)

    def record_tumor(self, stage: str, seconds: float, voxels: int) -> None:
        self.tumor_rates[stage] = seconds / max(voxels, 1)

    def tumor_seconds(self, stage: str, voxels: int) -> float:
        """Expected seconds of tumor stage `stage` on a crop of `voxels`: its own measured rate, else
        the slowest measured tumor stage's, else the organ stage's x FIRST_TUMOR_COST_FACTOR (0
        before anything was measured)."""
        rate = self.tumor_rates.get(stage) or max(self.tumor_rates.values(), default=None)
        if rate is None:
            rate = (self.organ_rate or 0.0) * FIRST_TUMOR_COST_FACTOR
        return rate * voxels


@dataclass
class CaseBudget:
    """The seconds one case may spend in the cascade (None: unbounded), counted from creation."""
    seconds: float | None
    clock: Clock = time.monotonic
    started: float = field(init=False)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def refusal(self, expected_seconds: float) -> str | None:
        """Why a stage expected to take `expected_seconds` must not start (None: it may)."""
        if self.seconds is None:
            return None
        elapsed = self.elapsed
        if elapsed >= self.seconds:
            return f"time budget spent ({elapsed:.1f} s of {self.seconds:g} s)"
        if elapsed + expected_seconds > self.seconds:
            return (f"time budget: expected to end at {elapsed + expected_seconds:.1f} s "
                    f"(now {elapsed:.1f} s + about {expected_seconds:.1f} s) of {self.seconds:g} s")
        return None

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "elapsed": round(self.elapsed, 3), "skipped": dict(self.skipped)}
