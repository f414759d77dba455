"""The scheduler recipes of docs/BATCH.md, run as far as a machine without Slurm or Kubernetes can:
the Slurm array script's task arithmetic and command (dry run), then every array task for real with
predict.sh of this repository; the Indexed Job's fields, then its pod command for every index."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inference.batch.completeness import main as completeness
from tests.test_batch import CASE_IDS, LABELS, write_cases
from tests.factories import make_model_folder

REPO = Path(__file__).resolve().parent.parent
SBATCH = REPO / "docs" / "batch" / "slurm_array.sbatch"
INDEXED_JOB = REPO / "docs" / "batch" / "k8s_indexed_job.yaml"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model") / "m", labels=LABELS, bias_class=0)


def sbatch(env: dict, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SBATCH)], env={"PATH": os.environ["PATH"], **env, **extra},
                          capture_output=True, text=True, timeout=300)


def test_slurm_task_becomes_the_part_in_the_container_command(tmp_path):
    env = {"INPUT_DIR": str(tmp_path / "in"), "OUTPUT_DIR": str(tmp_path / "out"), "DRY_RUN": "1",
           "SLURM_ARRAY_TASK_COUNT": "4", "CONTAINER_IMAGE": "img.sif"}
    result = sbatch(env, SLURM_ARRAY_TASK_ID="3")
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout)
    assert command[:3] == ["apptainer", "exec", "--nv"] and "img.sif" in command
    assert command[command.index("img.sif") + 1:] == ["sh", "/workspace/predict.sh", "--num-parts", "4",
                                                      "--part-id", "3", "--continue"]
    assert f"{tmp_path / 'in'}:/workspace/inputs:ro" in command
    assert "REPORT_PATH=/workspace/reports/part-3-of-4.json" in command
    assert sbatch(env, SLURM_ARRAY_TASK_ID="4").returncode == 2  # an array larger than the parts
    missing = sbatch({k: v for k, v in env.items() if k != "SLURM_ARRAY_TASK_COUNT"}, SLURM_ARRAY_TASK_ID="0")
    assert missing.returncode != 0 and "NUM_PARTS" in missing.stderr


def test_slurm_array_tasks_run_predict_sh_and_complete_the_batch(tmp_path, model):
    inputs = write_cases(tmp_path / "in")
    # RUN_AS_ROOT=1: predict.sh runs the engine in place, as it does for the user Apptainer runs as
    env = {"INPUT_DIR": str(inputs), "OUTPUT_DIR": str(tmp_path / "out"), "CONTAINER_IMAGE": "none",
           "SLURM_ARRAY_TASK_COUNT": "2", "PYTHON": sys.executable, "MODEL_DIR": str(model), "RUN_AS_ROOT": "1"}
    for task in range(2):
        result = sbatch(env, SLURM_ARRAY_TASK_ID=str(task))
        assert result.returncode == 0, result.stderr[-2000:]
    reports = sorted((tmp_path / "reports").glob("part-*-of-2.json"))
    assert [r.name for r in reports] == ["part-0-of-2.json", "part-1-of-2.json"]
    done = [c for r in reports for c in json.loads(r.read_text())["batch"]["done"]]
    assert sorted(done) == sorted(CASE_IDS)
    assert completeness(["-i", str(inputs), "-o", str(tmp_path / "out"), "--reports", *map(str, reports)]) == 0


def indexed_job() -> dict:
    return yaml.safe_load(INDEXED_JOB.read_text())


def test_indexed_job_fields_agree_with_its_command():
    job = indexed_job()
    spec = job["spec"]
    assert (job["apiVersion"], job["kind"], spec["completionMode"]) == ("batch/v1", "Job", "Indexed")
    container = spec["template"]["spec"]["containers"][0]
    script = container["args"][0]
    assert f"--num-parts {spec['completions']} " in script and spec["parallelism"] == spec["completions"]
    assert '--part-id "$JOB_COMPLETION_INDEX" --continue' in script
    assert f"-of-{spec['completions']}.json" in script
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    security = spec["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0  # predict.sh then writes in place
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/workspace/inputs"]["readOnly"] and "/workspace/outputs" in mounts


def test_indexed_job_pod_command_for_every_index_completes_the_batch(tmp_path, model):
    """The pod's shell command as written, with the image's paths pointed at this repository and at
    temporary folders, and 2 parts instead of 16; RUN_AS_ROOT=1 stands for the pod's non-root user
    (predict.sh runs the engine in place)."""
    job = indexed_job()
    container = job["spec"]["template"]["spec"]["containers"][0]
    parts = job["spec"]["completions"]
    script = (container["args"][0].replace("/workspace/predict.sh", str(REPO / "predict.sh"))
              .replace("/workspace/reports", str(tmp_path / "reports"))
              .replace(f"--num-parts {parts} ", "--num-parts 2 ").replace(f"-of-{parts}.json", "-of-2.json"))
    inputs = write_cases(tmp_path / "in")
    (tmp_path / "reports").mkdir()
    for index in range(2):
        env = {**os.environ, "JOB_COMPLETION_INDEX": str(index), "INPUT_DIR": str(inputs),
               "OUTPUT_DIR": str(tmp_path / "out"), "PYTHON": sys.executable, "MODEL_DIR": str(model),
               "RUN_AS_ROOT": "1"}
        result = subprocess.run([*container["command"], script], env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    reports = sorted((tmp_path / "reports").glob("*.json"))
    assert completeness(["-i", str(inputs), "-o", str(tmp_path / "out"), "--reports", *map(str, reports)]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{c}.nii.gz" for c in CASE_IDS)
