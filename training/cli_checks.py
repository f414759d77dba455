"""What `python -m training` checks before any work starts, each failure one line naming the cause.

- `--data`: a FLARE23-layout folder (imagesTr/<ID>_0000.nii.gz with labelsTr/<ID>.nii.gz,
  unlabeledTr/, imagesVal/ + labelsVal/), every image of imagesTr with its label and every label
  with its image, label values within FLARE's 0..14 (read from every label file: a stray value
  would otherwise be dropped silently when the data step infers what a case annotates);
- the preset against the options (`--make-data` needs a preset with a synthetic dataset);
- `--device cuda` / `--num-gpus N` against the CUDA devices torch sees.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from inference.core.labels import TUMOR_LABEL

FLARE_LAYOUT = "imagesTr/<ID>_0000.nii.gz + labelsTr/<ID>.nii.gz, unlabeledTr/, imagesVal/ + labelsVal/"
MAX_LABEL = TUMOR_LABEL  # FLARE23: 13 organs and the tumor label
IMAGE_SUFFIX, LABEL_SUFFIX = "_0000.nii.gz", ".nii.gz"


class UsageError(ValueError):
    """A bad option or input folder: the CLI prints `error: <message>` and exits 2."""


def check_data_folder(data: Path, *, manifest_name: str = "dataset_manifest.json") -> None:
    data = Path(data)
    if not data.exists():
        raise UsageError(f"--data {data}: folder does not exist (or pass --make-data to write the preset's "
                         "synthetic data there)")
    if not data.is_dir():
        raise UsageError(f"--data {data}: not a folder")
    if (data / manifest_name).is_file():
        return  # written by --make-data (training.dataset): it lists its own files
    images = _case_ids(data / "imagesTr", IMAGE_SUFFIX)
    if not images and not _case_ids(data / "unlabeledTr", IMAGE_SUFFIX):
        found = sorted(p.name for p in data.iterdir())[:6]
        raise UsageError(f"--data {data}: no imagesTr/<ID>_0000.nii.gz nor unlabeledTr/ scans; expected the FLARE23 "
                         f"layout ({FLARE_LAYOUT}); found {found or 'an empty folder'}")
    for image_folder, label_folder in (("imagesTr", "labelsTr"), ("imagesVal", "labelsVal")):
        _check_pairs(data, image_folder, label_folder)
    for label_folder in ("labelsTr", "labelsVal"):
        for label in sorted((data / label_folder).glob(f"*{LABEL_SUFFIX}")):
            check_label_values(label)


def _case_ids(folder: Path, suffix: str) -> set[str]:
    return {p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")} if folder.is_dir() else set()


def _check_pairs(data: Path, image_folder: str, label_folder: str) -> None:
    images, labels = _case_ids(data / image_folder, IMAGE_SUFFIX), _case_ids(data / label_folder, LABEL_SUFFIX)
    if images - labels:
        missing = sorted(images - labels)
        raise UsageError(f"--data {data}: {len(missing)} image(s) of {image_folder}/ without a label in "
                         f"{label_folder}/ (first: {missing[0]}{IMAGE_SUFFIX}); scans without labels go in unlabeledTr/")
    if labels - images:
        orphans = sorted(labels - images)
        raise UsageError(f"--data {data}: {len(orphans)} label(s) of {label_folder}/ without an image in "
                         f"{image_folder}/ (first: {orphans[0]}{LABEL_SUFFIX})")


def check_label_values(path: Path) -> None:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise UsageError(f"{path}: not a readable label map") from None
    values = np.unique(sitk.GetArrayViewFromImage(image))
    unknown = [v.item() for v in values if v != np.round(v) or not 0 <= v <= MAX_LABEL]
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise UsageError(f"{path}: label values {shown} outside FLARE's 0..{MAX_LABEL}")


def check_preset_options(preset, make_data: bool) -> None:
    if make_data and preset.data is None:
        raise UsageError(f"--preset {preset.name} has no synthetic dataset, so --make-data has nothing to make; "
                         "pass real FLARE23 data with --data, or choose a preset with synthetic data")


def check_devices(device: str, num_gpus: int, cuda_devices: int) -> None:
    """`cuda_devices`: what torch.cuda.device_count() reports (0 without CUDA)."""
    if num_gpus > 1 and device != "cuda":
        raise UsageError(f"--num-gpus {num_gpus} needs --device cuda (nnU-Net's DDP runs on CUDA only)")
    if device == "cuda" and cuda_devices == 0:
        raise UsageError("--device cuda: torch sees no CUDA device (no GPU, no driver, or a CPU-only torch)")
    if num_gpus > cuda_devices and device == "cuda":
        raise UsageError(f"--num-gpus {num_gpus}: torch sees only {cuda_devices} CUDA device(s)")
