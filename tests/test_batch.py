"""Batches over many processes: shards cover every case exactly once, a killed part resumes with
`--continue` without rewriting finished cases, and the completeness check merges part reports.

The shard and kill tests run real `python -m inference` processes, as a job array would."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from inference.batch.completeness import main as completeness
from inference.batch.completeness import merge_parts
from inference.batch.shards import ShardError, select_part
from inference.app.cli import EXIT_OK, EXIT_USAGE, main
from inference.core.geometry import Geometry
from inference.io.images import Case, to_sitk
from tests.factories import make_model_folder

REPO = Path(__file__).resolve().parent.parent
LABELS = {"background": 0, "liver": 1, "spleen": 3}
CASE_IDS = ("case_c", "case_a", "case_b")  # written unsorted: parts follow sorted IDs


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model") / "m", labels=LABELS, bias_class=0)


def write_cases(folder: Path, ids=CASE_IDS, shape=(10, 40, 36), shapes=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, case_id in enumerate(ids):
        shape = (shapes or {}).get(case_id, shape)
        rng = np.random.default_rng(index)
        volume = (rng.normal(40, 30, shape) - 1000 * (rng.random(shape) < 0.3)).astype(np.int16)
        geometry = Geometry(shape, (2.5, 1.2, 1.1), (12.0, -40.0, 7.5 + index))
        sitk.WriteImage(to_sitk(volume, geometry), str(folder / f"{case_id}_0000.nii.gz"))
    return folder


def engine(inputs, outputs, model, *extra) -> list[str]:
    return [sys.executable, "-m", "inference", "-i", str(inputs), "-o", str(outputs), "--model", str(model),
            "--no-progress", *[str(e) for e in extra]]


def labels_of(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def batch_section(report: Path) -> dict:
    return json.loads(report.read_text())["batch"]


def test_parts_follow_nnunets_convention():
    cases = [Case(case_id, Path(case_id)) for case_id in ("e", "b", "a", "d", "c", "g", "f")]
    for num_parts in range(1, len(cases) + 1):
        parts = [[c.case_id for c in select_part(cases, num_parts, k)] for k in range(num_parts)]
        assert sorted(sum(parts, [])) == list("abcdefg")  # every case once
        assert parts == [sorted("abcdefg")[k::num_parts] for k in range(num_parts)]  # nnU-Net's part_id::num_parts
    for num_parts, part_id in ((0, 0), (2, 2), (3, -1)):
        with pytest.raises(ShardError):
            select_part(cases, num_parts, part_id)


def test_bad_shard_options_are_usage_errors(tmp_path, model):
    inputs = write_cases(tmp_path / "in", ids=("a",))
    for bad in (["--num-parts", "2", "--part-id", "2"], ["--num-parts", "0"], ["--part-id", "-1"]):
        assert main(engine(inputs, tmp_path / "out", model, *bad)[3:]) == EXIT_USAGE
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_shards_as_separate_processes_cover_every_case_exactly_once(tmp_path, model):
    inputs = write_cases(tmp_path / "in")
    reference = None
    for num_parts in range(1, len(CASE_IDS) + 1):
        outputs = tmp_path / f"out_{num_parts}"
        processes = [subprocess.Popen(engine(inputs, outputs, model, "--num-parts", num_parts, "--part-id", k),
                                      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                     for k in range(num_parts)]
        for process in processes:
            assert process.wait(timeout=300) == 0, process.stderr.read().decode()[-2000:]
        reports = sorted(outputs.glob("run_report*.json"))
        assert len(reports) == num_parts
        done = [case for report in reports for case in batch_section(report)["done"]]
        assert sorted(done) == sorted(CASE_IDS)  # each case run by exactly one part
        labels = labels_of(outputs)
        reference = reference or labels
        assert labels.keys() == reference.keys() == {f"{c}.nii.gz" for c in CASE_IDS}
        assert all(np.array_equal(labels[name], reference[name]) for name in labels)
        assert completeness(["-i", str(inputs), "-o", str(outputs), "--reports", *map(str, reports)]) == 0


def test_completeness_names_missing_cases_and_parts(tmp_path, model, capsys):
    inputs = write_cases(tmp_path / "in")
    outputs = tmp_path / "out"
    assert main(engine(inputs, outputs, model, "--num-parts", 2, "--part-id", 1)[3:]) == EXIT_OK
    report = outputs / "run_report.part-1-of-2.json"
    capsys.readouterr()
    assert completeness(["-i", str(inputs), "-o", str(outputs), "--reports", str(report)]) == 1
    printed = capsys.readouterr().out
    assert "1 of 3 case(s) complete" in printed
    assert "MISSING case_a: no output" in printed and "MISSING case_c: no output" in printed
    assert "parts without a report: [0]" in printed


def test_merge_keeps_failure_causes_and_counts_skipped_as_complete():
    sections = [{"num_parts": 2, "part_id": 0, "done": ["a"], "skipped": [], "failed": {"c": "empty file"},
                 "seconds": 1.0, "peak_rss_mb": 10.0},
                {"num_parts": 2, "part_id": 1, "done": [], "skipped": ["b"], "failed": {}, "seconds": 0.1,
                 "peak_rss_mb": 5.0}]
    merged = merge_parts(["a", "b", "c"], sections, {"a": None, "b": None, "c": "no output"})
    assert merged["complete"] == 2 and merged["missing"] == {"c": "no output; last run failed: empty file"}
    assert merged["parts_without_report"] == []


def test_killed_part_resumed_with_continue_writes_each_case_once_with_identical_labels(tmp_path, model):
    ids = [f"k{i}" for i in range(6)]
    # part 0 runs k0, k2, k4; k4 is large, so a kill after the first output always falls before it ends
    inputs = write_cases(tmp_path / "in", ids=ids, shapes={"k4": (32, 100, 90)})
    part = ["--num-parts", 2, "--part-id", 0]
    mine = [f"{case}.nii.gz" for case in sorted(ids)[0::2]]
    outputs = tmp_path / "out"
    process = subprocess.Popen(engine(inputs, outputs, model, *part), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any((outputs / name).exists() for name in mine) and time.monotonic() < deadline:
        assert process.poll() is None, "the part finished before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    finished = {name: os.stat(outputs / name) for name in mine if (outputs / name).exists()}
    assert 0 < len(finished) < len(mine)  # killed mid-batch

    subprocess.run(engine(inputs, outputs, model, *part, "--continue"), cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    batch = batch_section(outputs / "run_report.part-0-of-2.json")
    assert sorted(batch["skipped"]) == sorted(name.removesuffix(".nii.gz") for name in finished)
    assert sorted(batch["done"] + batch["skipped"]) == sorted(ids)[0::2] and batch["complete"]
    for name, before in finished.items():  # not rewritten
        after = os.stat(outputs / name)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(os.listdir(outputs)) == sorted(mine + ["run_report.part-0-of-2.json"])  # no partial files

    uninterrupted = tmp_path / "uninterrupted"
    subprocess.run(engine(inputs, uninterrupted, model, *part), cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed, reference = labels_of(outputs), labels_of(uninterrupted)
    assert resumed.keys() == reference.keys() == set(mine)
    assert all(np.array_equal(resumed[name], reference[name]) for name in mine)


def test_continue_redoes_outputs_that_are_not_finished_label_maps(tmp_path, model):
    inputs = write_cases(tmp_path / "in", ids=("case_a", "case_b", "case_c", "case_d"))
    outputs = tmp_path / "out"
    assert main(engine(inputs, outputs, model)[3:]) == EXIT_OK
    original = labels_of(outputs)
    data = (outputs / "case_a.nii.gz").read_bytes()
    (outputs / "case_a.nii.gz").write_bytes(data[: len(data) // 2])  # truncated
    wrong = Geometry((10, 40, 36), (2.5, 1.2, 1.1), (99.0, -40.0, 7.5))  # another scan's origin
    sitk.WriteImage(to_sitk(np.zeros((10, 40, 36), np.uint8), wrong), str(outputs / "case_b.nii.gz"))
    good = Geometry((10, 40, 36), (2.5, 1.2, 1.1), (12.0, -40.0, 9.5))
    sitk.WriteImage(to_sitk(np.zeros((10, 40, 36), np.float32), good), str(outputs / "case_c.nii.gz"))
    with gzip.open(outputs / "case_c.nii.gz", "rb") as handle:
        assert handle.read(1)  # a valid file, just not a label map
    assert main(engine(inputs, outputs, model, "--continue")[3:]) == EXIT_OK
    batch = batch_section(outputs / "run_report.json")
    assert batch["skipped"] == ["case_d"]
    assert sorted(batch["done"]) == ["case_a", "case_b", "case_c"]
    assert "unreadable" in batch["redone"]["case_a"]
    assert "origin" in batch["redone"]["case_b"]
    assert "pixel type" in batch["redone"]["case_c"]
    resumed = labels_of(outputs)
    assert all(np.array_equal(resumed[name], original[name]) for name in original)


def test_continue_on_a_finished_batch_loads_no_model(tmp_path, model):
    inputs = write_cases(tmp_path / "in", ids=("a", "b"))
    outputs = tmp_path / "out"
    assert main(engine(inputs, outputs, model)[3:]) == EXIT_OK
    probe = ("import sys; from inference.app.cli import main; "
             f"code = main({[str(a) for a in engine(inputs, outputs, model, '--continue')[3:]]!r}); "
             "print(code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["0", "False"]
    assert batch_section(outputs / "run_report.json")["skipped"] == ["a", "b"]
