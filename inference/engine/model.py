"""nnU-Net v2 trained model folders -> networks, without importing nnunetv2.

A model folder holds `plans.json`, `dataset.json` and `fold_*/checkpoint_*.pth`. The network is built
by dynamic-network-architectures from the plans' `architecture` entry. Loading never executes code
from a file and never imports a class by an arbitrary name: architecture classes and their building
blocks come from explicit allowlists, and checkpoints load with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class ModelError(Exception):
    """A model folder that cannot be used (missing file, unknown architecture, bad checkpoint)."""


def _architecture_classes() -> dict[str, type]:
    # Imported here, not at module import, so that `--help` and input validation stay fast.
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    return {
        "dynamic_network_architectures.architectures.unet.PlainConvUNet": PlainConvUNet,
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": ResidualEncoderUNet,
        # old plans name the residual U-Net by its previous module path
        "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet": ResidualEncoderUNet,
    }


# The only strings a plans file may use for `_kw_requires_import` entries. nnU-Net writes either the
# defining module path (torch.nn.modules.conv.Conv3d) or the public alias (torch.nn.LeakyReLU).
_BLOCKS: dict[str, type | None] = {
    "torch.nn.modules.conv.Conv2d": nn.Conv2d,
    "torch.nn.modules.conv.Conv3d": nn.Conv3d,
    "torch.nn.modules.instancenorm.InstanceNorm2d": nn.InstanceNorm2d,
    "torch.nn.modules.instancenorm.InstanceNorm3d": nn.InstanceNorm3d,
    "torch.nn.modules.batchnorm.BatchNorm2d": nn.BatchNorm2d,
    "torch.nn.modules.batchnorm.BatchNorm3d": nn.BatchNorm3d,
    "torch.nn.modules.activation.LeakyReLU": nn.LeakyReLU,
    "torch.nn.modules.activation.ReLU": nn.ReLU,
    "torch.nn.modules.dropout.Dropout2d": nn.Dropout2d,
    "torch.nn.modules.dropout.Dropout3d": nn.Dropout3d,
}
BUILDING_BLOCKS = {**_BLOCKS, **{f"torch.nn.{block.__name__}": block for block in _BLOCKS.values()}}

SUPPORTED_NORMALIZATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization")

# nnU-Net checkpoints written by its trainer carry numpy scalars in their logs; these are the only
# non-tensor globals we allow when loading one that was not stripped.
_CHECKPOINT_SAFE_GLOBALS = [np.dtype, np._core.multiarray.scalar] + [
    type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")
]


@dataclass(frozen=True)
class DataResampling:
    """Settings of nnU-Net's `resample_data_or_seg_to_shape` from the plans (defaults: its images';
    its logits use order 1)."""
    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None

    @classmethod
    def from_plans(cls, kwargs: dict) -> "DataResampling":
        order, order_z = kwargs.get("order", 3), kwargs.get("order_z", 0)
        force = kwargs.get("force_separate_z")
        if not (isinstance(order, int) and 0 <= order <= 5 and isinstance(order_z, int) and 0 <= order_z <= 5):
            raise ModelError(f"plans resampling kwargs: spline orders must be integers 0..5, got {kwargs}")
        if force is not None and not isinstance(force, bool):
            raise ModelError(f"plans resampling kwargs: force_separate_z must be true, false or null, got {force!r}")
        return cls(order, order_z, force)


@dataclass(frozen=True)
class IntensityProperties:
    mean: float
    std: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class ModelConfig:
    """What inference needs from plans.json + dataset.json, as typed values."""
    name: str
    configuration: str
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]  # model spacing in transposed array order
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    normalization: str
    intensity: IntensityProperties | None
    labels: dict[str, int]
    num_classes: int
    allowed_mirroring_axes: tuple[int, ...] | None
    # the plans' resampling_fn_data_kwargs and resampling_fn_probabilities_kwargs: what nnU-Net's
    # own resampling of the input and of the logits does; used by resampling="nnunet"
    data_resampling: DataResampling = DataResampling()
    probability_resampling: DataResampling = DataResampling(order=1)

    @property
    def label_values(self) -> list[int]:
        return sorted(self.labels.values())


@dataclass
class LoadedModel:
    config: ModelConfig
    networks: list[nn.Module]  # one per fold, eval mode; logits are averaged over folds
    folder: Path

    def to(self, device: torch.device) -> "LoadedModel":
        self.networks = [n.to(device) for n in self.networks]
        return self

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.networks[0](batch)
        for network in self.networks[1:]:
            logits = logits + network(batch)
        return logits / len(self.networks) if len(self.networks) > 1 else logits


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{path}: not valid JSON ({error})") from None


def resolve_configuration(plans: dict, name: str) -> dict:
    """A plans configuration with `inherits_from` chains merged (child keys win)."""
    configurations = plans.get("configurations", {})
    if name not in configurations:
        raise ModelError(f"configuration {name!r} not in plans (has {sorted(configurations)})")
    entry = configurations[name]
    if "inherits_from" in entry:
        merged = copy.deepcopy(resolve_configuration(plans, entry["inherits_from"]))
        merged.update({k: v for k, v in entry.items() if k != "inherits_from"})
        return merged
    return entry


def find_checkpoints(folder: Path, folds=None, checkpoint_name: str | None = None) -> list[Path]:
    """fold_*/checkpoint_final.pth (or checkpoint_best/latest) for the requested or all folds."""
    fold_dirs = sorted(folder.glob("fold_*")) if folds is None else [folder / f"fold_{f}" for f in folds]
    names = [checkpoint_name] if checkpoint_name else ["checkpoint_final.pth", "checkpoint_best.pth",
                                                       "checkpoint_latest.pth"]
    found = []
    for fold_dir in fold_dirs:
        checkpoint = next((fold_dir / n for n in names if (fold_dir / n).is_file()), None)
        if checkpoint is None:
            raise ModelError(f"{fold_dir}: no checkpoint ({' / '.join(names)})")
        found.append(checkpoint)
    if not found:
        raise ModelError(f"{folder}: no fold_* folder with a checkpoint")
    return found


def load_checkpoint(path: Path) -> dict:
    try:
        with torch.serialization.safe_globals(_CHECKPOINT_SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: missing") from None
    except Exception as error:  # pickle, zip and weights_only errors come in many classes
        raise ModelError(f"{path}: cannot be loaded safely (weights_only): {str(error).splitlines()[0][:300]}") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ModelError(f"{path}: not an nnU-Net checkpoint (no 'network_weights')")
    return checkpoint


def _dataset_labels(folder: Path, dataset: dict) -> dict[str, int]:
    labels = dataset.get("labels", {})
    if any(not isinstance(v, int) for v in labels.values()):
        raise ModelError(f"{folder}/dataset.json: region-based labels are not supported")
    return labels


def read_label_values(folder) -> list[int]:
    """The label values of a model folder's dataset.json (`ModelConfig.label_values`), read
    without building the network or loading weights."""
    folder = Path(folder)
    return sorted(_dataset_labels(folder, _read_json(folder / "dataset.json")).values())


def read_model_config(folder: Path, configuration: str, allowed_mirroring_axes=None) -> ModelConfig:
    plans = _read_json(folder / "plans.json")
    dataset = _read_json(folder / "dataset.json")
    entry = resolve_configuration(plans, configuration)
    labels = _dataset_labels(folder, dataset)
    channels = dataset.get("channel_names", dataset.get("modality", {}))
    if len(channels) != 1:
        raise ModelError(f"{folder}: {len(channels)} input channels; this engine runs single-channel CT models")
    normalization = entry["normalization_schemes"][0]
    if normalization not in SUPPORTED_NORMALIZATIONS:
        raise ModelError(f"{folder}: normalization {normalization!r} not supported ({SUPPORTED_NORMALIZATIONS})")
    intensity = None
    properties = plans.get("foreground_intensity_properties_per_channel", {}).get("0")
    if properties:
        intensity = IntensityProperties(*(float(properties[k]) for k in
                                          ("mean", "std", "percentile_00_5", "percentile_99_5")))
    elif normalization == "CTNormalization":
        raise ModelError(f"{folder}/plans.json: CTNormalization without foreground intensity properties")
    return ModelConfig(
        name=folder.name,
        configuration=configuration,
        patch_size=tuple(int(p) for p in entry["patch_size"]),
        spacing=tuple(float(s) for s in entry["spacing"]),
        transpose_forward=tuple(plans.get("transpose_forward", (0, 1, 2))),
        transpose_backward=tuple(plans.get("transpose_backward", (0, 1, 2))),
        normalization=normalization,
        intensity=intensity,
        labels={k: int(v) for k, v in labels.items()},
        num_classes=len(labels),
        allowed_mirroring_axes=tuple(allowed_mirroring_axes) if allowed_mirroring_axes is not None else None,
        data_resampling=DataResampling.from_plans(entry.get("resampling_fn_data_kwargs") or {}),
        probability_resampling=DataResampling.from_plans(
            {"order": 1, **(entry.get("resampling_fn_probabilities_kwargs") or {})}),
    )


def build_network(architecture: dict, num_input_channels: int, num_classes: int) -> nn.Module:
    """Instantiate an allowlisted dynamic-network-architectures class from a plans `architecture` entry."""
    classes = _architecture_classes()
    class_name = architecture.get("network_class_name")
    if class_name not in classes:
        raise ModelError(f"unknown architecture {class_name!r}; accepted: {sorted(classes)}")
    kwargs = dict(architecture.get("arch_kwargs", {}))
    for key in architecture.get("_kw_requires_import", []):
        value = kwargs.get(key)
        if value is None:
            continue
        if value not in BUILDING_BLOCKS:
            raise ModelError(f"architecture argument {key}={value!r} is not an accepted building block")
        kwargs[key] = BUILDING_BLOCKS[value]
    try:
        return classes[class_name](input_channels=num_input_channels, num_classes=num_classes,
                                   deep_supervision=False, **kwargs)
    except TypeError as error:
        raise ModelError(f"architecture {class_name} rejected its arguments: {error}") from None


def load_model(folder, *, folds=None, checkpoint_name: str | None = None,
               device: torch.device | str = "cpu") -> LoadedModel:
    """Load an nnU-Net v2 trained model folder (any configuration name, one or several folds)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder does not exist")
    checkpoints = [load_checkpoint(p) for p in find_checkpoints(folder, folds, checkpoint_name)]
    first = checkpoints[0]
    configuration = first.get("init_args", {}).get("configuration")
    if not configuration:
        raise ModelError(f"{folder}: checkpoint does not name its configuration (init_args.configuration)")
    config = read_model_config(folder, configuration, first.get("inference_allowed_mirroring_axes"))
    plans = _read_json(folder / "plans.json")
    architecture = resolve_configuration(plans, configuration).get("architecture")
    if architecture is None:
        raise ModelError(f"{folder}/plans.json: configuration {configuration!r} has no 'architecture' entry")
    networks = []
    for checkpoint in checkpoints:
        # built on the meta device and handed the checkpoint's tensors: no random initialisation
        # of weights that are overwritten at once (0.15 s of the paper's organ model on a 2-core CPU)
        with torch.device("meta"):
            network = build_network(architecture, 1, config.num_classes)
        try:
            network.load_state_dict(checkpoint["network_weights"], assign=True)
        except RuntimeError as error:
            raise ModelError(f"{folder}: weights do not match the planned architecture: "
                             f"{str(error).splitlines()[0][:300]}") from None
        networks.append(network.float().eval().to(device))
    log.info("loaded %s (%s, %d fold(s), %.1fM parameters)", folder, configuration, len(networks),
             sum(p.numel() for p in networks[0].parameters()) / 1e6)
    return LoadedModel(config=config, networks=networks, folder=folder)
