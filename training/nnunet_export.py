"""A trained nnU-Net fold as a model folder for inference: `plans.json`, `dataset.json` and a
checkpoint stripped to what inference needs, which loads with `torch.load(weights_only=True)` and
runs in nnU-Net's own predictor as in our engine.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from inference.cascade.cascade_json import sha256_of  # one SHA-256 helper for exports and the manifest check
from inference.io.images import write_json_atomic
from training.nnunet import TRAINER_NAME, NnUNetPaths, fold_folder

STRIPPED_CHECKPOINT_KEYS = ("network_weights", "trainer_name", "init_args", "inference_allowed_mirroring_axes")


def export_model_folder(paths: NnUNetPaths, dataset_id: int, *, plans_name: str, configuration: str,
                        fold: str | int = "all", dest: Path, checkpoint: str = "checkpoint_final.pth",
                        augmentation: bool = True) -> dict[str, str]:
    """Write `dest/plans.json`, `dest/dataset.json`, `dest/fold_<fold>/checkpoint_final.pth`.

    The checkpoint holds only what `nnUNetPredictor.initialize_from_trained_model_folder` reads:
    network_weights (fp32 tensors), trainer_name, init_args.configuration and
    inference_allowed_mirroring_axes, so it loads with torch.load(weights_only=True) and the
    folder runs in nnU-Net's own predictor. Returns {relative path: SHA-256} of the written files.
    """
    import torch  # only the export needs torch; planning and training run in subprocesses

    source = fold_folder(paths, dataset_id, plans_name=plans_name, configuration=configuration, fold=fold,
                         augmentation=augmentation)
    model_base = source.parent
    # Our own training output: it holds numpy scalars in its logs, so the full unpickler is needed.
    trained = torch.load(source / checkpoint, map_location="cpu", weights_only=False)
    stripped = strip_checkpoint(trained, configuration)
    dest = Path(dest)
    (dest / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    plans = json.loads((model_base / "plans.json").read_text())
    dataset_json = json.loads((model_base / "dataset.json").read_text())
    write_json_atomic(dest / "plans.json", plans)
    write_json_atomic(dest / "dataset.json", dataset_json)
    checkpoint_path = dest / f"fold_{fold}" / "checkpoint_final.pth"
    temporary = checkpoint_path.with_name(f".{checkpoint_path.name}.partial-{os.getpid()}")
    torch.save(stripped, temporary)
    os.replace(temporary, checkpoint_path)
    reloaded = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if set(reloaded) != set(STRIPPED_CHECKPOINT_KEYS) or set(reloaded["network_weights"]) != set(stripped["network_weights"]):
        raise RuntimeError(f"{checkpoint_path}: exported checkpoint does not reload as written")
    written = [dest / "plans.json", dest / "dataset.json", checkpoint_path]
    return {str(path.relative_to(dest)): sha256_of(path) for path in written}


def strip_checkpoint(checkpoint: dict, configuration: str) -> dict:
    """The inference-only part of an nnU-Net training checkpoint (tensors as contiguous fp32)."""
    import torch

    weights = {}
    converted: dict[tuple, torch.Tensor] = {}  # aliases stay aliases, so torch.save stores each tensor once
    for key, value in checkpoint["network_weights"].items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"network_weights[{key!r}] is {type(value).__name__}, expected a tensor")
        key = key[len("module."):] if key.startswith("module.") else key  # DDP-wrapped training
        key = key[len("_orig_mod."):] if key.startswith("_orig_mod.") else key  # torch.compile
        # dynamic-network-architectures registers each conv twice (`conv` and `all_modules.0`) and
        # the decoder holds the encoder: the state dict names one tensor up to four times.
        identity = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                    tuple(value.stride()), value.dtype)
        if identity not in converted:
            tensor = value.detach().cpu()
            tensor = tensor.float() if tensor.is_floating_point() else tensor
            converted[identity] = tensor if tensor.is_contiguous() else tensor.contiguous()
        weights[key] = converted[identity]
    mirroring = checkpoint.get("inference_allowed_mirroring_axes")
    return {
        "network_weights": weights,
        "trainer_name": TRAINER_NAME,
        "init_args": {"configuration": configuration},
        "inference_allowed_mirroring_axes": tuple(int(a) for a in mirroring) if mirroring is not None else None,
    }
