"""Resource harness on trivial commands: RSS, wall time, outputs, failures, timeouts, fake GPU."""
import csv
import json
import shlex
import sys
import time

import pytest
from matplotlib.image import imread

from evaluation import harness
from evaluation.harness import RESOURCE_COLUMNS, main, run_harness
from evaluation.monitoring import GpuMemoryProbe, area_under_curve

# Allocates ~120 MiB (bytes(n) * 1 touches every page), holds it briefly, copies the input to
# OUTPUT/<case>.nii.gz, and fails with exit code 3 for the case named "broken".
WORKER = """
import pathlib, shutil, sys, time
input_dir, output_dir, case = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
block = b"x" * (120 * 2 ** 20)
time.sleep(0.4)
if case == "broken":
    sys.exit(3)
source = next(input_dir.iterdir())
shutil.copy(source, output_dir / (case + ".nii.gz"))
"""
COMMAND = f"{shlex.quote(sys.executable)} -c {shlex.quote(WORKER)} {{input}} {{output}} {{case}}"


@pytest.fixture()
def inputs(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for case_id in ("alpha", "broken"):
        (folder / f"{case_id}_0000.nii.gz").write_bytes(b"not really an image")
    return folder


@pytest.fixture()
def no_gpu(monkeypatch):
    monkeypatch.setattr(harness.GpuMemoryProbe, "open", classmethod(lambda cls, index: None))


def test_harness_measures_and_records_failures(inputs, tmp_path, no_gpu):
    out = tmp_path / "out"
    results = {r.case: r for r in run_harness(COMMAND, inputs, out)}
    ok, broken = results["alpha"], results["broken"]
    assert (ok.status, ok.exit_code, ok.output_written) == ("ok", 0, True)
    assert (broken.status, broken.exit_code, broken.output_written) == ("failed", 3, False)
    for result in (ok, broken):
        assert result.wall_s >= 0.4
        assert result.rss_max_mb > 100  # the 120 MiB block
        assert result.rss_auc_mb_s > 0.4 * 100 * 0.5
        assert result.gpu_max_mb is None and result.gpu_auc_mb_s is None
        assert result.samples >= 4
    assert (out / "predictions" / "alpha.nii.gz").read_bytes() == b"not really an image"

    with open(out / "resources.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == RESOURCE_COLUMNS
        rows = {row["case"]: row for row in reader}
    assert rows["alpha"]["gpu_max_mb"] == "" and rows["alpha"]["gpu_auc_mb_s"] == ""
    assert rows["broken"]["exit_code"] == "3" and rows["broken"]["status"] == "failed"
    assert float(rows["alpha"]["wall_s"]) == pytest.approx(ok.wall_s)

    document = json.loads((out / "resources.json").read_text())
    assert document["gpu"]["available"] is False
    assert document["summary"]["failed"] == ["broken"]
    assert [case["case"] for case in document["cases"]] == ["alpha", "broken"]
    for case_id in ("alpha", "broken"):
        picture = imread(out / "plots" / f"{case_id}.png")
        assert picture.shape[0] > 200 and picture.shape[1] > 400
        assert (out / "logs" / f"{case_id}.log").read_text().startswith("$ ")
    assert not (out / ".staging").exists()


def test_cli_exit_code_reflects_failures(inputs, tmp_path, no_gpu, capsys):
    (inputs / "broken_0000.nii.gz").unlink()
    assert main(["--cmd", COMMAND, "--inputs", str(inputs), "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
    failing = f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(7)'"
    assert main(["--cmd", failing, "--inputs", str(inputs), "--out", str(tmp_path / "bad"), "--no-progress"]) == 1
    assert "1 failed: alpha" in capsys.readouterr().out


def test_timeout_kills_the_process_tree(inputs, tmp_path, no_gpu):
    (inputs / "broken_0000.nii.gz").unlink()
    sleeper = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(30)'"
    started = time.perf_counter()
    (result,) = run_harness(sleeper, inputs, tmp_path / "out", timeout_s=0.5)
    assert time.perf_counter() - started < 10
    assert result.status == "timeout" and result.exit_code != 0


class FakeGpu:
    """Stands in for NVML: a constant 500 MiB in use on the device."""
    name = "fake"

    def used_mb(self):
        return 500.0

    def close(self):
        pass


def test_gpu_columns_filled_when_a_probe_exists(inputs, tmp_path, monkeypatch):
    (inputs / "broken_0000.nii.gz").unlink()
    monkeypatch.setattr(harness.GpuMemoryProbe, "open", classmethod(lambda cls, index: FakeGpu()))
    (result,) = run_harness(COMMAND, inputs, tmp_path / "out")
    assert result.gpu_max_mb == 500.0
    assert result.gpu_auc_mb_s == pytest.approx(500.0 * result.wall_s, rel=0.01)
    assert json.loads((tmp_path / "out" / "resources.json").read_text())["gpu"]["name"] == "fake"


def test_probe_absent_without_nvml():
    probe = GpuMemoryProbe.open(0)
    if probe is not None:
        probe.close()
        pytest.skip("this machine has an NVML GPU")
    assert probe is None


def test_area_under_curve():
    assert area_under_curve([0.0, 1.0, 3.0], [10.0, 20.0, 20.0]) == 55.0
    assert area_under_curve([0.0], [5.0]) == 0.0
