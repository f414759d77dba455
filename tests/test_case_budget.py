"""The time budget per case and the implausible-organ bound, on a fake clock: exact and deterministic.

Stages are oracles that advance the clock by a set number of seconds, so "the organ stage took
70 s" is a fact of the test, not of the machine.
"""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from inference.cascade.case_budget import (FIRST_TUMOR_COST_FACTOR, CaseBudget, StageCostModel, budget_from_environment,
                                   positive_seconds)
from inference.cascade.segmenter import CascadeSegmenter, organ_crop_box
from inference.app.cli import EXIT_OK, EXIT_USAGE, main
from inference.engine.runner import EngineOptions
from inference.core.geometry import Geometry
from inference.cascade.organ_plausibility import implausible_organ
from tests.test_cascade import (ALL_STAGES, LIVER, PANCREAS, TUMOR, TUMOR_HU, OrganOracle, TumorOracle,
                                end_to_end_phantom, make_manifest)

GEOMETRY = Geometry((24, 40, 40), (2.5, 0.8, 0.8))
SCAN_VOXELS = math.prod(GEOMETRY.shape)
# margins that keep the crops small: liver 16x19x19 voxels, pancreas 10x16x16, of a 24x40x40 scan
PARAMETERS = {"aorta_min_mm3": 1.0, "tumor_margin_in_plane_mm": 2.0, "tumor_margin_cranio_caudal_mm": 5.0}


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Timed:
    """A stage that takes `seconds` on the fake clock."""

    def __init__(self, stage, clock: FakeClock, seconds: float):
        self.stage, self.clock, self.seconds = stage, clock, seconds

    def __call__(self, volume, spacing, timings):
        self.clock.now += self.seconds
        return self.stage(volume, spacing, timings)


def budgeted(budget, organ_seconds, tumor_seconds, organs=None):
    clock = FakeClock()
    organs = end_to_end_phantom()[0] if organs is None else organs
    tumors = {organ: TumorOracle() for organ, _ in ALL_STAGES}
    seg = CascadeSegmenter(make_manifest(PARAMETERS, ALL_STAGES), EngineOptions(),
                           organ_stage=Timed(OrganOracle(organs), clock, organ_seconds),
                           tumor_stage_fns={o: Timed(t, clock, tumor_seconds) for o, t in tumors.items()},
                           case_time_budget_s=budget, clock=clock)
    return seg, tumors, clock


def run(seg):
    return seg.segment(end_to_end_phantom()[1], GEOMETRY, {}), seg.last_case_info


def test_without_a_budget_every_stage_runs_and_labels_are_unchanged():
    reference, info = run(budgeted(None, 70, 30)[0])
    assert info["tumor_stages_run"] == ["liver", "pancreas"] and (reference == TUMOR).any()
    assert info["time_budget"] == {"seconds": None, "elapsed": 130.0, "skipped": {}}
    generous, _ = run(budgeted(1000, 70, 30)[0])
    np.testing.assert_array_equal(generous, reference)


def test_a_budget_spent_in_the_organ_stage_skips_every_tumor_stage(caplog):
    seg, tumors, _ = budgeted(60, 70, 30)
    with caplog.at_level(logging.WARNING):
        labels, info = run(seg)
    assert not any(t.calls for t in tumors.values()) and not (labels == TUMOR).any()
    unbounded, _ = run(budgeted(None, 70, 30)[0])
    np.testing.assert_array_equal(labels[unbounded != TUMOR], unbounded[unbounded != TUMOR])  # organs intact
    assert info["time_budget"]["skipped"] == {name: "time budget spent (70.0 s of 60 s)" for name in ("liver", "pancreas")}
    assert info["tumor_stages_skipped"]["right_kidney"] == "not contrast-enhanced"  # not the budget's doing
    assert sum("tumor stage for liver skipped: time budget spent" in r.getMessage() for r in caplog.records) == 1


def crop_voxels(seg, organ: int) -> int:
    organs = end_to_end_phantom()[0]
    organs[18:20, 2:4, 2:4] = 0  # the liver fragment post-processing removes
    box = organ_crop_box(organs == organ, GEOMETRY, seg.params)
    return math.prod(s.stop - s.start for s in box)


def test_a_tumor_stage_that_would_end_past_the_budget_is_not_started():
    """Organ 10 s; the first tumor stage is expected to cost FIRST_TUMOR_COST_FACTOR x the organ
    stage's seconds per voxel; it runs (30 s), and its measured rate says the next would end past 50 s."""
    seg, tumors, _ = budgeted(50, 10, 30)
    _, info = run(seg)
    assert info["tumor_stages_run"] == ["liver"] and len(tumors[LIVER].calls) == 1 and not tumors[PANCREAS].calls
    liver, pancreas = crop_voxels(seg, LIVER), crop_voxels(seg, PANCREAS)
    assert tumors[LIVER].calls[0][0].size == liver
    assert 10 + 10 / SCAN_VOXELS * FIRST_TUMOR_COST_FACTOR * liver <= 50
    expected = 30 / liver * pancreas
    reason = info["time_budget"]["skipped"]["pancreas"]
    assert reason == f"time budget: expected to end at {40 + expected:.1f} s (now 40.0 s + about {expected:.1f} s) of 50 s"
    assert info["time_budget"]["elapsed"] == 40.0


def test_stage_costs_carry_over_from_case_to_case():
    seg, tumors, _ = budgeted(25, 10, 30)
    liver, pancreas = crop_voxels(seg, LIVER), crop_voxels(seg, PANCREAS)
    first_guess = 10 / SCAN_VOXELS * FIRST_TUMOR_COST_FACTOR * liver
    _, info = run(seg)  # the first guess refuses the liver stage; the smaller pancreas crop fits and runs
    assert 10 + first_guess > 25 and info["tumor_stages_run"] == ["pancreas"]
    assert info["time_budget"]["skipped"]["liver"].startswith(f"time budget: expected to end at {10 + first_guess:.1f} s")
    assert seg.stage_costs.tumor_rates == {"pancreas": pytest.approx(30 / pancreas)}
    _, info = run(seg)  # now the liver is estimated at the pancreas stage's measured rate
    assert info["time_budget"]["skipped"]["liver"].startswith(f"time budget: expected to end at {10 + 30 / pancreas * liver:.1f} s")


def test_cost_model_and_budget_arithmetic():
    costs = StageCostModel()
    assert costs.tumor_seconds("liver", 1000) == 0.0
    costs.record_organ(10.0, 1000)
    assert costs.tumor_seconds("liver", 500) == pytest.approx(10.0 * FIRST_TUMOR_COST_FACTOR / 2)
    costs.record_tumor("liver", 4.0, 100)
    costs.record_tumor("pancreas", 1.0, 100)
    assert costs.tumor_seconds("pancreas", 50) == pytest.approx(0.5)  # its own rate
    assert costs.tumor_seconds("left_kidney", 50) == pytest.approx(2.0)  # the slowest measured stage's
    clock = FakeClock()
    budget = CaseBudget(None, clock)
    clock.now += 1e6
    assert budget.refusal(1e6) is None
    budget = CaseBudget(10, clock)
    assert budget.refusal(10.0) is None and budget.refusal(10.5) is not None


def test_implausible_organs_bound_their_tumor_stage(caplog):
    organs, volume = end_to_end_phantom()
    everywhere = np.where(organs == LIVER, LIVER, organs)
    everywhere[everywhere == 0] = LIVER  # the liver takes the whole scan, as on an image that is not CT
    seg, tumors, _ = budgeted(None, 1, 1, organs=everywhere)
    with caplog.at_level(logging.WARNING):
        _, info = run(seg)
    assert not tumors[LIVER].calls and info["tumor_stages_run"] == ["pancreas"]
    # 92 %: the aorta crop (2 slices short of each end) trims the liver
    assert info["tumor_stages_skipped"]["liver"] == "implausible organ: its box covers 92% of the scan (at most 50%)"
    assert any("tumor stage for liver skipped: implausible organ" in r.getMessage() for r in caplog.records)
    scattered = np.zeros(GEOMETRY.shape, bool)
    scattered[0:11:10, ::13, ::13] = True  # 32 specks over 46 % of the scan: the box is full, the organ is not
    assert "scattered" in implausible_organ(scattered)
    assert implausible_organ(organs == LIVER) is None and implausible_organ(organs == PANCREAS) is None


def test_budget_values_from_the_command_line_and_the_environment(monkeypatch, tmp_path):
    assert budget_from_environment({}) is None and budget_from_environment({"FLARE_CASE_TIME_BUDGET": " 90 "}) == 90.0
    for bad in ("0", "-5", "nan", "soon"):
        with pytest.raises(ValueError):
            positive_seconds(bad)
    monkeypatch.setenv("FLARE_CASE_TIME_BUDGET", "soon")
    assert main(["-i", str(tmp_path), "-o", str(tmp_path / "o")]) == EXIT_USAGE
    with pytest.raises(SystemExit):
        main(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "--case-time-budget", "0"])


def test_cli_writes_the_case_and_reports_what_the_budget_skipped(tmp_path, monkeypatch, caplog):
    """A real cascade (random networks) with a budget no organ stage can meet: written, flagged."""
    from tests.factories import make_model_folder
    from tests.test_robustness import ct, write
    from training.cascade_json_writer import write_cascade_json
    weights = tmp_path / "weights"
    make_model_folder(weights / "organ", seed=1, bias_class=1)
    make_model_folder(weights / "tumor_liver", labels={"background": 0, "tumor": 1}, seed=2)
    write_cascade_json(weights, organ_folder="organ", tumor_stages=[{"organ": 1, "folder": "tumor_liver", "needs_contrast": False}])
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(inputs / "A_0000.nii.gz", ct(seed=3))
    monkeypatch.setenv("FLARE_CASE_TIME_BUDGET", "1e-9")  # the container's way; the option would win
    with caplog.at_level(logging.WARNING):
        assert main(["-i", str(inputs), "-o", str(tmp_path / "out"), "--model", str(weights), "--no-progress"]) == EXIT_OK
    report = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert report["options"]["case_time_budget_s"] == 1e-9
    (case,) = report["cases"]
    assert case["status"] == "ok" and (tmp_path / "out" / "A.nii.gz").is_file()
    skipped = case["details"]["time_budget"]["skipped"]
    assert list(skipped) == ["liver"] and skipped["liver"].startswith("time budget spent")
    assert any(m.startswith("A: written without the tumor stage(s) liver (time budget spent")
               for m in (r.getMessage() for r in caplog.records))
