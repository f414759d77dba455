"""Step "evaluate": the exported cascade scored on the validation cases; with --ablation the
step-2 tumour models (no pseudo labels) are assembled and scored as well."""
from __future__ import annotations

import json
from pathlib import Path

from training.case_files import write_json


class ValidationStep:
    """Step "evaluate" of `training.driver.Driver`."""

    def validation_cases(self) -> list[tuple[str, Path, Path]]:
        return [(c.id, Path(c.image), Path(c.label)) for c in self.cases() if not c.is_training]

    def run_ablation(self, _resume: bool) -> dict:
        from training.evaluate_weights import evaluate_weights

        dest = self.p("ablation", "weights")
        self.assemble(dest, "tumor1", {"preset": self.preset.name, "ablation_arm": "tumor models of step 2: "
                                       "no pseudo-labelled cases, same budget and plans as the shipped step-4 models"})
        summary = evaluate_weights(dest, self.validation_cases(), device=self.options.device)
        write_json(self.p("evaluation", "ablation_no_pseudo.json"), summary)
        return without_per_case(summary)

    def run_evaluate(self, _resume: bool) -> dict:
        from inference.engine.precision import AGREEMENT_KEY
        from training.evaluate_weights import evaluate_weights
        from training.cascade_json_writer import write_cascade_json

        cases = self.validation_cases()
        summary = evaluate_weights(self.weights, cases, device=self.options.device) if cases else {"cases": 0}
        write_json(self.p("evaluation", "validation.json"), summary)
        provenance = self.store.load("export")["result"]["provenance"]
        provenance["validation"] = {**without_per_case(summary), "case_ids": [c[0] for c in cases]}
        if self.options.ablation:
            without = self.store.load("ablation")["result"]
            provenance["ablation"] = {
                "question": "tumor models trained with vs without the pseudo-labelled cases (steps 3-4), same budget",
                "with_pseudo_labels": headline(summary), "without_pseudo_labels": headline(without),
                "cases": len(cases)}
        manifest = json.loads((self.weights / "cascade.json").read_text())
        write_cascade_json(self.weights, organ_folder=manifest["stages"]["organ"]["folder"],
                       tumor_stages=manifest["stages"]["tumor"], parameters=manifest["parameters"],
                       provenance=provenance, precision_agreement=manifest.get(AGREEMENT_KEY))
        return headline(summary)


def headline(summary: dict) -> dict:
    keys = ("cases", "mean_organ_dsc", "mean_organ_nsd", "tumor_dsc", "tumor_dsc_on_tumor_cases", "tumor_cases",
            "false_positive_tumor_cases")
    return {k: summary.get(k) for k in keys}


def without_per_case(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "per_case"}
