"""Step 3: the organ model and the step-2 tumour models on the cases that do not annotate tumours;
only credible components become pseudo tumour labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.core.labels import TUMOR_HOST_NAMES
from inference.io.images import read_image


class PseudoTumorStep:
    """Step 3 of `training.driver.Driver`."""

    def run_pseudo_tumors(self, _resume: bool) -> dict:
        from inference.cascade.segmenter import aorta_crop, apply_slab_crop, organ_crop_box
        from inference.cascade.postprocessing import postprocess_organs
        from training.tumor_data import credible_pseudo_tumor, crop_geometry

        organs_trained = self.trainable_organs()
        organ_runner = self.runner(self.model("organ"))
        stats = {TUMOR_HOST_NAMES[o]: {"crops": 0, "cases_with_pseudo_tumor": 0, "kept_components": 0, "kept_voxels": 0,
                                  "removed": {}} for o in organs_trained}
        cases = [c for c in self.training_cases() if not c.tumor_annotated]
        for case in cases:
            image, geometry = read_image(Path(case.image))  # canonical, already sanitised
            organs = postprocess_organs(organ_runner.segment(image, geometry.spacing, {}),
                                        self.params.organ_postprocessing)
            slab = aorta_crop(organs, geometry, self.params)
            organs = apply_slab_crop(organs, slab) if slab is not None else organs
            for organ in organs_trained:
                box = organ_crop_box(organs == organ, geometry, self.params)
                if box is None:
                    continue
                crop, crop_geo = np.ascontiguousarray(image[box]), crop_geometry(geometry, box)
                runner = self.runner(self.model(f"tumor1_{TUMOR_HOST_NAMES[organ]}"))
                found = runner.segment(crop, geometry.spacing, {}) == 1
                result = credible_pseudo_tumor(found, organs[box], organ, crop_geo, self.preset.pseudo_tumor_min_mm3)
                entry = stats[TUMOR_HOST_NAMES[organ]]
                entry["crops"] += 1
                for reason, count in result.removed.items():
                    entry["removed"][reason] = entry["removed"].get(reason, 0) + count
                if result.kept_components:
                    self.write_crop(self.crops("step3", organ), case.id, crop, result.kept.astype(np.uint8), crop_geo)
                    entry["cases_with_pseudo_tumor"] += 1
                    entry["kept_components"] += result.kept_components
                    entry["kept_voxels"] += int(np.count_nonzero(result.kept))
        return {"cases": len(cases), "min_mm3": self.preset.pseudo_tumor_min_mm3, "per_organ": stats}

    # ---- step 4
