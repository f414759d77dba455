"""`python -m training` refuses bad inputs before any work starts: one line naming the cause, exit 2."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from training.__main__ import main
from training.cli_checks import UsageError, check_devices


@pytest.fixture(autouse=True)
def _keep_threads(monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the CLI configures the process; not here


def write(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.asarray(values)), str(path))


def flare_folder(root, cases=("a", "b")):
    for case in cases:
        write(root / "imagesTr" / f"{case}_0000.nii.gz", np.zeros((4, 5, 6), np.int16))
        write(root / "labelsTr" / f"{case}.nii.gz", np.ones((4, 5, 6), np.uint8) * 3)
    return root


def run_cli(tmp_path, capsys, *options, preset="smoke", data=None):
    code = main(["--preset", preset, "--data", str(data or tmp_path / "data"), "--work", str(tmp_path / "w"),
                 "--weights", str(tmp_path / "x"), *options])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    assert not (tmp_path / "w").exists() and not (tmp_path / "x").exists()  # nothing started
    return code, err[0]


def test_missing_data_folder(tmp_path, capsys):
    code, line = run_cli(tmp_path, capsys)
    assert code == 2 and "folder does not exist" in line and str(tmp_path / "data") in line


def test_wrong_layout(tmp_path, capsys):
    write(tmp_path / "data" / "images" / "a_0000.nii.gz", np.zeros((4, 5, 6), np.int16))
    code, line = run_cli(tmp_path, capsys)
    assert code == 2 and "FLARE23 layout" in line and "'images'" in line


def test_images_without_labels(tmp_path, capsys):
    data = flare_folder(tmp_path / "data")
    (data / "labelsTr" / "b.nii.gz").unlink()
    code, line = run_cli(tmp_path, capsys)
    assert code == 2 and "without a label in labelsTr/" in line and "b_0000.nii.gz" in line


def test_labels_with_unknown_values(tmp_path, capsys):
    data = flare_folder(tmp_path / "data")
    write(data / "labelsTr" / "b.nii.gz", np.array([[[0, 3, 15], [255, 1, 1]]] * 2, np.uint8))
    code, line = run_cli(tmp_path, capsys)
    assert code == 2 and line.endswith("b.nii.gz: label values 15, 255 outside FLARE's 0..14")


def test_preset_without_synthetic_data_and_make_data(tmp_path, capsys):
    code, line = run_cli(tmp_path, capsys, "--make-data", preset="paper")
    assert code == 2 and "--preset paper has no synthetic dataset" in line


def test_num_gpus_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    data = flare_folder(tmp_path / "data")
    code, line = run_cli(tmp_path, capsys, "--device", "cuda", "--num-gpus", "2", data=data)
    assert code == 2 and "torch sees no CUDA device" in line


def test_device_rules():
    check_devices("cuda", 2, 2)
    check_devices("cpu", 1, 0)
    with pytest.raises(UsageError, match="only 1 CUDA device"):
        check_devices("cuda", 2, 1)
    with pytest.raises(UsageError, match="needs --device cuda"):
        check_devices("cpu", 2, 4)
