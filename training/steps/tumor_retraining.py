"""Step 4: the tumour datasets of real + pseudo labels, planned with step 2's plans, so that the
retrained tumour models differ from step 2's only by the pseudo labels."""
from __future__ import annotations

from inference.core.labels import TUMOR_HOST_NAMES, TUMOR_MODEL_LABELS
from training.recipe_settings import TUMOR_ID_BASE, TUMOR_PLANS


class TumorRetrainingStep:
    """Step 4 of `training.driver.Driver` (the trainings are step 2's `tumor_trainer`)."""

    def run_tumor2_plan(self, _resume: bool) -> dict:
        counts, pairs = {}, []
        for organ in self.trainable_organs():
            real, pseudo = self.crop_entries("step2", organ), self.crop_entries("step3", organ)
            name = "".join(w.title() for w in TUMOR_HOST_NAMES[organ].split("_"))
            self.backend.write_dataset(TUMOR_ID_BASE[organ] + 10, f"FlareTumor{name}Pseudo", real + pseudo,
                                       TUMOR_MODEL_LABELS)
            pairs.append((TUMOR_ID_BASE[organ], TUMOR_ID_BASE[organ] + 10))
            counts[TUMOR_HOST_NAMES[organ]] = {"real_crops": len(real), "pseudo_crops": len(pseudo)}
        self.backend.reuse_plans(pairs, TUMOR_PLANS)
        return counts

    # ---- export and evaluation
