"""nnU-Net v2 model folders with random weights, in nnU-Net's own plans layout.

Used by the tests (small networks), the benchmarks and the GPU check (paper-size networks, where
only time and memory matter): the same folder runs in nnU-Net's predictor and in our engine.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from inference.core.labels import ORGAN_MODEL_LABELS, TUMOR_HOST_NAMES, TUMOR_MODEL_LABELS

def architecture(features=(4, 8, 16), strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), kernels=None,
                 class_name="dynamic_network_architectures.architectures.unet.PlainConvUNet") -> dict:
    n = len(features)
    return {
        "network_class_name": class_name,
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [list(k) for k in (kernels or [(3, 3, 3)] * n)],
            "strides": [list(s) for s in strides],
            "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1),
            "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def plans(patch=(16, 32, 32), spacing=(2.5, 1.6, 1.6), arch=None, configuration="3d_fullres",
          intensity=None) -> dict:
    intensity = intensity or {"max": 1500.0, "mean": 60.0, "median": 55.0, "min": -1000.0,
                              "percentile_00_5": -950.0, "percentile_99_5": 800.0, "std": 150.0}
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset999_Test", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [64, 128, 128],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {configuration: {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [64, 128, 128],
            "spacing": list(spacing), "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": resampling,
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
            "architecture": arch or architecture(), "batch_dice": False,
        }},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": intensity},
    }


def paper_architecture(patch, spacing, features=(32, 64, 128, 256, 320, 320)) -> dict:
    """nnU-Net's default 3d_fullres U-Net for this patch and spacing (the FLARE23 paper's models)."""
    from training.nnunet_plans import unet_topology
    kernels, strides = unet_topology(patch, spacing, len(features))
    return architecture(features, strides, kernels)


def make_model_folder(folder: Path, *, labels=None, patch=(16, 32, 32), spacing=(2.5, 1.6, 1.6), arch=None,
                      folds=("all",), seed=0, configuration="3d_fullres", bias_class: int | None = None) -> Path:
    """Write plans.json, dataset.json and a stripped checkpoint per fold; returns the folder.

    `bias_class` raises that class's final-layer bias so a random network predicts a plausible mix.
    """
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from inference.engine.model import build_network

    labels = labels or ORGAN_MODEL_LABELS
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan = plans(patch, spacing, arch, configuration)
    (folder / "plans.json").write_text(json.dumps(plan, indent=1))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                     "numTraining": 1, "file_ending": ".nii.gz"}))
    for index, fold in enumerate(folds):
        torch.manual_seed(seed + index)
        network = build_network(plan["configurations"][configuration]["architecture"], 1, len(labels))
        assert isinstance(network, PlainConvUNet)
        if bias_class is not None:
            with torch.no_grad():
                network.decoder.seg_layers[-1].bias[bias_class] += 1.0
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                    "init_args": {"configuration": configuration}, "inference_allowed_mirroring_axes": (0, 1, 2)},
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def add_random_tumor_stages(root: Path, *, patch, spacing, arch: dict) -> list[dict]:
    """One random-weight tumor model folder per host organ under `root` (for timing and memory
    measurements, where the weight values do not matter); returns the manifest's tumor stages."""
    stages = []
    for organ, name in TUMOR_HOST_NAMES.items():
        make_model_folder(root / f"tumor_{name}", labels=TUMOR_MODEL_LABELS, patch=patch,
                          spacing=spacing, arch=arch, seed=organ, bias_class=0)
        stages.append({"organ": organ, "folder": f"tumor_{name}", "needs_contrast": organ in (2, 13)})
    return stages
