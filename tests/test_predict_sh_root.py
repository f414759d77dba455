"""predict.sh started as root, as the organisers start the container: the engine runs without
privileges into a staging folder, and the finished files are handed over into the outputs folder
with the folder owner's uid:gid and mode 0644, whoever owns it.

The engine here is a stand-in shell script that records who runs it and writes one file into its
-o folder: the subject is predict.sh's privilege drop and hand-over (the engine itself is tested
by test_predict_sh.py and, inside the image, by docker/test_image.sh). Needs root and setpriv."""
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_predict_sh import PYTHON, SCRIPT, predict, write_ct

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and util-linux setpriv")
OTHER = 4321  # a uid:gid that no account holds
NOBODY = int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout or 65534)

FAKE_ENGINE = """#!/bin/sh
# Stands in for python: records who runs it, tries the outputs mount, writes its -o folder.
log={log}
{{ echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"; grep -E '^(CapPrm|CapEff|NoNewPrivs)' /proc/self/status; }} > "$log/who"
echo "$HOME" > "$log/home"
while [ $# -gt 0 ]; do case $1 in -o) out=$2; shift;; --report) report=$2; shift;; esac; shift; done
echo "$out" > "$log/out"
touch "$MOUNTED_OUTPUTS/direct" 2>/dev/null && rm "$MOUNTED_OUTPUTS/direct" && echo yes > "$log/direct"
printf 'labels' > "$out/A.nii.gz"
printf 'table' > "$out/B.nii.gz"
echo '{{}}' > "$report"
touch "$log/written"
[ -z "${{FAKE_SLEEP:-}}" ] || exec sleep 60
exit "${{FAKE_EXIT:-0}}"
"""


@pytest.fixture
def world(tmp_path):
    """A folder every uid can traverse (pytest's own tmp folders are root-only), with the fake engine."""
    root = Path(tempfile.mkdtemp(prefix="predict-root-", dir="/tmp"))
    root.chmod(0o755)
    log = root / "log"
    log.mkdir()
    log.chmod(0o1777)
    engine = root / "python"
    engine.write_text(FAKE_ENGINE.format(log=log))
    engine.chmod(0o755)
    (root / "inputs").mkdir()
    yield root
    shutil.rmtree(root)


def run_as_root(world, outputs, **env):
    defaults = dict(INPUT_DIR=world / "inputs", OUTPUT_DIR=outputs, PYTHON=world / "python", RUN_AS_ROOT=0,
                    PREDICT_USER="nobody", MOUNTED_OUTPUTS=outputs, REPORT_PATH=world / "log" / "report.json")
    return predict("sh", world, **{**defaults, **env})


def record(world, name):
    return (world / "log" / name).read_text().strip()


def make_outputs(world, owner, mode=0o755):
    outputs = world / "outputs"
    outputs.mkdir()
    os.chown(outputs, owner, owner)
    outputs.chmod(mode)
    return outputs


@pytest.mark.parametrize("case", ["missing", "root 755", "other uid 755", "other uid 700"])
def test_outputs_belong_to_the_folders_owner_whoever_it_is(world, case):
    owner = 0 if case in ("missing", "root 755") else OTHER
    outputs = world / "outputs" if case == "missing" else make_outputs(world, owner, int(case[-3:], 8))
    result = run_as_root(world, outputs, REPORT_PATH=world / "log" / "report.json")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(outputs)) == ["A.nii.gz", "B.nii.gz"]
    for name, content in (("A.nii.gz", b"labels"), ("B.nii.gz", b"table")):
        status = (outputs / name).stat()
        assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (owner, owner, 0o644)
        assert (outputs / name).read_bytes() == content
    engine_uid = owner or NOBODY
    assert record(world, "who").splitlines()[0].startswith(f"uid={engine_uid} ")
    who = record(world, "who")
    assert "CapPrm:\t0000000000000000" in who and "CapEff:\t0000000000000000" in who and "NoNewPrivs:\t1" in who
    assert not record(world, "out").startswith(str(outputs))  # a staging folder, not the mount
    assert record(world, "home") != "/root"
    assert not (world / "log" / "direct").exists() or owner == engine_uid  # root's folder stays root's
    assert (world / "log" / "report.json").read_text().strip() == "{}"
    assert f"owner {owner}:{owner}, mode 0644" in result.stderr


def test_the_engine_never_gets_roots_group(world):
    outputs = world / "outputs"
    outputs.mkdir()
    os.chown(outputs, OTHER, 0)
    assert run_as_root(world, outputs).returncode == 0
    assert record(world, "who").splitlines()[0] == f"uid={OTHER} gid=65534 groups=65534"
    assert (outputs / "A.nii.gz").stat().st_gid == 0  # the hand-over still copies the folder's group


@pytest.mark.parametrize("code", [1, 2, 3])
def test_the_engines_exit_code_and_its_finished_files_pass_through(world, code):
    outputs = make_outputs(world, OTHER)
    result = run_as_root(world, outputs, FAKE_EXIT=code)
    assert result.returncode == code
    assert sorted(os.listdir(outputs)) == ["A.nii.gz", "B.nii.gz"]


def test_a_stale_partial_is_removed_and_an_old_output_replaced(world):
    outputs = make_outputs(world, OTHER)
    (outputs / ".A.partial-77.nii.gz").write_bytes(b"half")
    (outputs / "A.nii.gz").write_bytes(b"old")
    result = run_as_root(world, outputs)
    assert result.returncode == 0
    assert sorted(os.listdir(outputs)) == ["A.nii.gz", "B.nii.gz"]
    assert (outputs / "A.nii.gz").read_bytes() == b"labels" and (outputs / "A.nii.gz").stat().st_uid == OTHER
    assert "removed a partial output" in result.stderr


def test_read_only_outputs_mount_exits_3_with_the_engines_message(world):
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare for a private read-only bind mount")
    outputs = make_outputs(world, OTHER)
    mount = (f'mount --bind "{outputs}" "{outputs}" && mount -o remount,ro,bind "{outputs}" '
             f'&& exec sh "{SCRIPT}"')
    env = {k: v for k, v in os.environ.items() if k not in ("RUN_AS_ROOT", "REPORT_PATH", "MODEL_DIR")}
    env.update(INPUT_DIR=str(world / "inputs"), OUTPUT_DIR=str(outputs), PYTHON=str(world / "python"),
               PREDICT_USER="nobody", MOUNTED_OUTPUTS=str(outputs))
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", mount],
                            env=env, capture_output=True, text=True, timeout=60)
    if "mount" in result.stderr and result.returncode not in (0, 3):
        pytest.skip(f"no private mount here: {result.stderr.strip()}")
    assert result.returncode == 3
    assert f"{outputs}: output folder not writable (Read-only file system)" in result.stderr
    assert not (world / "log" / "who").exists()  # the engine never started
    assert os.listdir(outputs) == []


def test_docker_stop_still_hands_over_the_finished_cases(world):
    """SIGTERM (docker stop, a time limit) stops the engine; what it finished reaches the outputs."""
    outputs = make_outputs(world, OTHER)
    env = {k: v for k, v in os.environ.items() if k not in ("RUN_AS_ROOT", "REPORT_PATH", "MODEL_DIR")}
    env.update(INPUT_DIR=str(world / "inputs"), OUTPUT_DIR=str(outputs), PYTHON=str(world / "python"),
               PREDICT_USER="nobody", MOUNTED_OUTPUTS=str(outputs), FAKE_SLEEP="1")
    process = subprocess.Popen(["sh", str(SCRIPT)], env=env, stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # until the engine has written its files (synchronisation, not a timing)
        if (world / "log" / "written").exists() or process.poll() is not None:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert sorted(os.listdir(outputs)) == ["A.nii.gz", "B.nii.gz"]
    assert (outputs / "A.nii.gz").stat().st_uid == OTHER


def test_real_engine_as_another_uid(world):
    """The real engine through the hand-over, where the interpreter is reachable by other users."""
    python = str(PYTHON if PYTHON.exists() else shutil.which("python3"))
    reachable = subprocess.run(["setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups", "env", python,
                                "-c", "import numpy, torch, SimpleITK"], capture_output=True)
    if reachable.returncode != 0:
        pytest.skip(f"{python} cannot be run by uid {OTHER} here (a folder on its path is private)")
    from inference.core.labels import ORGAN_MODEL_LABELS
    from tests.factories import make_model_folder
    from training.cascade_json_writer import write_cascade_json
    make_model_folder(world / "weights" / "organ", labels=ORGAN_MODEL_LABELS, seed=1)
    write_cascade_json(world / "weights", organ_folder="organ")
    subprocess.run(["chmod", "-R", "a+rX", str(world)], check=True)
    write_ct(world / "inputs" / "A_0000.nii.gz", seed=1)
    (world / "inputs" / "A_0000.nii.gz").chmod(0o644)
    outputs = make_outputs(world, OTHER)
    result = run_as_root(world, outputs, PYTHON=python, MODEL_DIR=world / "weights")
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.listdir(outputs) == ["A.nii.gz"] and (outputs / "A.nii.gz").stat().st_uid == OTHER
