"""predict.sh, the container's entry point, run with a POSIX sh (dash) against temporary folders."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from inference.core.geometry import Geometry
from inference.io.images import to_sitk
from inference.core.labels import ORGAN_MODEL_LABELS
from tests.factories import make_model_folder

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "predict.sh"
PYTHON = REPO / ".venv" / "bin" / "python"
# dash first (what `sh` is on Debian and Ubuntu); `sh` too where it is another shell.
SHELLS = list({os.path.realpath(shutil.which(shell)): shell for shell in ("sh", "dash") if shutil.which(shell)}.values())[::-1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from training.cascade_json_writer import write_cascade_json
    root = tmp_path_factory.mktemp("weights")
    make_model_folder(root / "organ", labels=ORGAN_MODEL_LABELS, seed=1)
    write_cascade_json(root, organ_folder="organ")
    return root


def write_ct(path, shape=(8, 32, 30), seed=0):
    rng = np.random.default_rng(seed)
    volume = np.clip(rng.normal(40, 30, shape) - 1000 * (rng.random(shape) < 0.3), -1024, 3071).astype(np.int16)
    sitk.WriteImage(to_sitk(volume, Geometry(shape, (2.5, 1.5, 1.5), (1.0, 2.0, 3.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))),
                    str(path))


def predict(shell, cwd, **env):
    """predict.sh as the caller; as root, in place (RUN_AS_ROOT=1) unless the test asks for the hand-over."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("INPUT_DIR", "OUTPUT_DIR", "MODEL_DIR", "REPORT_PATH", "RUN_AS_ROOT", "PREDICT_USER")}
    environment["RUN_AS_ROOT"] = "1"
    environment.update({k: str(v) for k, v in env.items()})
    environment.setdefault("PYTHON", str(PYTHON) if PYTHON.exists() else "python")
    return subprocess.run([shell, str(SCRIPT)], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("shell", SHELLS)
def test_script_is_posix_sh(shell):
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")
    assert subprocess.run([shell, "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.parametrize("code", [0, 1, 3])
def test_default_paths_and_the_engines_exit_code(tmp_path, code):
    """Without overrides: /workspace/inputs -> /workspace/outputs, the report outside the outputs folder."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/args"\necho "$PYTHONPATH" > "{tmp_path}/pythonpath"\n'
                    f"exit {code}\n")
    fake.chmod(0o755)
    result = predict(SHELLS[0], tmp_path, PYTHON=fake)
    assert result.returncode == code
    args = (tmp_path / "args").read_text().split("\n")[:-1]
    assert args == ["-m", "inference", "-i", "/workspace/inputs", "-o", "/workspace/outputs",
                    "--report", "/tmp/run_report.json", "--no-progress"]
    assert (tmp_path / "pythonpath").read_text().split(":")[0].strip() == str(REPO)  # finds inference/ from any cwd


@pytest.mark.parametrize("shell", SHELLS)
def test_end_to_end_outputs_hold_only_label_maps(tmp_path, weights, shell):
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    write_ct(inputs / "A_0000.nii.gz", seed=1)
    write_ct(inputs / "B_0000.nii.gz", shape=(1, 20, 24), seed=2)
    report = tmp_path / "elsewhere" / "report.json"
    result = predict(shell, tmp_path, INPUT_DIR=inputs, OUTPUT_DIR=outputs, MODEL_DIR=weights, REPORT_PATH=report)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(outputs)) == ["A.nii.gz", "B.nii.gz"]
    assert json.loads(report.read_text())["summary"]["ok"] == 2
    for case_id in ("A", "B"):
        written, source = sitk.ReadImage(str(outputs / f"{case_id}.nii.gz")), sitk.ReadImage(str(inputs / f"{case_id}_0000.nii.gz"))
        assert written.GetSize() == source.GetSize() and written.GetDirection() == source.GetDirection()


def test_a_failed_case_makes_the_exit_code_non_zero(tmp_path, weights):
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    write_ct(inputs / "A_0000.nii.gz")
    (inputs / "B_0000.nii.gz").write_bytes(b"not a scan")
    result = predict(SHELLS[0], tmp_path, INPUT_DIR=inputs, OUTPUT_DIR=outputs, MODEL_DIR=weights,
                     REPORT_PATH=tmp_path / "r.json")
    assert result.returncode == 1
    assert os.listdir(outputs) == ["A.nii.gz"]
    assert "B_0000.nii.gz" in result.stderr


def test_usage_and_fatal_exit_codes(tmp_path, weights):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict(SHELLS[0], tmp_path, INPUT_DIR=empty, OUTPUT_DIR=tmp_path / "o1", MODEL_DIR=weights,
                   REPORT_PATH=tmp_path / "r.json").returncode == 2
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_ct(inputs / "A_0000.nii.gz")
    result = predict(SHELLS[0], tmp_path, INPUT_DIR=inputs, OUTPUT_DIR=tmp_path / "o2", MODEL_DIR=tmp_path / "no_weights",
                     REPORT_PATH=tmp_path / "r.json")
    assert result.returncode == 3
    assert not (tmp_path / "o2" / "A.nii.gz").exists()
