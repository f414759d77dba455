"""Step 1: the first organ model on the fully annotated cases, its pseudo labels completing every
other case, and the organ model trained on all of them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.core.labels import ORGAN_MODEL_LABELS
from inference.io.images import read_image
from training.case_files import read_label_map, write_label_map
from training.recipe_settings import DriverError, ORGAN_FIRST_ID, ORGAN_ID, ORGAN_PLANS


class OrganModelSteps:
    """Step 1 of `training.driver.Driver`, and the model training and engine runners later steps share."""

    def run_organ_first(self, resume: bool) -> dict:
        from training.label_merging import organ_target

        cases = [c for c in self.training_cases() if c.organs_complete and c.label]
        if not cases:
            raise DriverError("step 1 needs cases that annotate all 13 organs; none found")
        entries = []
        for case in cases:
            image, geometry = read_image(Path(case.image))  # canonical, already sanitised
            target = organ_target(read_label_map(Path(case.label), image.shape))
            path = self.p("step1", "first_targets", f"{case.id}.nii.gz")
            write_label_map(path, target, geometry)
            entries.append((case.id, Path(case.image), path))
        self.train_model(ORGAN_FIRST_ID, "FlareOrganFirst", entries, ORGAN_MODEL_LABELS, ORGAN_PLANS, self.preset.organ_first,
                         self.model("organ_first"), resume=resume)
        return {"cases": len(entries)}

    def train_model(self, dataset_id, name, entries, labels, plans_name, net, dest, *, resume=False,
                    plans_from: int | None = None) -> None:
        try:
            fold = self.backend.fold_folder(dataset_id, plans_name, net)
        except FileNotFoundError:  # not preprocessed yet
            fold = None
        prepared = fold is not None and resume and any(fold.glob("checkpoint_*.pth"))
        if not prepared:
            self.backend.write_dataset(dataset_id, name, entries, labels)
            if plans_from is None:
                self.backend.plan_and_preprocess([dataset_id], plans_name, net)
            else:
                self.backend.reuse_plans([(plans_from, dataset_id)], plans_name)
        self.backend.train(dataset_id, plans_name, net, resume=prepared)
        self.backend.export(dataset_id, plans_name, net, dest)

    def runner(self, folder: Path):
        """An engine model runner for pseudo labels (cached per folder)."""
        if folder not in self._runners:
            import torch

            from inference.engine.model import load_model
            from inference.engine.precision import nnunet_precision
            from inference.engine.runner import EngineOptions, ModelRunner

            device = torch.device(self.options.device)
            self._runners[folder] = ModelRunner(load_model(folder, device=device),
                                                EngineOptions(device=device, precision=nnunet_precision(device)))
        return self._runners[folder]

    def run_organ_labels(self, _resume: bool) -> dict:
        from training.label_merging import merge_labels, organ_target

        runner = self.runner(self.model("organ_first"))
        filled, total, pseudo_cases = 0, 0, 0
        for case in self.training_cases():
            image, geometry = read_image(Path(case.image))  # canonical, already sanitised
            real = read_label_map(Path(case.label), image.shape) if case.label else np.zeros(image.shape, np.uint8)
            if case.organs_complete:
                target = organ_target(real)
            else:
                pseudo = runner.segment(image, geometry.spacing, {})
                write_label_map(self.p("step1", "pseudo", f"{case.id}.nii.gz"), pseudo, geometry)
                merged = merge_labels(real, case.annotated, pseudo)
                target = organ_target(merged, pseudo=pseudo)
                filled += int(np.count_nonzero((real == 0) & (merged != 0)))
                pseudo_cases += 1
            total += target.size
            write_label_map(self.p("step1", "targets", f"{case.id}.nii.gz"), target, geometry)
        return {"pseudo_labelled_cases": pseudo_cases, "voxels_filled_by_pseudo_labels": filled, "voxels": total}

    def run_organ(self, resume: bool) -> dict:
        entries = [(c.id, Path(c.image), self.p("step1", "targets", f"{c.id}.nii.gz")) for c in self.training_cases()]
        self.train_model(ORGAN_ID, "FlareOrgan", entries, ORGAN_MODEL_LABELS, ORGAN_PLANS, self.preset.organ,
                         self.model("organ"), resume=resume, plans_from=ORGAN_FIRST_ID)
        return {"cases": len(entries), "plans": f"reused from dataset {ORGAN_FIRST_ID} (organ_first)"}

    # ---- step 2
