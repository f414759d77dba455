"""Every tunable number of the cascade, with its unit and where it comes from, in one place.

The manifest's `parameters` object overrides any of these by name; an unknown name is an error
(a typo must not silently fall back to a default).

Physical units throughout, not voxel counts, which change meaning with the scan's resolution.
Where the public FLARE23 code counts voxels or slices, the value here is that count converted at
the reference spacing below, so that on a typical FLARE scan the behaviour is the public one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from inference.cascade.postprocessing import DEFAULT_ORGAN_RULES, ComponentRule, parse_rules

# Typical FLARE22/23 CT spacing (z, y, x) in mm, used only to convert the public voxel counts.
REFERENCE_SPACING_MM = (2.5, 0.8, 0.8)
REFERENCE_VOXEL_MM3 = REFERENCE_SPACING_MM[0] * REFERENCE_SPACING_MM[1] * REFERENCE_SPACING_MM[2]  # 1.6


def _reference_voxels_mm3(voxels: int) -> float:
    return round(voxels * REFERENCE_VOXEL_MM3, 6)


@dataclass(frozen=True)
class CascadeParameters:
    # Aorta crop: keep from the aorta's most cranial slice to this far below its most caudal one.
    # Public code: 20 slices; x 2.5 mm, the usual FLARE slice thickness.
    aorta_caudal_margin_mm: float = 50.0
    # Fewer aorta voxels than this volume = no usable aorta (skip crop, not enhanced). A whole
    # abdominal aorta is tens of mL; 1 mL rejects stray specks without needing a long aorta.
    aorta_min_mm3: float = 1000.0
    # Median HU inside the aorta at or above this = contrast-enhanced scan (public code).
    contrast_hu_threshold: float = 445.0
    # Tumor crop margins around the host organ's bounding box. Public code: +-5 slices in z
    # (x 2.5 mm = 12.5 mm) and +-20 voxels in plane (x ~1.5 mm low-resolution in-plane spacing).
    tumor_margin_cranio_caudal_mm: float = 12.5
    tumor_margin_in_plane_mm: float = 30.0
    # Credible-tumor filters (public code: 128, 32 and 80 voxels, at REFERENCE_VOXEL_MM3).
    tumor_min_total_mm3: float = _reference_voxels_mm3(128)  # 204.8: all kept tumor of one host organ
    tumor_min_component_mm3: float = _reference_voxels_mm3(32)  # 51.2: one component
    tumor_min_organ_overlap_mm3: float = _reference_voxels_mm3(80)  # 128.0: component voxels on the host organ
    # Tumor components that neither overlap nor touch (26-neighbourhood) their host organ go.
    tumor_require_organ_contact: bool = True
    # Organ clean-up (label -> rule), see inference.cascade.postprocessing.DEFAULT_ORGAN_RULES.
    organ_postprocessing: Mapping[int, ComponentRule] = field(default_factory=lambda: dict(DEFAULT_ORGAN_RULES))

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "organ_postprocessing":
                object.__setattr__(self, f.name, parse_rules(value))
            elif f.type == "bool" or isinstance(f.default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"cascade parameter {f.name} must be true or false, got {value!r}")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                    raise ValueError(f"cascade parameter {f.name} must be a non-negative number, got {value!r}")
                object.__setattr__(self, f.name, float(value))

    @classmethod
    def allowed_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_manifest(cls, parameters: Mapping | None) -> "CascadeParameters":
        """The manifest's `parameters` object -> parameters; unknown keys are rejected by name."""
        parameters = dict(parameters or {})
        unknown = sorted(set(parameters) - set(cls.allowed_keys()))
        if unknown:
            raise ValueError(f"unknown cascade parameter(s) {unknown}; allowed: {cls.allowed_keys()}")
        return cls(**parameters)
