"""training.nnunet: plan overrides, stripped checkpoints, and one tiny real nnU-Net run end to end."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from inference.cascade.cascade_json import sha256_of
from training.nnunet import NnUNetPaths, plan_and_preprocess, predict_with_nnunet, train, write_raw_dataset
from training.nnunet_export import STRIPPED_CHECKPOINT_KEYS, export_model_folder, strip_checkpoint
from training.nnunet_plans import canonical_class_names, default_features, derive_plans, unet_topology

SPACING = (2.5, 1.6, 1.6)  # z, y, x
BLOB_LABELS = {"background": 0, "ball": 1, "egg": 2}


# ------------------------------------------------------------------------------------------
# unet_topology: the rules of nnU-Net's get_pool_and_conv_props for a fixed number of stages


def test_topology_isotropic_enough_pools_every_axis():
    kernels, strides = unet_topology((16, 32, 32), SPACING, 3)
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert kernels == [[3, 3, 3]] * 3


def test_topology_thick_slices_use_in_plane_kernels_and_strides_first():
    kernels, strides = unet_topology((16, 128, 128), (5.0, 0.8, 0.8), 5)
    assert strides == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert kernels == [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]


def test_topology_stops_pooling_an_axis_below_eight_voxels():
    _, strides = unet_topology((8, 64, 64), SPACING, 4)
    assert strides == [[1, 1, 1], [2, 2, 2], [1, 2, 2], [1, 2, 2]]


@pytest.mark.parametrize("patch, spacing", [
    ((64, 128, 128), (2.5, 1.6, 1.6)), ((96, 160, 160), (2.5, 0.8, 0.8)), ((56, 112, 176), (1.0, 1.0, 1.0)),
    ((32, 192, 160), (5.0, 0.7, 0.7)), ((16, 32, 32), (2.5, 1.6, 1.6)),
])
def test_topology_matches_nnunet_planner(patch, spacing):
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, pools, convs, padded_patch, _ = get_pool_and_conv_props(spacing, patch, 4, 999999)
    assert tuple(padded_patch) == patch  # the cases are chosen divisible, as we require
    kernels, strides = unet_topology(patch, spacing, len(pools))
    assert strides == [list(p) for p in pools]
    assert kernels == [list(c) for c in convs]


def test_topology_rejects_too_many_stages_and_indivisible_patches():
    with pytest.raises(ValueError, match="allows only 4 stages"):
        unet_topology((16, 32, 32), SPACING, 5)
    with pytest.raises(ValueError, match="not divisible"):
        unet_topology((16, 30, 30), SPACING, 3)


def test_default_features_use_as_many_stages_as_the_patch_allows():
    features = default_features((16, 32, 32), SPACING)
    assert features == (32, 64, 128, 256)  # nnU-Net's width rule, 4 stages (5 is rejected above)
    assert default_features((64, 512, 512), (1.0, 1.0, 1.0))[-1] == 320  # capped at 320
    for patch in ((16, 30, 30), (24, 48, 64), (32, 80, 80)):
        stages = len(default_features(patch, SPACING))
        unet_topology(patch, SPACING, stages)
        with pytest.raises(ValueError):
            unet_topology(patch, SPACING, stages + 1)


def test_canonical_class_names_replace_the_planner_aliases_only():
    plans = {"configurations": {"3d_fullres": {"architecture": {"arch_kwargs": {
        "nonlin": "torch.nn.LeakyReLU", "conv_op": "torch.nn.modules.conv.Conv3d", "n_stages": 4}}}}}
    kwargs = canonical_class_names(plans)["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert kwargs == {"nonlin": "torch.nn.modules.activation.LeakyReLU", "conv_op": "torch.nn.modules.conv.Conv3d",
                      "n_stages": 4}


# ------------------------------------------------------------------------------------------
# derive_plans


def nnunet_like_plans() -> dict:
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256],
                            "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                            "n_conv_per_stage": [2] * 4, "n_conv_per_stage_decoder": [2] * 3, "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    fullres = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
               "batch_size": 2, "patch_size": [24, 48, 48], "median_image_size_in_voxels": [24.0, 48.0, 48.0],
               "spacing": [2.5, 1.6, 1.6], "normalization_schemes": ["CTNormalization"],
               "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
               "architecture": arch, "batch_dice": False, "next_stage": "3d_cascade_fullres"}
    return {"dataset_name": "Dataset901_Blobs", "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "image_reader_writer": "SimpleITKIO",
            "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d"}, "3d_fullres": fullres,
                               "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {"mean": 1.0, "std": 2.0}}}


def test_derive_plans_overrides_and_keeps_nnunet_keys():
    original = nnunet_like_plans()
    derived = derive_plans(original, plans_name="Small", patch_size=(16, 32, 32), batch_size=3,
                           features_per_stage=(4, 8, 16), spacing=(3.0, 2.0, 2.0))
    assert original == nnunet_like_plans(), "input plans must not be modified"
    assert derived["plans_name"] == "Small"
    assert list(derived["configurations"]) == ["3d_fullres"]
    config = derived["configurations"]["3d_fullres"]
    assert config["data_identifier"] == "Small_3d_fullres"
    assert (config["patch_size"], config["batch_size"], config["spacing"]) == ([16, 32, 32], 3, [3.0, 2.0, 2.0])
    assert "next_stage" not in config
    arch = config["architecture"]["arch_kwargs"]
    assert arch["n_stages"] == 3 and arch["features_per_stage"] == [4, 8, 16]
    assert arch["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert arch["n_conv_per_stage"] == [2, 2, 2] and arch["n_conv_per_stage_decoder"] == [2, 2]
    assert arch["nonlin"] == "torch.nn.LeakyReLU" and arch["norm_op_kwargs"] == {"eps": 1e-05, "affine": True}
    for key in ("transpose_forward", "foreground_intensity_properties_per_channel", "image_reader_writer"):
        assert derived[key] == original[key]
    for key in ("normalization_schemes", "resampling_fn_data", "preprocessor_name", "batch_dice"):
        assert config[key] == original["configurations"]["3d_fullres"][key]


def test_derive_plans_without_overrides_keeps_nnunet_network_and_resolves_inheritance():
    derived = derive_plans(nnunet_like_plans(), plans_name="Same", configuration="3d_cascade_fullres")
    config = derived["configurations"]["3d_cascade_fullres"]
    assert "inherits_from" not in config and "previous_stage" not in config
    assert config["architecture"] == nnunet_like_plans()["configurations"]["3d_fullres"]["architecture"]


def test_derive_plans_rejects_inconsistent_requests():
    with pytest.raises(ValueError, match="n_stages"):
        derive_plans(nnunet_like_plans(), plans_name="X", features_per_stage=(4, 8), n_stages=3)
    with pytest.raises(ValueError, match="available"):
        derive_plans(nnunet_like_plans(), plans_name="X", configuration="3d_lowres")


# ------------------------------------------------------------------------------------------
# stripped checkpoints


def test_strip_checkpoint_keeps_only_inference_keys_as_fp32_tensors(tmp_path):
    shared = torch.ones(2, 3, 3)
    weights = {"module.encoder.w": torch.ones(2, 3, dtype=torch.float16), "decoder.b": torch.zeros(4),
               "encoder.conv.weight": shared, "encoder.all_modules.0.weight": shared}
    trained = {"network_weights": weights, "optimizer_state": {"state": {}}, "logging": {"x": [np.float64(1.0)]},
               "init_args": {"plans": {}, "configuration": "3d_fullres", "device": torch.device("cpu")},
               "trainer_name": "nnUNetTrainer", "current_epoch": 3, "_best_ema": np.float64(0.5),
               "inference_allowed_mirroring_axes": (0, 1, 2)}
    stripped = strip_checkpoint(trained, "3d_fullres")
    torch.save(stripped, tmp_path / "c.pth")
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)
    assert set(loaded) == set(STRIPPED_CHECKPOINT_KEYS)
    assert loaded["init_args"] == {"configuration": "3d_fullres"} and loaded["trainer_name"] == "nnUNetTrainer"
    assert loaded["inference_allowed_mirroring_axes"] == (0, 1, 2)
    weights = loaded["network_weights"]
    assert set(weights) == {"encoder.w", "decoder.b", "encoder.conv.weight", "encoder.all_modules.0.weight"}
    assert all(t.dtype == torch.float32 for t in weights.values())
    # dynamic-network-architectures names each conv weight twice: it must be stored once
    assert weights["encoder.conv.weight"].data_ptr() == weights["encoder.all_modules.0.weight"].data_ptr()


def test_write_raw_dataset_layout(tmp_path):
    image, label = tmp_path / "a.nii.gz", tmp_path / "a_seg.nii.gz"
    image.write_bytes(b"i")
    label.write_bytes(b"l")
    paths = NnUNetPaths(tmp_path / "nn")
    folder = write_raw_dataset(paths, 7, "Tiny", [("case1", image, label)], BLOB_LABELS)
    assert folder.name == "Dataset007_Tiny"
    assert (folder / "imagesTr" / "case1_0000.nii.gz").read_bytes() == b"i"
    assert (folder / "labelsTr" / "case1.nii.gz").read_bytes() == b"l"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["labels"] == BLOB_LABELS
    assert meta["numTraining"] == 1 and meta["file_ending"] == ".nii.gz"
    write_raw_dataset(paths, 7, "Tiny", [("case2", image, label)], BLOB_LABELS)
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["case2_0000.nii.gz"]
    with pytest.raises(ValueError, match="consecutive"):
        write_raw_dataset(paths, 8, "Bad", [("c", image, label)], {"background": 0, "x": 2})
    with pytest.raises(FileExistsError):
        write_raw_dataset(paths, 7, "Other", [("c", image, label)], BLOB_LABELS)


def test_env_points_nnunet_at_the_folders_without_touching_os_environ(tmp_path):
    before = dict(os.environ)
    env = NnUNetPaths(tmp_path).env(threads=1, n_proc_da=0)
    assert dict(os.environ) == before
    assert env["nnUNet_raw"] == str(tmp_path.resolve() / "nnUNet_raw")
    assert env["nnUNet_compile"] == "false" and env["OMP_NUM_THREADS"] == "1" and env["nnUNet_n_proc_DA"] == "0"


# ------------------------------------------------------------------------------------------
# end to end with real nnU-Net: raw -> plan -> preprocess -> train -> export -> nnU-Net predictor


def write_blob_case(folder: Path, case_id: str, seed: int, shape=(24, 48, 48)) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 20.0, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for value, radius in ((1, 6), (2, 8)):
        cz, cy, cx = (rng.integers(r, s - r) for r, s in zip((4, radius, radius), shape))
        inside = ((z - cz) * SPACING[0] / SPACING[1]) ** 2 + (y - cy) ** 2 + ((x - cx) / (1.4 if value == 2 else 1)) ** 2
        labels[inside < radius ** 2] = value
        image[inside < radius ** 2] += 150.0 * value
    paths = folder / f"{case_id}_0000.nii.gz", folder / f"{case_id}_seg.nii.gz"
    for array, path in zip((image, labels), paths):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(SPACING[::-1])
        itk.SetOrigin((10.0, -5.0, 3.0))
        sitk.WriteImage(itk, str(path))
    return paths


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet_e2e")
    source = root / "cases"
    source.mkdir()
    cases = [(f"blob{i}", *write_blob_case(source, f"blob{i}", seed=i)) for i in range(3)]
    paths = NnUNetPaths(root / "nn")
    write_raw_dataset(paths, 901, "Blobs", cases, BLOB_LABELS)
    [plans_path] = plan_and_preprocess(paths, 901, plans_name="TinyPlans", patch_size=(16, 32, 32), batch_size=2,
                                       features_per_stage=(4, 8, 16))
    train(paths, 901, plans_name="TinyPlans", configuration="3d_fullres", fold="all", epochs=1,
          iterations_per_epoch=2, val_iterations=1)
    dest = root / "export"
    hashes = export_model_folder(paths, 901, plans_name="TinyPlans", configuration="3d_fullres", fold="all",
                                 dest=dest)
    return paths, plans_path, dest, hashes, cases


def test_e2e_plans_file_is_what_nnunet_preprocessed(trained_export):
    paths, plans_path, _, _, _ = trained_export
    plans = json.loads(plans_path.read_text())
    config = plans["configurations"]["3d_fullres"]
    assert config["patch_size"] == [16, 32, 32]
    assert len(list((plans_path.parent / config["data_identifier"]).glob("blob*"))) >= 3


def test_e2e_export_is_stripped_and_builds_the_planned_network(trained_export):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    _, _, dest, hashes, _ = trained_export
    assert set(hashes) == {"plans.json", "dataset.json", "fold_all/checkpoint_final.pth"}
    assert all(sha256_of(dest / name) == digest for name, digest in hashes.items())
    checkpoint = torch.load(dest / "fold_all" / "checkpoint_final.pth", weights_only=True)
    assert set(checkpoint) == set(STRIPPED_CHECKPOINT_KEYS)
    assert checkpoint["init_args"] == {"configuration": "3d_fullres"}
    plans = json.loads((dest / "plans.json").read_text())
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    assert architecture["network_class_name"] == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    blocks = {"torch.nn.modules.conv.Conv3d": nn.Conv3d, "torch.nn.modules.instancenorm.InstanceNorm3d":
              nn.InstanceNorm3d, "torch.nn.LeakyReLU": nn.LeakyReLU, "torch.nn.modules.activation.LeakyReLU": nn.LeakyReLU}
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture["_kw_requires_import"]:
        kwargs[key] = None if kwargs[key] is None else blocks[kwargs[key]]
    num_classes = len(json.loads((dest / "dataset.json").read_text())["labels"])
    network = PlainConvUNet(input_channels=1, num_classes=num_classes, deep_supervision=False, **kwargs)
    network.load_state_dict(checkpoint["network_weights"], strict=True)
    with torch.no_grad():
        assert network(torch.zeros(1, 1, 16, 32, 32)).shape == (1, num_classes, 16, 32, 32)


def test_e2e_nnunet_predictor_runs_the_exported_folder(trained_export, tmp_path):
    paths, _, dest, _, cases = trained_export
    case_id, image_path, _ = cases[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    os.link(image_path, inputs / f"{case_id}_0000.nii.gz")
    predict_with_nnunet(dest, inputs, tmp_path / "out", env=paths.env(threads=2), log_path=tmp_path / "predict.log")
    predicted = sitk.ReadImage(str(tmp_path / "out" / f"{case_id}.nii.gz"))
    original = sitk.ReadImage(str(image_path))
    assert predicted.GetSize() == original.GetSize()
    assert np.allclose(predicted.GetSpacing(), original.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(predicted))) <= set(BLOB_LABELS.values())


# ------------------------------------------------------------------------------------------
# quick_model: organ-only labels for the 14-class organ model


def test_organ_labels_give_each_tumour_to_its_host_organ():
    from training.quick_model import organ_labels

    labels = np.zeros((10, 20, 30), np.uint8)
    labels[2:8, 2:10, 2:12] = 1  # liver
    labels[4:6, 4:7, 4:7] = 14  # tumour inside the liver
    labels[2:8, 12:18, 2:10] = 4  # pancreas
    labels[2:8, 12:18, 10:20] = 12  # duodenum, touching the pancreas
    labels[3:7, 13:17, 8:12] = 14  # pancreatic tumour that bulges into the duodenum
    out = organ_labels(labels, hosts=(1, 4))
    assert out.dtype == np.uint8 and out.max() <= 13
    assert (out[4:6, 4:7, 4:7] == 1).all()
    assert (out[3:7, 13:17, 8:12] == 4).all()
    assert (out[labels == 12] == 12).sum() == ((labels == 12).sum())  # untouched organs stay
    lone = np.zeros((4, 4, 4), np.uint8)
    lone[1:3, 1:3, 1:3] = 14
    assert organ_labels(lone).max() == 0  # a tumour touching no organ becomes background
