"""Step 2: crops around each tumour host organ from the tumour-annotated cases, their nnU-Net plan,
and one tumour model per organ (also step 4's trainer)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from inference.core.labels import TUMOR_HOST_NAMES, TUMOR_LABEL, TUMOR_MODEL_LABELS
from inference.io.images import read_image
from training.case_files import read_label_map, write_image, write_label_map
from training.recipe_settings import TUMOR_ID_BASE, TUMOR_PLANS

log = logging.getLogger(__name__)


class TumorModelSteps:
    """Step 2 of `training.driver.Driver`."""

    def run_tumor_crops(self, _resume: bool) -> dict:
        from training.tumor_data import organ_crop

        stats = {TUMOR_HOST_NAMES[o]: {"crops": 0, "with_tumor": 0, "tumor_voxels": 0} for o in self.preset.tumor_organs}
        for case in self.training_cases():
            if not case.tumor_annotated:
                continue
            image, geometry = read_image(Path(case.image))  # canonical, already sanitised
            tumor = read_label_map(Path(case.label), image.shape) == TUMOR_LABEL
            organs = read_label_map(self.p("step1", "targets", f"{case.id}.nii.gz"), image.shape)
            for organ in self.preset.tumor_organs:
                crop = organ_crop(image, organs, tumor, organ, geometry, self.params)
                if crop is None:
                    continue
                self.write_crop(self.crops("step2", organ), case.id, crop.image, crop.target, crop.geometry)
                entry = stats[TUMOR_HOST_NAMES[organ]]
                entry["crops"] += 1
                entry["with_tumor"] += int(crop.tumor_voxels > 0)
                entry["tumor_voxels"] += crop.tumor_voxels
        return stats

    @staticmethod
    def write_crop(folder: Path, case_id: str, image, target, geometry) -> None:
        write_image(folder / "images" / f"{case_id}_0000.nii.gz", image, geometry)
        write_label_map(folder / "labels" / f"{case_id}.nii.gz", target, geometry)

    def crop_entries(self, step: str, organ: int) -> list[tuple[str, Path, Path]]:
        folder = self.crops(step, organ)
        return [(p.name[: -len("_0000.nii.gz")], p, folder / "labels" / p.name.replace("_0000.nii.gz", ".nii.gz"))
                for p in sorted((folder / "images").glob("*_0000.nii.gz"))]

    def trainable_organs(self) -> list[int]:
        stats = self.store.load("tumor_crops")["result"]
        return [o for o in self.preset.tumor_organs if stats[TUMOR_HOST_NAMES[o]]["with_tumor"] > 0]

    def run_tumor_plan(self, _resume: bool) -> dict:
        organs = self.trainable_organs()
        for organ in organs:
            name = "".join(w.title() for w in TUMOR_HOST_NAMES[organ].split("_"))
            self.backend.write_dataset(TUMOR_ID_BASE[organ], f"FlareTumor{name}", self.crop_entries("step2", organ),
                                       TUMOR_MODEL_LABELS)
        if organs:
            self.backend.plan_and_preprocess([TUMOR_ID_BASE[o] for o in organs], TUMOR_PLANS, self.preset.tumor)
        skipped = [TUMOR_HOST_NAMES[o] for o in self.preset.tumor_organs if o not in organs]
        if skipped:
            log.warning("no tumor in the labelled crops of %s: no tumor model for it", ", ".join(skipped))
        return {"organs": [TUMOR_HOST_NAMES[o] for o in organs], "skipped_no_tumor": skipped}

    def side_by_side_threads(self) -> int | None:
        """Threads of each tumor training when several run side by side on the CPU: the --threads
        budget shared between them, so the machine is not oversubscribed. These small networks use
        threads poorly: on the 2-core CPU two 1-thread trainings side by side did 1.35-1.47x the work
        of one 2-thread training (BENCHMARKS.md, "Tumour trainings side by side"). None: the
        backend's own count (one at a time, or a GPU, where the CPU threads only feed it)."""
        if self.options.parallel <= 1 or self.options.device != "cpu":
            return None
        return max(1, self.options.threads // self.options.parallel)

    def tumor_trainer(self, organ: int, *, first_round: bool) -> Callable[[bool], dict]:
        def run(resume: bool) -> dict:
            if organ not in self.trainable_organs():
                return {"trained": False, "reason": "no tumor in the labelled crops"}
            dataset_id = TUMOR_ID_BASE[organ] + (0 if first_round else 10)
            fold = self.backend.fold_folder(dataset_id, TUMOR_PLANS, self.preset.tumor)
            self.backend.train(dataset_id, TUMOR_PLANS, self.preset.tumor,
                               resume=resume and any(fold.glob("checkpoint_*.pth")),
                               threads=self.side_by_side_threads())
            name = f"tumor{'1' if first_round else ''}_{TUMOR_HOST_NAMES[organ]}"
            self.backend.export(dataset_id, TUMOR_PLANS, self.preset.tumor, self.model(name))
            return {"trained": True, "iterations": self.preset.tumor.iterations}
        return run

    # ---- step 3
