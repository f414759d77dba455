"""The training cases: one index record per case, and reading and writing their images, label maps
and JSON (canonical layout, sanitised HU, atomic writes)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from inference.core.labels import ORGAN_LABELS, TUMOR_LABEL
from inference.io.images import read_image, to_sitk, write_image_atomic, write_labels, write_text_atomic
from training.recipe_settings import DriverError


@dataclass(frozen=True)
class CaseRecord:
    id: str
    kind: str  # full, partial, tumor_only, unlabeled, validation, real_pseudo
    image: str  # training cases: the canonical copy under WORK; validation: the original
    label: str | None
    annotated: tuple[int, ...]
    source: str

    @property
    def is_training(self) -> bool:
        return self.kind != "validation"

    @property
    def organs_complete(self) -> bool:
        return set(ORGAN_LABELS) <= set(self.annotated)

    @property
    def tumor_annotated(self) -> bool:
        return TUMOR_LABEL in self.annotated


def discover_training_cases(data: Path) -> list[dict]:
    """The cases of a FLARE23-layout folder: from dataset_manifest.json when present (synthetic
    data says which labels each case annotates), else from the folders, inferring what a label
    file annotates from the labels it holds (real FLARE23)."""
    from training.dataset import MANIFEST_NAME

    manifest_path = data / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        return [{"id": c["id"], "kind": c["kind"], "image": data / c["image"],
                 "label": data / c["label"] if c["label"] else None,
                 "annotated": tuple(int(a) for a in c["annotated_labels"])} for c in manifest["cases"]]
    cases = []
    for image_folder, label_folder, split in (("imagesTr", "labelsTr", "train"), ("unlabeledTr", None, "train"),
                                              ("imagesVal", "labelsVal", "validation")):
        for image in sorted((data / image_folder).glob("*_0000.nii.gz")):
            case_id = image.name[: -len("_0000.nii.gz")]
            label = data / label_folder / f"{case_id}.nii.gz" if label_folder else None
            label = label if label is not None and label.is_file() else None
            kind = "validation" if split == "validation" else ("unlabeled" if label is None else "labelled")
            if split == "validation" and label is None:
                continue  # nothing to score against
            cases.append({"id": case_id, "kind": kind, "image": image, "label": label, "annotated": None})
    if not cases:
        raise DriverError(f"{data}: no cases found (expected imagesTr/<ID>_0000.nii.gz [+ labelsTr/<ID>.nii.gz], "
                          "unlabeledTr/, imagesVal/ + labelsVal/, or use --make-data)")
    return cases


def kind_from_annotation(annotated: Iterable[int]) -> str:
    annotated = set(annotated)
    if set(ORGAN_LABELS) <= annotated:
        return "full"
    return "tumor_only" if annotated == {TUMOR_LABEL} else ("unlabeled" if not annotated else "partial")


def read_label_map(path: Path, shape: Sequence[int] | None = None) -> np.ndarray:
    labels, _ = read_image(path)
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise DriverError(f"{path}: label map shape {labels.shape} differs from its image {tuple(shape)}")
    if labels.size and (labels.min() < 0 or labels.max() > TUMOR_LABEL or not np.all(labels == np.round(labels))):
        raise DriverError(f"{path}: labels must be integers 0..14")
    return labels.astype(np.uint8)


def write_image(path: Path, array: np.ndarray, geometry) -> None:
    """CT as int16 when its values are whole HU (they are after sanitising integer scans), else float32."""
    array = np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array)) and array.size and \
            array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_image_atomic(to_sitk(array, geometry), path)


def write_label_map(path: Path, labels: np.ndarray, geometry) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_labels(path, np.ascontiguousarray(labels, dtype=np.uint8), geometry)


def canonicalise_case(image_path: Path, label_path: Path | None, out_image: Path, out_label: Path | None
                      ) -> tuple[np.ndarray | None, tuple]:
    """Write the case in the engine's canonical layout (images sanitised as the engine does).
    Returns (labels in the canonical layout or None, canonical shape)."""
    from inference.io.images import read_ct
    from inference.io.orientation import canonicalize
    from inference.engine.preprocessing import sanitize_hu

    volume, geometry = read_ct(image_path)
    view, canonical, _ = canonicalize(volume, geometry)
    write_image(out_image, sanitize_hu(view), canonical)
    labels = None
    if label_path is not None:
        raw = read_label_map(label_path, geometry.shape)
        labels = np.ascontiguousarray(canonicalize(raw, geometry)[0])
        write_label_map(out_label, labels, canonical)
    return labels, canonical.shape


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")
