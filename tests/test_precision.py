"""`--precision auto`: per-model resolution, the agreement record that guards it, and the run report."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from inference.engine import precision
from inference.app.cli import EXIT_FATAL, EXIT_OK, main
from inference.engine.runner import EngineOptions, ModelRunner
from inference.core.geometry import Geometry
from inference.io.images import to_sitk
from inference.cascade.cascade_json import MANIFEST_NAME, ManifestError, load_manifest
from inference.engine.model import load_model
from inference.engine.precision import resolve_precision
from inference.app.segmenters import build_segmenter
from tests.factories import make_model_folder
from training.cascade_json_writer import write_cascade_json
from training.precision_agreement import PooledAgreement, record_agreement

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def bf16_units(monkeypatch):
    """Set whether the (mocked) CPU has bf16 units."""
    def set_units(present: bool):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: present)
    return set_units


@pytest.fixture(scope="module")
def cascade_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade") / "weights"
    make_model_folder(root / "organ", bias_class=0)
    make_model_folder(root / "tumor_liver", labels={"background": 0, "tumor": 1}, bias_class=0)
    write_cascade_json(root, organ_folder="organ", tumor_stages=[{"organ": 1, "folder": "tumor_liver"}])
    return root


def with_agreement(root, tmp_path, records: dict):
    """A copy of the cascade folder whose cascade.json records these agreements."""
    import shutil
    copy = tmp_path / "weights"
    shutil.copytree(root, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["precision_agreement"] = {"models": {k: {"bf16_vs_fp32_mean_dice": v} for k, v in records.items()}}
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    return copy


def write_case(path, shape=(10, 40, 36)):
    rng = np.random.default_rng(0)
    image = (rng.normal(40, 30, shape) - 1000 * (rng.random(shape) < 0.3)).astype(np.int16)
    sitk.WriteImage(to_sitk(image, Geometry(shape, (2.5, 1.2, 1.1), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))),
                    str(path))
    return path


def test_auto_on_cuda_is_fp16_whatever_the_record(bf16_units):
    bf16_units(True)
    for agreement in (None, 0.5, 1.0):
        assert resolve_precision("auto", CUDA, agreement).precision == "fp16"


def test_auto_on_a_cpu_with_bf16_units(bf16_units):
    bf16_units(True)
    plain = resolve_precision("auto", CPU, None)  # no record: a plain nnU-Net folder
    assert plain.precision == "bf16" and "no recorded" in plain.reason and not plain.fell_back
    assert resolve_precision("auto", CPU, 0.99).precision == "bf16"
    low = resolve_precision("auto", CPU, 0.9899)
    assert low.precision == "fp32" and low.fell_back and "0.9899 is below 0.99" in low.reason


def test_auto_on_a_cpu_without_bf16_units_is_fp32(bf16_units):
    bf16_units(False)
    for agreement in (None, 0.5, 1.0):
        choice = resolve_precision("auto", CPU, agreement)
        assert choice.precision == "fp32" and "without bf16 units" in choice.reason and not choice.fell_back
    assert resolve_precision("auto", torch.device("mps"), None).precision == "fp32"


def test_explicit_precisions_pass_through_and_bad_ones_are_refused(bf16_units):
    bf16_units(False)
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_precision(name, CPU, 0.1) == precision.PrecisionChoice(name, f"--precision {name} asked for")
    with pytest.raises(ValueError, match="precision must be auto"):
        resolve_precision("int8", CPU)


def test_training_and_inference_share_one_bf16_detection():
    from training import cpu_autocast
    assert cpu_autocast.cpu_has_native_bf16 is precision.cpu_has_native_bf16


def test_a_runner_refuses_an_unresolved_precision(cascade_folder):
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        ModelRunner(load_model(cascade_folder / "organ"), EngineOptions(precision="auto"))


def test_cascade_falls_back_per_model_below_the_recorded_floor(cascade_folder, tmp_path, bf16_units, caplog):
    bf16_units(True)
    weights = with_agreement(cascade_folder, tmp_path, {"organ": 0.97, "tumor_liver": 0.995})
    segmenter = build_segmenter(weights, EngineOptions(precision="auto"))
    choices = segmenter.precision_choices
    assert choices["organ"].precision == "fp32" and choices["organ"].fell_back
    assert choices["tumor_liver"].precision == "bf16" and "0.9950 >= 0.99" in choices["tumor_liver"].reason
    assert "organ" in caplog.text and "below 0.99" in caplog.text  # the fallback is said, not silent
    assert segmenter.tumor_stage_fns[1].func.__self__.options.precision == "bf16"  # what the model really runs in


def test_plain_model_folder_takes_bf16_on_a_capable_cpu(cascade_folder, bf16_units):
    bf16_units(True)
    segmenter = build_segmenter(cascade_folder / "organ", EngineOptions(precision="auto"))
    assert segmenter.runner.options.precision == "bf16"
    assert segmenter.precision_choices["organ"].precision == "bf16"


def test_malformed_record_is_a_fatal_manifest_error(cascade_folder, tmp_path):
    weights = with_agreement(cascade_folder, tmp_path, {"organ": "high"})
    with pytest.raises(ManifestError, match="precision_agreement.organ"):
        build_segmenter(weights, EngineOptions(precision="auto"))
    weights = with_agreement(cascade_folder, tmp_path / "b", {"organ": 1.5})
    assert main(["-i", str(write_case(tmp_path / "A_0000.nii.gz")), "-o", str(tmp_path / "o"), "--model",
                 str(weights), "--no-progress"]) == EXIT_FATAL


def test_report_names_each_models_precision_and_why(cascade_folder, tmp_path, bf16_units):
    bf16_units(True)
    weights = with_agreement(cascade_folder, tmp_path, {"organ": 0.5})
    case = write_case(tmp_path / "A_0000.nii.gz")
    assert main(["-i", str(case), "-o", str(tmp_path / "out"), "--model", str(weights), "--no-progress"]) == EXIT_OK
    report = json.loads((tmp_path / "out" / "run_report.json").read_text())
    assert report["options"]["precision"] == "auto" and report["options"]["resampling"] == "nnunet"
    used = report["precision_used"]
    assert used["organ"]["precision"] == "fp32" and "below 0.99" in used["organ"]["reason"]
    assert used["tumor_liver"]["precision"] == "bf16" and "no recorded" in used["tumor_liver"]["reason"]


def test_without_bf16_units_the_default_is_exactly_fp32(cascade_folder, tmp_path, bf16_units):
    """On a CPU without bf16 units `auto` changes nothing: the labels are those of --precision fp32."""
    bf16_units(False)
    case = write_case(tmp_path / "A_0000.nii.gz")
    outputs = {}
    for name, extra in (("default", []), ("fp32", ["--precision", "fp32"])):
        assert main(["-i", str(case), "-o", str(tmp_path / name), "--model", str(cascade_folder),
                     "--no-progress", *extra]) == EXIT_OK
        outputs[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name / "A.nii.gz")))
        used = json.loads((tmp_path / name / "run_report.json").read_text())["precision_used"]
        assert {v["precision"] for v in used.values()} == {"fp32"}
    np.testing.assert_array_equal(outputs["default"], outputs["fp32"])


def test_pooled_agreement_is_dice_over_all_cases_then_mean_over_labels():
    pooled = PooledAgreement((1, 2, 3))
    pooled.add(np.array([1, 1, 0, 2]), np.array([1, 0, 0, 2]))  # label 1: 2*1/(2+1); label 2: 1
    pooled.add(np.array([1, 0]), np.array([1, 0]))  # label 1 adds 2*1 shared over 2 voxels
    summary = pooled.summary()
    assert summary["dice_per_label"] == {"1": round(2 * 2 / 5, 4), "2": 1.0}  # label 3 absent from both: left out
    assert summary["bf16_vs_fp32_mean_dice"] == round((0.8 + 1.0) / 2, 4)
    assert summary["bf16_vs_fp32_voxel_agreement"] == round(5 / 6, 6)
    assert PooledAgreement((14,)).summary()["bf16_vs_fp32_mean_dice"] == 1.0  # no tumor in either: agree


def test_record_agreement_writes_every_model_and_keeps_the_manifest_verified(cascade_folder, tmp_path):
    import shutil
    weights = tmp_path / "weights"
    shutil.copytree(cascade_folder, weights)
    before = json.loads((weights / MANIFEST_NAME).read_text())
    record = record_agreement(weights, [("A", write_case(tmp_path / "A_0000.nii.gz"))], "one test case")
    after = load_manifest(weights).raw  # verifies every SHA-256 it lists
    assert after["precision_agreement"] == record and record["case_ids"] == ["A"] and record["floor"] == 0.99
    assert set(record["models"]) == {"organ", "tumor_liver"}
    assert all(0 <= m["bf16_vs_fp32_mean_dice"] <= 1 and m["cases"] == 1 for m in record["models"].values())
    assert {k: v for k, v in after.items() if k != "precision_agreement"} == before  # nothing else changed
