"""Tumor-model data (steps 2-4 of the recipe): organ crops and credible tumor pseudo labels.

Crops reuse the inference cascade's own box (`inference.cascade.segmenter.organ_crop_box`: the organ's
bounding box plus margins in mm along the patient's head-feet axis and in plane), so that a tumor
model trains on exactly the kind of crop it will see. Targets are in the tumor model's labels:
0 background, 1 tumor.

Credible pseudo tumors (public FLARE23 code): a component predicted on an
unlabeled case is kept only if it is large enough (public code: 2048 voxels; here a volume in mm3)
and the organ that owns most of the component's bounding box is the organ whose model found it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cc3d
import numpy as np

from inference.cascade.segmenter import organ_crop_box, voxels_for_mm3
from inference.cascade.parameters import CascadeParameters
from inference.core.geometry import Geometry
from inference.core.labels import TUMOR_LABEL

PSEUDO_REASONS = ("too_small", "no_owner", "other_owner")


@dataclass(frozen=True)
class OrganCrop:
    """One organ's crop: image and target on the crop grid, and where it came from."""
    box: tuple[slice, slice, slice]
    image: np.ndarray
    target: np.ndarray  # uint8: 0 background, 1 tumor
    geometry: Geometry  # of the crop (origin moved to the box's first voxel)

    @property
    def tumor_voxels(self) -> int:
        return int(np.count_nonzero(self.target))


def crop_geometry(geometry: Geometry, box: tuple[slice, ...]) -> Geometry:
    return geometry.cropped([s.start for s in box]).with_shape([s.stop - s.start for s in box])


def organ_crop(image: np.ndarray, organs: np.ndarray, tumor: np.ndarray, organ: int, geometry: Geometry,
               params: CascadeParameters) -> OrganCrop | None:
    """The crop of `organ` with its own tumors as target, or None if the organ is absent.

    organs: organ labels 0..13 in which every tumor voxel carries its host organ
    (`training.labels.organ_target`), so the box covers the organ with its lesions and "its own
    tumors" are the tumor voxels whose host is `organ`; another organ's tumor inside the box is
    background, as the cascade's filter drops it at inference.
    """
    if image.shape != organs.shape or organs.shape != tumor.shape or tuple(image.shape) != geometry.shape:
        raise ValueError(f"image {image.shape}, organs {organs.shape}, tumor {tumor.shape} and geometry "
                         f"{geometry.shape} must share one grid")
    mask = organs == organ
    box = organ_crop_box(mask, geometry, params)
    if box is None:
        return None
    target = (np.asarray(tumor, dtype=bool)[box] & mask[box]).astype(np.uint8)
    return OrganCrop(box=box, image=np.ascontiguousarray(image[box]), target=target,
                     geometry=crop_geometry(geometry, box))


@dataclass
class PseudoTumorResult:
    kept: np.ndarray  # bool, on the crop
    kept_components: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PSEUDO_REASONS, 0))

    def as_dict(self) -> dict:
        return {"kept": self.kept_components, "kept_voxels": int(np.count_nonzero(self.kept)),
                "removed": dict(self.removed)}


def credible_pseudo_tumor(tumor: np.ndarray, organs: np.ndarray, organ: int, geometry: Geometry,
                          min_mm3: float) -> PseudoTumorResult:
    """The credible part of a tumor model's prediction on an unlabeled case's organ crop.

    tumor: bool prediction on the crop; organs: the organ model's labels 0..13 on the same crop;
    geometry: the crop's (its spacing turns `min_mm3` into voxels). Per 26-connected component:
    fewer voxels than `min_mm3` -> "too_small"; no organ voxel in its bounding box -> "no_owner";
    the organ with most voxels in its bounding box is not `organ` -> "other_owner".
    """
    tumor, organs = np.asarray(tumor, dtype=bool), np.asarray(organs)
    if tumor.shape != organs.shape:
        raise ValueError(f"tumor {tumor.shape} and organs {organs.shape} differ in shape")
    result = PseudoTumorResult(np.zeros(tumor.shape, dtype=bool))
    components, count = cc3d.connected_components(tumor, connectivity=26, return_N=True)
    if count == 0:
        return result
    stats = cc3d.statistics(components)
    min_voxels = voxels_for_mm3(min_mm3, geometry)
    kept = np.zeros(count + 1, dtype=bool)
    for index in range(1, count + 1):
        if stats["voxel_counts"][index] < min_voxels:
            result.removed["too_small"] += 1
            continue
        owners = np.bincount(organs[stats["bounding_boxes"][index]].ravel().astype(np.int64), minlength=TUMOR_LABEL)
        owners[0] = 0
        owners[TUMOR_LABEL:] = 0
        if not owners.any():
            result.removed["no_owner"] += 1
        elif int(owners.argmax()) != organ:
            result.removed["other_owner"] += 1
        else:
            kept[index] = True
    result.kept_components = int(kept.sum())
    if result.kept_components:
        result.kept = kept[components]
    return result
